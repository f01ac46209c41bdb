// moe_route_f32 and moe_mlp_f32_mxfp4w: top-k routing with softmax over the k, then the MXFP4 experts with the
// clamped SwiGLU, dequantized block by block inside the dot products (experts stay packed). Per expert, by the
// number of tokens routed to it: AMX tiles (≥ 4, where the CPU has them), the integer VNNI dot (≤ 4), with AVX-512
// 4 rows decoded to f32 at a time into 4 × 4 register blocks (≥ 5); on narrower CPUs the f32 dot (≤ 16) or each
// row decoded to f32 once and reused (> 16).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace gptoss::cpu {

void moe_route_f32(int32_t* ids, float* weights, const float* logits, int64_t num_tokens, int64_t num_experts,
                   int32_t top_k) {
  for (int64_t t = 0; t < num_tokens; t++) {
    const float* z = logits + t * num_experts;
    int32_t* chosen = ids + t * top_k;
    for (int32_t j = 0; j < top_k; j++) {
      int32_t best = -1;
      for (int32_t e = 0; e < num_experts; e++) {
        if (std::find(chosen, chosen + j, e) != chosen + j) continue;
        if (best < 0 || z[e] > z[best]) best = e;  // strict: ties keep the lowest index
      }
      chosen[j] = best;
    }
    const double max = z[chosen[0]];
    double sum = 0;
    for (int32_t j = 0; j < top_k; j++) sum += std::exp(z[chosen[j]] - max);
    for (int32_t j = 0; j < top_k; j++) weights[t * top_k + j] = static_cast<float>(std::exp(z[chosen[j]] - max) / sum);
  }
}

/** Tokens per expert up to which the integer VNNI dot is used (measured with bench/native_kernels.cpp). */
constexpr int64_t kIntegerMaxTokens = 4;
/** Tokens per expert from which the AMX tile kernel is used (where the CPU has it). */
constexpr int64_t kAmxMinTokens = 4;

static inline float swiglu(float glu, float lin, float limit) {
  const float g = std::min(glu, limit);
  const float l = std::max(-limit, std::min(lin, limit));
  // The exponent is capped at 88 (e^88 < FLT_MAX): past g < −51.7 the result is ~1e−37 instead of 0, and glibc's
  // overflow path (errno, ~20× slower) is never taken.
  return g / (1.0f + std::exp(std::min(-1.702f * g, 88.0f))) * (l + 1.0f);
}

/**
 * h[j] = swiglu(h[2j] + bias[2j], h[2j + 1] + bias[2j + 1]) for j < n, in place (the gate_up rows interleave glu
 * and linear). 16 at a time with AVX-512 (the scalar expf was 40% of a 64-token MoE layer), else one at a time.
 */
__attribute__((target("avx512f"))) static void swiglu_row_avx512(float* h, const uint16_t* bias, int64_t n,
                                                                  float limit) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 a = _mm512_loadu_ps(h + 2 * j), b = _mm512_loadu_ps(h + 2 * j + 16);
    const __m512i bias_bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + 2 * j)));
    const __m512i bias_bits2 =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + 2 * j + 16)));
    const __m512 ba = _mm512_castsi512_ps(_mm512_slli_epi32(bias_bits, 16));
    const __m512 bb = _mm512_castsi512_ps(_mm512_slli_epi32(bias_bits2, 16));
    const __m512 glu = _mm512_permutex2var_ps(_mm512_add_ps(a, ba), even, _mm512_add_ps(b, bb));
    const __m512 lin = _mm512_permutex2var_ps(_mm512_add_ps(a, ba), odd, _mm512_add_ps(b, bb));
    const __m512 g = _mm512_min_ps(glu, _mm512_set1_ps(limit));
    const __m512 l = _mm512_max_ps(_mm512_set1_ps(-limit), _mm512_min_ps(lin, _mm512_set1_ps(limit)));
    const __m512 e = exp_avx512(_mm512_mul_ps(g, _mm512_set1_ps(-1.702f)));
    const __m512 y = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)),
                                   _mm512_add_ps(l, _mm512_set1_ps(1.0f)));
    _mm512_storeu_ps(h + j, y);
  }
  for (; j < n; j++) h[j] = swiglu(h[2 * j] + bf16_to_f32(bias[2 * j]), h[2 * j + 1] + bf16_to_f32(bias[2 * j + 1]), limit);
}

static void swiglu_row(float* h, const uint16_t* bias, int64_t n, float limit) {
  static const bool wide = detect_isa() >= Isa::avx512;
  if (wide) return swiglu_row_avx512(h, bias, n, limit);
  for (int64_t j = 0; j < n; j++) {
    h[j] = swiglu(h[2 * j] + bf16_to_f32(bias[2 * j]), h[2 * j + 1] + bf16_to_f32(bias[2 * j + 1]), limit);
  }
}

namespace {

/** One expert's share of a step: its (token, slot) pairs and their activations in the layouts its dot reads. */
struct ExpertWork {
  int64_t expert;
  std::vector<int64_t> slots;  // t * top_k + j, ascending
  bool decode_once = false;    // many tokens: decode each weight row to f32 once, reuse it for every token
  bool integer = false;        // few tokens and VNNI: the integer dot over prepared activations
  bool amx = false;            // enough tokens and AMX: 32 rows per tile pass
  bool blocked = false;        // enough tokens, AVX-512 but no AMX: 4 rows decoded to f32, 4 × 4 register blocks
  std::vector<float> xs, xs_split, act, act_split, y;
  std::vector<QGroup> xs_q, act_q;
  std::vector<uint16_t> xs_amx, act_amx;
};

/** out[s * out_stride + row]: one row of one expert's matrix against each of its tokens, 4 tokens per dot call. */
void expert_rows(const DotKernels& dot, const ExpertWork& ew, int64_t row, const uint8_t* blocks,
                 const uint8_t* scales, int64_t k, const float* x_f32, int64_t x_f32_stride, const float* x_split,
                 const QGroup* x_q, float* row_f32, float* out, int64_t out_stride) {
  const int64_t num_blocks = k / 32, groups = q_groups(k);
  const int64_t count = static_cast<int64_t>(ew.slots.size());
  const uint8_t* row_blocks = blocks + row * num_blocks * 16;
  const uint8_t* row_scales = scales + row * num_blocks;
  if (ew.decode_once) dequantize_mxfp4_row(row_blocks, row_scales, num_blocks, row_f32);
  float acc[4];
  for (int64_t s = 0; s < count; s += 4) {
    const int rows = static_cast<int>(std::min<int64_t>(4, count - s));
    if (ew.decode_once) dot.f32(row_f32, x_f32 + s * x_f32_stride, x_f32_stride, k, rows, acc);
    else if (ew.integer) dot.mxfp4_q(row_blocks, row_scales, x_q + s * groups, groups, num_blocks, rows, acc);
    else dot.mxfp4(row_blocks, row_scales, x_split + s * k, k, num_blocks, rows, acc);
    for (int q = 0; q < rows; q++) out[(s + q) * out_stride + row] = acc[q];
  }
}

/** Rows [row, row + 32) (fewer at the end of the matrix) of one expert's matrix, for each of its tokens. */
void expert_rows32(const DotKernels& dot, const ExpertWork& ew, int64_t row, int64_t num_rows, const uint8_t* blocks,
                   const uint8_t* scales, int64_t k, const float* x_f32, int64_t x_f32_stride, const float* x_split,
                   const QGroup* x_q, const uint16_t* x_amx, float* row_f32, float* out, int64_t out_stride) {
  const int64_t end = std::min(row + 32, num_rows);
  if (ew.blocked) {
    const int64_t num_blocks = k / 32, count = static_cast<int64_t>(ew.slots.size());
    for (int64_t r0 = row; r0 < end; r0 += 4) {
      const int rows = static_cast<int>(std::min<int64_t>(4, end - r0));
      for (int r = 0; r < rows; r++) {
        dequantize_mxfp4_split(blocks + (r0 + r) * num_blocks * 16, scales + (r0 + r) * num_blocks, num_blocks,
                               row_f32 + r * k);
      }
      for (int64_t s = 0; s < count; s += 4) {
        const int tokens = static_cast<int>(std::min<int64_t>(4, count - s));
        block_f32(row_f32, rows, x_split + s * k, k, tokens, k, out + s * out_stride + r0, out_stride);
      }
    }
    return;
  }
  if (ew.amx && end - row == 32) {
    const int64_t num_blocks = k / 32;
    amx_rows32_mxfp4(blocks + row * num_blocks * 16, scales + row * num_blocks, k, x_amx,
                     static_cast<int64_t>(ew.slots.size()), out + row, out_stride);
    return;
  }
  for (int64_t r = row; r < end; r++) {
    expert_rows(dot, ew, r, blocks, scales, k, x_f32, x_f32_stride, x_split, x_q, row_f32, out, out_stride);
  }
}

}  // namespace

void moe_mlp_f32_mxfp4w(float* out, const float* x, const int32_t* ids, const float* weights, const MoeWeights& w,
                        int64_t num_tokens, int32_t top_k, int64_t hidden, int64_t intermediate, float swiglu_limit) {
  const DotKernels& dot = dot_kernels();
  const int64_t hidden_blocks = hidden / 32, inter_blocks = intermediate / 32;
  // Group (token, slot) pairs by expert so each weight row is read once for all the tokens routed to it.
  std::vector<std::vector<int64_t>> slots(static_cast<size_t>(w.num_experts));
  for (int64_t t = 0; t < num_tokens; t++)
    for (int32_t j = 0; j < top_k; j++) slots[static_cast<size_t>(ids[t * top_k + j])].push_back(t * top_k + j);
  std::vector<ExpertWork> work;
  for (int64_t e = 0; e < w.num_experts; e++) {
    if (slots[static_cast<size_t>(e)].empty()) continue;
    ExpertWork ew;
    ew.expert = e;
    ew.slots = std::move(slots[static_cast<size_t>(e)]);
    const int64_t count = static_cast<int64_t>(ew.slots.size());
    ew.decode_once = count > 16;  // measured: decoding a row per group of 4 tokens wins below this
    // The integer VNNI dot does more per token than the f32 one; it wins while decoding the codes dominates.
    ew.integer = !ew.decode_once && dot.mxfp4_q && count <= kIntegerMaxTokens;
    ew.amx = count >= kAmxMinTokens && hidden % 32 == 0 && intermediate % 32 == 0 && use_amx();
    if (ew.amx) ew.integer = ew.decode_once = false;
    static const bool avx512 = detect_isa() >= Isa::avx512;
    ew.blocked = !ew.amx && avx512 && count > kIntegerMaxTokens;
    if (ew.blocked) ew.integer = ew.decode_once = false;
    ew.xs.resize(static_cast<size_t>(count * hidden));
    for (int64_t s = 0; s < count; s++) std::copy_n(x + (ew.slots[s] / top_k) * hidden, hidden, ew.xs.data() + s * hidden);
    if (ew.amx) {
      ew.xs_amx.resize(static_cast<size_t>(amx_prepared_elems(count, hidden)));
      amx_prepare(ew.xs.data(), hidden, count, hidden, ew.xs_amx.data(), true);
    } else if (ew.integer) {
      ew.xs_q.resize(static_cast<size_t>(count * q_groups(hidden)));
      for (int64_t s = 0; s < count; s++) prepare_mxfp4_q(ew.xs.data() + s * hidden, hidden, ew.xs_q.data() + s * q_groups(hidden));
    } else if (!ew.decode_once) {
      // The f32 MXFP4 dot reads activations in the split layout (evens, then odds, per block): reorder once.
      ew.xs_split.resize(ew.xs.size());
      for (int64_t s = 0; s < count; s++) split_for_mxfp4(ew.xs.data() + s * hidden, hidden, ew.xs_split.data() + s * hidden);
    }
    ew.act.resize(static_cast<size_t>(count * 2 * intermediate));
    ew.y.resize(static_cast<size_t>(count * hidden));
    work.push_back(std::move(ew));
  }
  const int64_t gate_rows = 2 * intermediate;
  const int64_t num_work = static_cast<int64_t>(work.size());
  // Four phases in one parallel region: (1) every gate_up row of every routed expert, one loop, so each thread
  // streams one contiguous run of weights; (2) SwiGLU and the down projection's activation layout per expert;
  // (3) every down row of every routed expert, the same way; (4) the weighted sum over experts per output row.
#pragma omp parallel
  {
    std::vector<float> row_f32(static_cast<size_t>(4 * std::max(hidden, intermediate)));  // blocked: 4 rows
    const int64_t gate_units = (gate_rows + 31) / 32;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < num_work * gate_units; i++) {
      ExpertWork& ew = work[static_cast<size_t>(i / gate_units)];
      expert_rows32(dot, ew, (i % gate_units) * 32, gate_rows, w.gate_up_blocks + ew.expert * gate_rows * hidden_blocks * 16,
                    w.gate_up_scales + ew.expert * gate_rows * hidden_blocks, hidden, ew.xs.data(), hidden,
                    ew.xs_split.data(), ew.xs_q.data(), ew.xs_amx.data(), row_f32.data(), ew.act.data(), gate_rows);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < num_work; i++) {
      ExpertWork& ew = work[static_cast<size_t>(i)];
      const int64_t count = static_cast<int64_t>(ew.slots.size());
      const uint16_t* gu_bias = w.gate_up_bias + ew.expert * gate_rows;
      // Interleaved rows: even = glu, odd = linear. The activation goes to the first half of each slot's row.
      for (int64_t s = 0; s < count; s++) swiglu_row(ew.act.data() + s * gate_rows, gu_bias, intermediate, swiglu_limit);
      if (ew.amx) {
        ew.act_amx.resize(static_cast<size_t>(amx_prepared_elems(count, intermediate)));
        amx_prepare(ew.act.data(), gate_rows, count, intermediate, ew.act_amx.data(), true);
      } else if (ew.integer) {
        ew.act_q.resize(static_cast<size_t>(count * q_groups(intermediate)));
        for (int64_t s = 0; s < count; s++) {
          prepare_mxfp4_q(ew.act.data() + s * gate_rows, intermediate, ew.act_q.data() + s * q_groups(intermediate));
        }
      } else if (!ew.decode_once) {
        ew.act_split.resize(static_cast<size_t>(count * intermediate));
        for (int64_t s = 0; s < count; s++) {
          split_for_mxfp4(ew.act.data() + s * gate_rows, intermediate, ew.act_split.data() + s * intermediate);
        }
      }
    }
    const int64_t down_units = (hidden + 31) / 32;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < num_work * down_units; i++) {
      ExpertWork& ew = work[static_cast<size_t>(i / down_units)];
      expert_rows32(dot, ew, (i % down_units) * 32, hidden, w.down_blocks + ew.expert * hidden * inter_blocks * 16,
                    w.down_scales + ew.expert * hidden * inter_blocks, intermediate, ew.act.data(), gate_rows,
                    ew.act_split.data(), ew.act_q.data(), ew.act_amx.data(), row_f32.data(), ew.y.data(), hidden);
    }
    // Each thread owns rows of `out` and adds the experts in ascending order (the same sums in the same order
    // for any thread count).
#pragma omp for schedule(static)
    for (int64_t r = 0; r < hidden; r++) {
      for (int64_t t = 0; t < num_tokens; t++) out[t * hidden + r] = 0.0f;
      for (ExpertWork& ew : work) {
        const float bias = bf16_to_f32(w.down_bias[ew.expert * hidden + r]);
        for (size_t s = 0; s < ew.slots.size(); s++) {
          const int64_t t = ew.slots[s] / top_k;
          out[t * hidden + r] += weights[ew.slots[s]] * (ew.y[s * hidden + r] + bias);
        }
      }
    }
    if (use_amx()) amx_release();
  }
}

}  // namespace gptoss::cpu
