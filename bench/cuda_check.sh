#!/usr/bin/env bash
# The whole CUDA check in one run on a GPU machine (e.g. a lent H200), well under 10 minutes: build, op conformance
# against the reference, golden parity, the API golden replay, the no-device/device ABI tests, then the 20b preset
# at batch 1/8/32 (prefill and decode tokens/s, batch-1 decode as a fraction of the copy bandwidth measured in the
# same run), with CUDA graphs on and off, and a per-op profile. Results land in $OUT (default ./cuda-check):
# summary.json (the numbers), tests.txt, bench*.json, profile1.txt, profile32.txt, log.txt.
#
# What it needs beside the repository, for a machine without network (see DEVELOPERS' notes in bench/README.md):
#   .gpu/deno.xz              xz -T2 -c "$(which deno)" > .gpu/deno.xz
#   .gpu/node_modules.tar.xz  tar -cf - node_modules | xz -T2 > .gpu/node_modules.tar.xz   (after deno install)
#   .gpu/shared.tar.xz        tar -C .. -cf - shared/golden shared/harmony-vectors | xz -T2 > .gpu/shared.tar.xz
# Environment: GPTOSS_CUDA_ARCH (default 90a here: one target builds fastest), CHECK_DECODE (decode steps, 64),
# CHECK_TESTS_ONLY=1 (build and tests only, ~1 minute: no preset, no benchmarks).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./cuda-check}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
started=$(date +%s)
step() { echo "== $(($(date +%s) - started)) s: $*"; }

step "unpack"
if ! command -v deno >/dev/null && [ -f .gpu/deno.xz ]; then
  xz -dc .gpu/deno.xz > /tmp/deno && chmod +x /tmp/deno && export PATH=/tmp:$PATH
fi
[ -d node_modules ] || { [ -f .gpu/node_modules.tar.xz ] && tar -xJf .gpu/node_modules.tar.xz; }
[ -d ../shared/golden ] || { [ -f .gpu/shared.tar.xz ] && tar -C .. -xJf .gpu/shared.tar.xz; }
export DENO_NO_UPDATE_CHECK=1 NO_COLOR=1 NPM_CONFIG_REGISTRY=${NPM_CONFIG_REGISTRY:-http://127.0.0.1:9/}  # no network there: fail fast
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv

step "build"
bash ffi/build.sh > /tmp/build-native.txt 2>&1 &
native_build=$!
GPTOSS_CUDA_ARCH=${GPTOSS_CUDA_ARCH:-90a} bash ffi/build_cuda.sh || { echo "CUDA build failed"; exit 1; }
grep -A2 "moe_gate_up\|moe_down\|matmul_f32_bf16w_vec\|attention_f32" build/ptxas.txt | grep "Used\|spill" | head -12
wait $native_build || cat /tmp/build-native.txt
deno run -A src/main.ts probe

step "tests: ABI, conformance, golden parity, API golden replay (cuda only)"
timeout 300 deno test -A --parallel --filter "/cuda|CUDA/" tests/native_abi_test.ts tests/backend_conformance_test.ts \
  tests/golden_test.ts tests/api_test.ts tests/nccl_test.ts > "$OUT/tests.txt" 2>&1
tests_rc=$?
grep -E "^(ok|FAILED) \|| \.\.\. (FAILED|ok|ignored)|error:" "$OUT/tests.txt" | tail -60

if [ "${CHECK_TESTS_ONLY:-0}" = 1 ]; then step "done (tests only)"; exit "$tests_rc"; fi

step "20b preset"
if [ ! -f /tmp/preset-20b/config.json ]; then
  timeout 240 deno run -A src/main.ts make-model --preset 20b --out /tmp/preset-20b > /dev/null 2>&1 || echo "make-model failed"
fi

step "bench: graphs on, batch 1/8/32"
decode=${CHECK_DECODE:-64}
GPTOSS_PROFILE=steps timeout 150 deno run -A bench/model_speed.ts --dir /tmp/preset-20b --backend cuda --prompt 32 --decode "$decode" \
  --batch 1,8,32 > "$OUT/bench.json" 2>&1
grep -v "^\s*\"\(checkpoint\|backend\|layers\|prefill_tokens\|decode_tokens\|weight_bytes_per_token\|bandwidth_source\)\"" "$OUT/bench.json"
step "bench: graphs off, batch 1"
GPTOSS_PROFILE=steps GPTOSS_CUDA_GRAPHS=0 timeout 90 deno run -A bench/model_speed.ts --dir /tmp/preset-20b --backend cuda --prompt 32 \
  --decode "$decode" --batch 1 > "$OUT/bench-nographs.json" 2>&1
grep -E "decode_tokens_per_s|prefill_tokens_per_s|fraction|gptoss" "$OUT/bench-nographs.json"
step "profile: per op (graphs off) of decode steps (1-token prompts) at batch 1 and 32; host time per flush"
for batch in 1 32; do
  GPTOSS_PROFILE=1 timeout 90 deno run -A bench/model_speed.ts --dir /tmp/preset-20b --backend cuda --prompt 1 \
    --decode 32 --batch "$batch" > "$OUT/profile$batch.txt" 2>&1
  echo "batch $batch:"; grep "gptoss" "$OUT/profile$batch.txt"
done
step "summary"
python3 - "$OUT" "$tests_rc" <<'EOF'
import json, re, sys
out, rc = sys.argv[1], int(sys.argv[2])
def load(name):
    try:
        text = open(f"{out}/{name}").read()
        return json.loads(text[text.index("{"):text.rindex("}") + 1])
    except Exception as e:
        return {"error": str(e)}
tests = open(f"{out}/tests.txt").read()
m = re.findall(r"(\d+) passed \| (\d+) failed(?: \| (\d+) ignored)?", tests)
summary = {
    "tests_exit_code": rc,
    "tests": m[-1] if m else None,
    "failed_tests": re.findall(r"^(.*) \.\.\. FAILED", tests, re.M),
    "bench_graphs": load("bench.json"),
    "bench_no_graphs": load("bench-nographs.json"),
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps({k: summary[k] for k in ("tests_exit_code", "tests", "failed_tests")}))
EOF
step "done"
