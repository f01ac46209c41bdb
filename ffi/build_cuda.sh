#!/usr/bin/env bash
# Builds the CUDA backend: build/libgptoss_cuda.so with static cudart, so the library loads without a CUDA runtime
# installed and fails cleanly without a device. Machine code for sm_80 (A100, A10, RTX 30), sm_86, sm_89 (L4, RTX 40)
# and sm_90a (H100/H200), sm_70 (V100) where this nvcc still targets it (CUDA ≤ 12.x; CUDA 13 dropped it), and PTX
# of the lowest target for newer GPUs. All kernels compute in f32 (bf16 and MXFP4 weights widened in registers), so
# no target needs bf16 hardware.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
NVCC=${NVCC:-nvcc}
archs=$("$NVCC" --list-gpu-arch 2>/dev/null | tr '\n' ' ')
gencode=()
lowest=compute_75
if [ -n "${GPTOSS_CUDA_ARCH:-}" ]; then  # one target only, for a quick build on the machine that runs it (e.g. 90a)
  gencode+=(-gencode "arch=compute_$GPTOSS_CUDA_ARCH,code=sm_$GPTOSS_CUDA_ARCH")
elif [[ " $archs " == *" compute_70 "* ]]; then
  gencode+=(-gencode arch=compute_70,code=sm_70)
  lowest=compute_70
  gencode+=(-gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,code=sm_86
    -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90a,code=sm_90a -gencode "arch=$lowest,code=$lowest")
else
  echo "note: $NVCC cannot target sm_70 (V100); build with CUDA 12.x for it" >&2
  gencode+=(-gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,code=sm_86
    -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90a,code=sm_90a -gencode "arch=$lowest,code=$lowest")
fi
"$NVCC" -std=c++17 -O3 -shared -Xcompiler -fPIC -cudart static -Xptxas -v "${gencode[@]}" \
  -o build/libgptoss_cuda.so ffi/src/gptoss_cuda.cu kernels/cuda/*.cu 2> build/ptxas.txt || { cat build/ptxas.txt >&2; exit 1; }
grep -v "^ptxas info    : \(Compiling\|Function properties\)\|bytes stack frame, 0 bytes spill" build/ptxas.txt | grep -i "warning\|error\|spill" >&2 || true
echo "built build/libgptoss_cuda.so"
