#!/usr/bin/env bash
# Builds the native CPU backend: build/libgptoss_cpu.so (g++, OpenMP; AVX2/AVX-512 chosen at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
CXX=${CXX:-g++}
"$CXX" -std=c++17 -O3 -fPIC -shared -fopenmp -march=x86-64-v2 -Wall -Wextra -Wno-unused-parameter -Wno-maybe-uninitialized -Wno-uninitialized \
  -o build/libgptoss_cpu.so ffi/src/gptoss_cpu.cpp kernels/cpu/*.cpp
echo "built build/libgptoss_cpu.so"
