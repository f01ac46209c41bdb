#!/usr/bin/env bash
# One run on a lent GPU machine (e.g. an H200) does the whole CUDA check; results land in $OUT (or ./cuda-check).
#   Carry: .gpu/deno.xz (xz -T2 -c $(which deno) > .gpu/deno.xz) and node_modules/; then run: bash bench/cuda_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./cuda-check}
mkdir -p "$OUT"
if [ -f .gpu/deno.xz ] && ! command -v deno >/dev/null; then xz -dc .gpu/deno.xz > /tmp/deno && chmod +x /tmp/deno; export PATH=/tmp:$PATH; fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
bash ffi/build_cuda.sh > "$OUT/build.txt" 2>&1 || { echo "build failed"; tail -20 "$OUT/build.txt"; exit 1; }
bash ffi/build.sh >> "$OUT/build.txt" 2>&1
deno run -A src/main.ts probe > "$OUT/probe.json" 2>&1
# Golden parity (f32 math on the GPU: the same 1e-3 + 1e-5·|ref| tolerance as the CPU) and the op conformance suite.
deno test -A --filter "cuda" tests/golden_test.ts tests/native_abi_test.ts 2>&1 | tee "$OUT/golden.txt" | tail -5
# Speed on the 20b preset generated here: batch 1, 8 and 32.
deno run -A src/main.ts make-model --preset 20b --out /tmp/preset-20b > "$OUT/make-model.txt" 2>&1
for batch in 1 8 32; do
  deno run -A bench/model_speed.ts --dir /tmp/preset-20b --backend cuda --prompt 32 --decode 64 --batch "$batch" \
    > "$OUT/bench-batch$batch.json" 2>&1
  grep -E "decode_tokens_per_s|prefill_tokens_per_s" "$OUT/bench-batch$batch.json"
done
