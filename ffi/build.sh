#!/usr/bin/env bash
# Builds the native CPU backend: build/libgptoss_cpu.so (g++, OpenMP; AVX2/AVX-512 chosen at run time).
# Skips the build when the library is newer than every source. --if-possible: without a C++ compiler, say so and
# exit 0 (the native backend then reports itself unavailable and its tests skip, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
out=build/libgptoss_cpu.so
sources=(ffi/src/gptoss_cpu.cpp kernels/cpu/*.cpp)
if [ "${1:-}" = "--if-possible" ] && ! command -v "$CXX" >/dev/null 2>&1; then
  echo "no C++ compiler ($CXX): the native backend is not built"
  exit 0
fi
if [ -f "$out" ] && [ -z "$(find "${sources[@]}" ffi/include/gptoss.h kernels/cpu/*.h ffi/build.sh -newer "$out")" ]; then
  exit 0
fi
mkdir -p build
"$CXX" -std=c++17 -O3 -fPIC -shared -fopenmp -march=x86-64-v2 -Wall -Wextra -Wno-unused-parameter -Wno-maybe-uninitialized -Wno-uninitialized \
  -o "$out.tmp" "${sources[@]}"
mv "$out.tmp" "$out"
echo "built $out"
