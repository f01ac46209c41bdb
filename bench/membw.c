// Memory read bandwidth probe for the benchmarks' ceilings: sums a 2 GiB buffer with N OpenMP threads
// (best of 5 passes). Built and run by bench/model_bench.ts: cc -O3 -march=native -fopenmp membw.c.
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  size_t bytes = (size_t)2 << 30;
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  omp_set_num_threads(threads);
  uint64_t *data = aligned_alloc(64, bytes);
  size_t n = bytes / sizeof(uint64_t);
#pragma omp parallel for
  for (size_t i = 0; i < n; i++) data[i] = i;
  double best = 0;
  uint64_t sink = 0;
  for (int pass = 0; pass < 5; pass++) {
    double start = omp_get_wtime();
    uint64_t total = 0;
#pragma omp parallel for reduction(+ : total)
    for (size_t i = 0; i < n; i += 4) total += data[i] ^ data[i + 1] ^ data[i + 2] ^ data[i + 3];
    double seconds = omp_get_wtime() - start;
    sink += total;
    double gbps = bytes / seconds / 1e9;
    if (gbps > best) best = gbps;
  }
  printf("{\"threads\": %d, \"read_gb_per_s\": %.2f, \"sink\": %llu}\n", threads, best, (unsigned long long)(sink & 1));
  free(data);
  return 0;
}
