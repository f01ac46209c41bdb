// Kernel-level speed of the native CPU backend, without the model around it (a benchmark, not a test):
//   bash bench/native_kernels.sh [weights-file]
// Weights are read from a file mapping (4 KiB page-cache pages, like a mapped checkpoint; give a multi-GB file such as
// a 20b preset shard) or, without one, from anonymous memory. Denormals are flushed as in gptoss_flush. Prints GB/s of
// weights streamed, best of a few passes, for:
//   gemv  — one decode step's dense bf16 matmuls at 20b shapes (24 × (qkv 5120×2880 + o 2880×4096) + lm_head)
//   gemm  — prefill-shaped dense matmuls, T tokens (AMX tiles where the CPU has them), in GMAC/s
//   moe   — 6 layers of 32 MXFP4 experts (2880 → 5760 → 2880), T tokens with 4 distinct random experts each
//   mxfp4 — the MXFP4 row dots (f32, integer where the CPU has VNNI, AMX tiles) over 1.5 GB of rows
// GPTOSS_CPU_ISA=avx512 (or avx512-vnni) runs a narrower path on the same machine, for a same-run comparison.
// GPTOSS_Q8=1: the q8 mode (gemv on Q8_0 weights; MoE with 8-bit activations).
// The working sets are 2–2.5 GB against a last-level cache that can be large (480 MB on the machine these numbers
// come from) and re-read in the same order every pass; an adaptive cache keeps part of them, so these rates can
// exceed a plain streaming read (membw.c) — compare paths with each other, and judge the model by model_speed.ts.
#include <fcntl.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../kernels/cpu/kernels.h"

using namespace gptoss::cpu;

namespace {

const char* g_file = nullptr;
size_t g_file_offset = 0;

uint8_t* weights(size_t bytes) {
  if (g_file) {
    static uint8_t* base = nullptr;
    static size_t length = 0;
    if (!base) {
      const int fd = open(g_file, O_RDONLY);
      if (fd < 0) std::perror(g_file), std::exit(2);
      length = static_cast<size_t>(lseek(fd, 0, SEEK_END));
      base = static_cast<uint8_t*>(mmap(nullptr, length, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0));
    }
    if (g_file_offset + bytes > length) std::fprintf(stderr, "%s is too small\n", g_file), std::exit(2);
    uint8_t* p = base + g_file_offset;
    g_file_offset += bytes;
    if (std::getenv("COPY_ANON")) {
      auto* copy = static_cast<uint8_t*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
      if (std::string(std::getenv("COPY_ANON")) == "huge") madvise(copy, bytes, MADV_HUGEPAGE);
      std::memcpy(copy, p, bytes);
      return copy;
    }
    return p;
  }
  auto* p = static_cast<uint8_t*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  madvise(p, bytes, MADV_HUGEPAGE);  // as the server's weights (map_weights)
#pragma omp parallel for
  for (size_t i = 0; i < bytes / 4; i++) reinterpret_cast<uint32_t*>(p)[i] = (static_cast<uint32_t>(i) * 2654435761u) & 0x3f7f3f7fu;
  return p;
}

template <typename F>
double best_of(int passes, F run) {
  double best = 1e30;
  for (int pass = 0; pass < passes; pass++) {
    const double start = omp_get_wtime();
    run();
    best = std::min(best, omp_get_wtime() - start);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return std::fprintf(stderr, "usage: native_kernels gemv|moe [T]|mxfp4\n"), 2;
  g_file = std::getenv("WEIGHTS_FILE");
  const char* isa_error = nullptr;
  if (!gptoss::cpu::request_isa(std::getenv("GPTOSS_CPU_ISA"), &isa_error)) {
    return std::fprintf(stderr, "GPTOSS_CPU_ISA: %s\n", isa_error), 2;
  }
#pragma omp parallel
  _mm_setcsr(_mm_getcsr() | 0x8040);
  _mm_setcsr(_mm_getcsr() | 0x8040);
  const std::string what = argv[1];
  const bool q8 = std::getenv("GPTOSS_Q8") && std::string(std::getenv("GPTOSS_Q8")) == "1";
  std::mt19937 rng(1);
  std::vector<float> x(64 * 8192), out(201088 * 4);
  for (float& v : x) v = std::uniform_real_distribution<float>(-1, 1)(rng);
  const int64_t H = 2880, I = 2880, E = 32;
  if (what == "gemv") {
    const int64_t layers = 24, per = (5120 * 2880 + 2880 * 4096) * 2, head = 201088ll * 2880 * 2;
    uint8_t* w = weights(static_cast<size_t>(layers * per + head));
    if (q8) {  // the same matrices as Q8_0: 1 + 4/32 bytes per weight
      auto quantized = [&](const uint8_t* bf16, int64_t n, int64_t k) {
        auto* q = static_cast<int8_t*>(std::aligned_alloc(64, static_cast<size_t>(n * k + n * k / 8 + 64)));
        for (int64_t r = 0; r < n; r++) {
          quantize_q8_bf16_row(reinterpret_cast<const uint16_t*>(bf16) + r * k, k, q + r * k,
                               reinterpret_cast<float*>(q + n * k) + r * (k / 32));
        }
        return q;
      };
      std::vector<int8_t*> qkv, o;
      for (int64_t l = 0; l < layers; l++) {
        qkv.push_back(quantized(w + l * per, 5120, 2880));
        o.push_back(quantized(w + l * per + 5120 * 2880 * 2, 2880, 4096));
      }
      int8_t* lm = quantized(w + layers * per, 201088, 2880);
      auto run = [&](int8_t* q, int64_t n, int64_t k) {
        matmul_f32_q8w(out.data(), x.data(), q, reinterpret_cast<float*>(q + n * k), nullptr, 1, n, k);
      };
      const double s = best_of(5, [&] {
        for (int64_t l = 0; l < layers; l++) run(qkv[l], 5120, 2880), run(o[l], 2880, 4096);
        run(lm, 201088, 2880);
      });
      const double bytes = (layers * per + head) / 2 * (1 + 4.0 / 32);
      std::printf("{\"kernel\": \"gemv_q8\", \"isa\": \"%s\", \"ms\": %.1f, \"gb_per_s\": %.2f}\n",
                  isa_name(detect_isa()), s * 1e3, bytes / s / 1e9);
      return 0;
    }
    const double s = best_of(5, [&] {
      for (int64_t l = 0; l < layers; l++) {
        matmul_f32_bf16w(out.data(), x.data(), reinterpret_cast<uint16_t*>(w + l * per), nullptr, 1, 5120, 2880);
        matmul_f32_bf16w(out.data(), x.data(), reinterpret_cast<uint16_t*>(w + l * per + 5120 * 2880 * 2), nullptr, 1, 2880, 4096);
      }
      matmul_f32_bf16w(out.data(), x.data(), reinterpret_cast<uint16_t*>(w + layers * per), nullptr, 1, 201088, 2880);
    });
    std::printf("{\"kernel\": \"gemv\", \"ms\": %.1f, \"gb_per_s\": %.2f}\n", s * 1e3, (layers * per + head) / s / 1e9);
  } else if (what == "moe") {
    const int T = argc > 2 ? std::atoi(argv[2]) : 1;
    const int64_t layers = 6;
    const size_t gu_b = E * 2 * I * (H / 32) * 16, gu_s = E * 2 * I * (H / 32), d_b = E * H * (I / 32) * 16,
                 d_s = E * H * (I / 32), per = gu_b + gu_s + d_b + d_s;
    uint8_t* w = weights(layers * per);
    if (!g_file) {
      for (int64_t l = 0; l < layers; l++) {  // scales near 2^-7, as in real checkpoints
        std::memset(w + l * per + gu_b, 120, gu_s);
        std::memset(w + l * per + gu_b + gu_s + d_b, 120, d_s);
      }
    }
    std::vector<uint16_t> bias(E * 2 * I, 0);
    std::vector<int32_t> ids(T * 4);
    std::vector<float> gates(T * 4, 0.25f);
    const double s = best_of(5, [&] {
      for (int64_t l = 0; l < layers; l++) {
        for (int t = 0; t < T; t++) {
          for (int j = 0; j < 4; j++) {
            int e;
            do e = static_cast<int>(rng() % E);
            while (std::find(&ids[t * 4], &ids[t * 4 + j], e) != &ids[t * 4 + j]);
            ids[t * 4 + j] = e;
          }
        }
        uint8_t* b = w + l * per;
        const MoeWeights mw{b, b + gu_b, bias.data(), b + gu_b + gu_s, b + gu_b + gu_s + d_b, bias.data(), E};
        moe_mlp_f32_mxfp4w(out.data(), x.data(), ids.data(), gates.data(), mw, T, 4, H, I, 7.0f, q8);
      }
    });
    const double experts_read = std::min<double>(E, 4.0 * T) * layers;  // at most: distinct experts per layer
    std::printf("{\"kernel\": \"moe%s\", \"isa\": \"%s\", \"tokens\": %d, \"ms_per_layer\": %.2f, \"gb_per_s_upper\": %.2f}\n",
                q8 ? "_q8" : "", isa_name(detect_isa()), T, s * 1e3 / layers, experts_read * per / E / s / 1e9);
  } else if (what == "gemm") {
    // Prefill-shaped dense matmul: T tokens through 24 layers of qkv + o (2.0 GB of bf16 weights).
    const int T = argc > 2 ? std::atoi(argv[2]) : 32;
    const int64_t layers = 24, per = (5120 * 2880 + 2880 * 4096) * 2;
    uint8_t* w = weights(static_cast<size_t>(layers * per));
    std::vector<float> y(static_cast<size_t>(T) * 5120);
    const double s = best_of(3, [&] {
      for (int64_t l = 0; l < layers; l++) {
        matmul_f32_bf16w(y.data(), x.data(), reinterpret_cast<uint16_t*>(w + l * per), nullptr, T, 5120, 2880);
        matmul_f32_bf16w(y.data(), x.data(), reinterpret_cast<uint16_t*>(w + l * per + 5120 * 2880 * 2), nullptr, T, 2880, 4096);
      }
    });
    const double macs = static_cast<double>(T) * layers * (5120 * 2880 + 2880 * 4096);
    std::printf("{\"kernel\": \"gemm\", \"isa\": \"%s\", \"tokens\": %d, \"ms\": %.1f, \"gmac_per_s\": %.1f}\n",
                isa_name(detect_isa()), T, s * 1e3, macs / s / 1e9);
  } else if (what == "mxfp4") {
    const int64_t rows = 1 << 20, blocks = H / 32;
    uint8_t* codes = weights(rows * blocks * 16);
    uint8_t* scales = weights(rows * blocks);
    if (!g_file) std::memset(scales, 120, rows * blocks);
    std::vector<float> split(H);
    split_for_mxfp4(x.data(), H, split.data());
    std::vector<QGroup> prepared(q_groups(H)), prepared8(q_groups(H));
    prepare_mxfp4_q(x.data(), H, prepared.data());
    prepare_mxfp4_q8(x.data(), H, prepared8.data());
    const DotKernels& dot = dot_kernels();
    const char* names[] = {"f32", "integer", "integer_q8"};
    for (int kind = 0; kind < 3; kind++) {
      const double s = best_of(3, [&] {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
          const uint8_t *c = codes + r * blocks * 16, *sc = scales + r * blocks;
          if (kind == 1) dot.mxfp4_q(c, sc, prepared.data(), 0, blocks, 1, &out[r % 4096]);
          else if (kind == 2) dot.mxfp4_q8(c, sc, prepared8.data(), 0, blocks, 1, &out[r % 4096]);
          else dot.mxfp4(c, sc, split.data(), 0, blocks, 1, &out[r % 4096]);
        }
      });
      std::printf("{\"kernel\": \"mxfp4_%s\", \"isa\": \"%s\", \"gb_per_s\": %.2f}\n", names[kind],
                  isa_name(detect_isa()), rows * blocks * 17.0 / s / 1e9);
    }
    if (use_amx()) {
      for (int tokens : {4, 16}) {
        std::vector<uint16_t> tiles(static_cast<size_t>(amx_prepared_elems(tokens, H)));
        amx_prepare(x.data(), H, tokens, H, tiles.data(), true);
        std::vector<float> y(static_cast<size_t>(tokens) * 32 * 2);
        const double s = best_of(3, [&] {
#pragma omp parallel
          {
            std::vector<float> mine(static_cast<size_t>(tokens) * 32);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r += 32) {
              amx_rows32_mxfp4(codes + r * blocks * 16, scales + r * blocks, H, tiles.data(), tokens, mine.data(), 32);
            }
            amx_release();
          }
        });
        std::printf("{\"kernel\": \"mxfp4_amx\", \"tokens\": %d, \"gb_per_s\": %.2f}\n", tokens, rows * blocks * 17.0 / s / 1e9);
      }
    }
  }
  return 0;
}
