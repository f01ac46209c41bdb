// matmul_f32_bf16w: out[T, N] = x[T, K] · W[N, K]ᵀ + b. Threads split the weight rows; each row is read once per
// group of 4 tokens (it stays in L1 between groups), so decode streams the weights exactly once.
#include <algorithm>
#include <vector>

#include "kernels.h"

namespace gptoss::cpu {

namespace {

/** Tokens from which the AMX tiles beat the vector GEMV (bench/native_kernels.sh gemm: 2–3 tie, 4 → 1.5×). */
constexpr int64_t kAmxMinTokens = 4;

/** Tokens from which the 4 × 4 blocked kernel (AVX-512 or AVX2) replaces the per-row dot (where AMX is not used). */
constexpr int64_t kBlockedMinTokens = 4;  // bench/native_kernels.sh gemm: 2 tokens tie, 4 → 1.3×, 32 → 2.2×

/** 8-bit activations per token chunk of matmul_f32_q8w: a quarter of a 1 MiB L2, the rest for the weight stream. */
constexpr int64_t kQ8ChunkBytes = 256 * 1024;

void matmul_amx(float* out, const float* x, const uint16_t* weight, const uint16_t* bias, int64_t num_tokens,
                int64_t n, int64_t k) {
  const DotKernels& dot = dot_kernels();
  std::vector<uint16_t> prepared(static_cast<size_t>(amx_prepared_elems(num_tokens, k)));
  amx_prepare(x, k, num_tokens, k, prepared.data(), false);
  const int64_t pairs = n / 32;
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; p++) {
      amx_rows32_bf16(weight + p * 32 * k, k, prepared.data(), num_tokens, out + p * 32, n);
    }
    amx_release();
    // The last n % 32 rows: the vector kernel.
#pragma omp for schedule(static)
    for (int64_t row = pairs * 32; row < n; row++) {
      float acc[4];
      for (int64_t t = 0; t < num_tokens; t += 4) {
        const int rows = static_cast<int>(std::min<int64_t>(4, num_tokens - t));
        dot.bf16(weight + row * k, x + t * k, k, k, rows, acc);
        for (int r = 0; r < rows; r++) out[(t + r) * n + row] = acc[r];
      }
    }
    if (bias) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < num_tokens; t++)
        for (int64_t row = 0; row < n; row++) out[t * n + row] += bf16_to_f32(bias[row]);
    }
  }
}

/**
 * Several tokens without AMX: 4 × 4 register blocks (block_dot; tails with smaller blocks), threads over row blocks.
 * The per-row dot re-reads 4 tokens × k activations from L2 for every row (L2-bound at ~20 GMAC/s per core); a
 * block reads them once per 4 rows.
 */
void matmul_blocked(float* out, const float* x, const uint16_t* weight, const uint16_t* bias, int64_t num_tokens,
                    int64_t n, int64_t k) {
  const int64_t row_blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < row_blocks; b++) {
    const int64_t row = b * 4;
    const int rb = static_cast<int>(std::min<int64_t>(4, n - row));
    for (int64_t t = 0; t < num_tokens; t += 4) {
      const int tb = static_cast<int>(std::min<int64_t>(4, num_tokens - t));
      block_dot(weight + row * k, rb, k, x + t * k, k, tb, k, bias ? bias + row : nullptr, out + t * n + row, n);
    }
  }
}

}  // namespace

void matmul_f32_bf16w(float* out, const float* x, const uint16_t* weight, const uint16_t* bias, int64_t num_tokens,
                      int64_t n, int64_t k) {
  if (num_tokens >= kAmxMinTokens && k % 32 == 0 && use_amx()) return matmul_amx(out, x, weight, bias, num_tokens, n, k);
  static const Isa isa = detect_isa();
  const bool blocked = isa >= Isa::avx512 ? k % 16 == 0 : isa == Isa::avx2 && k % 8 == 0;  // block_dot's conditions
  if (num_tokens >= kBlockedMinTokens && blocked) {
    return matmul_blocked(out, x, weight, bias, num_tokens, n, k);
  }
  const DotKernels& dot = dot_kernels();
  // More than 4 tokens (prefill): decode each weight row to f32 once and reuse it for every group of 4 tokens.
  const bool decode_once = num_tokens > 64;  // measured: below this, converting per group of 4 tokens wins
#pragma omp parallel
  {
    std::vector<float> row_f32(decode_once ? static_cast<size_t>(k) : 0);
// Contiguous halves: each thread streams one run of rows, so the prefetches ahead stay inside its own run.
#pragma omp for schedule(static)
    for (int64_t row = 0; row < n; row++) {
      const uint16_t* w = weight + row * k;
      const float b = bias ? bf16_to_f32(bias[row]) : 0.0f;
      if (decode_once) widen_bf16_row(w, k, row_f32.data());
      float acc[4];
      for (int64_t t = 0; t < num_tokens; t += 4) {
        const int rows = static_cast<int>(std::min<int64_t>(4, num_tokens - t));
        if (decode_once) dot.f32(row_f32.data(), x + t * k, k, k, rows, acc);
        else dot.bf16(w, x + t * k, k, k, rows, acc);
        for (int r = 0; r < rows; r++) out[(t + r) * n + row] = acc[r] + b;
      }
    }
  }
}

void matmul_f32_q8w(float* out, const float* x, const int8_t* weight, const float* weight_scales,
                    const uint16_t* bias, int64_t num_tokens, int64_t n, int64_t k) {
  const DotKernels& dot = dot_kernels();
  std::vector<int8_t> xq(static_cast<size_t>(num_tokens * k));
  std::vector<float> xs(static_cast<size_t>(num_tokens * k / 32));
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < num_tokens; t++) quantize_q8_row(x + t * k, k, xq.data() + t * k, xs.data() + t * (k / 32));
    // Contiguous runs of rows per thread, as in matmul_f32_bf16w; each row meets 4 tokens per call. Prefill takes
    // the tokens in chunks whose 8-bit activations stay in L2 (kQ8ChunkBytes): without them, 512 tokens of a
    // 2,880-wide input (1.5 MB) came from L3 again for every weight row. Each chunk re-reads the weights instead.
    const int64_t chunk = std::max<int64_t>(4, kQ8ChunkBytes / (k + k / 8) / 4 * 4);
    for (int64_t t0 = 0; t0 < num_tokens; t0 += chunk) {
      const int64_t t1 = std::min(num_tokens, t0 + chunk);
#pragma omp for schedule(static)
      for (int64_t row = 0; row < n; row++) {
        const float b = bias ? bf16_to_f32(bias[row]) : 0.0f;
        float acc[4];
        for (int64_t t = t0; t < t1; t += 4) {
          const int rows = static_cast<int>(std::min<int64_t>(4, t1 - t));
          dot.q8(weight + row * k, weight_scales + row * (k / 32), xq.data() + t * k, xs.data() + t * (k / 32), k, k,
                 rows, acc);
          for (int r = 0; r < rows; r++) out[(t + r) * n + row] = acc[r] + b;
        }
      }
    }
  }
}

}  // namespace gptoss::cpu
