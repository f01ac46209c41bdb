#!/usr/bin/env bash
# Builds and runs bench/native_kernels.cpp on 2 threads: bash bench/native_kernels.sh [weights-file]
# (a multi-GB file, e.g. a 20b preset shard, makes the weights page-cache pages as in the server).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(mktemp /tmp/native-kernels-XXXXXX)
g++ -std=c++17 -O3 -fopenmp -march=x86-64-v2 -Wno-uninitialized -o "$binary" bench/native_kernels.cpp \
  $(ls kernels/cpu/*.cpp)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WEIGHTS_FILE=${1:-}
[ -n "$WEIGHTS_FILE" ] || unset WEIGHTS_FILE
"$binary" gemv
for tokens in 4 32; do "$binary" gemm "$tokens"; GPTOSS_CPU_ISA=avx512-vnni "$binary" gemm "$tokens"; done
for tokens in 1 2 4; do "$binary" moe "$tokens"; GPTOSS_CPU_ISA=avx512 "$binary" moe "$tokens"; done
"$binary" mxfp4
rm -f "$binary"
