// Memory read bandwidth probe for the benchmarks' ceilings: streams a 4 GiB buffer with N OpenMP threads (best of
// 4 passes), with AVX-512 loads where the compiler targets them (cc -O3 -march=native -fopenmp membw.c).
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

int main(int argc, char **argv) {
  const size_t bytes = (size_t)4 << 30;
  const int threads = argc > 1 ? atoi(argv[1]) : 2;
  omp_set_num_threads(threads);
  char *data = aligned_alloc(64, bytes);
#pragma omp parallel for
  for (size_t i = 0; i < bytes; i += 4096) memset(data + i, 1, 4096);
  double best = 0;
  uint64_t sink = 0;
  for (int pass = 0; pass < 4; pass++) {
    const double start = omp_get_wtime();
    uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
    {
#ifdef __AVX512F__
      __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
#pragma omp for
      for (size_t i = 0; i < bytes; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(data + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(data + i + 64));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(data + i + 128));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(data + i + 192));
      }
      total += (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
#else
      const uint64_t *words = (const uint64_t *)data;
      uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp for
      for (size_t i = 0; i < bytes / 8; i += 4) {
        a0 += words[i];
        a1 += words[i + 1];
        a2 += words[i + 2];
        a3 += words[i + 3];
      }
      total += a0 + a1 + a2 + a3;
#endif
    }
    const double seconds = omp_get_wtime() - start;
    sink += total;
    if (bytes / seconds / 1e9 > best) best = bytes / seconds / 1e9;
  }
  printf("{\"threads\": %d, \"read_gb_per_s\": %.2f, \"sink\": %llu}\n", threads, best, (unsigned long long)(sink & 1));
  free(data);
  return 0;
}
