#!/usr/bin/env bash
# Builds the CUDA backend: build/libgptoss_cuda.so (nvcc; fatbin for sm_80 (A100) and sm_90a (H100/H200) plus PTX;
# static cudart, so the library loads without a CUDA runtime installed and fails cleanly without a device).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
NVCC=${NVCC:-nvcc}
"$NVCC" -std=c++17 -O3 -shared -Xcompiler -fPIC -cudart static \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90 \
  -o build/libgptoss_cuda.so ffi/src/gptoss_cuda.cu kernels/cuda/*.cu
echo "built build/libgptoss_cuda.so"
