// moe_route_f32 and moe_mlp_f32_mxfp4w: top-k routing with softmax over the k, then the MXFP4 experts with the
// clamped SwiGLU, dequantized block by block inside the kernels (experts stay packed). Each expert takes the path
// (enum Path below) that suits the number of tokens routed to it.
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

/** Tokens per expert up to which the integer dot is used, with VNNI and without (bench/native_kernels.cpp moe). */
constexpr int64_t kIntegerMaxTokens = 4;
constexpr int64_t kIntegerMaxTokensNarrow = 16;
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

/** 8 values plus their bf16 biases. */
__attribute__((target("avx2"))) static inline __m256 load_biased8(const float* v, const uint16_t* b) {
  const __m256 bias8 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b))), 16));
  return _mm256_add_ps(_mm256_loadu_ps(v), bias8);
}

/** swiglu_row_avx512 with 8 lanes: the glu/linear pairs deinterleaved by one permute per 8 outputs. */
__attribute__((target("avx2,fma"))) static void swiglu_row_avx2(float* h, const uint16_t* bias, int64_t n,
                                                                float limit) {
  const __m256i pairs = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 a = _mm256_permutevar8x32_ps(load_biased8(h + 2 * j, bias + 2 * j), pairs);
    const __m256 b = _mm256_permutevar8x32_ps(load_biased8(h + 2 * j + 8, bias + 2 * j + 8), pairs);
    const __m256 glu = _mm256_permute2f128_ps(a, b, 0x20), lin = _mm256_permute2f128_ps(a, b, 0x31);
    const __m256 g = _mm256_min_ps(glu, _mm256_set1_ps(limit));
    const __m256 l = _mm256_max_ps(_mm256_set1_ps(-limit), _mm256_min_ps(lin, _mm256_set1_ps(limit)));
    const __m256 e = exp_avx2(_mm256_mul_ps(g, _mm256_set1_ps(-1.702f)));
    const __m256 y = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)),
                                   _mm256_add_ps(l, _mm256_set1_ps(1.0f)));
    _mm256_storeu_ps(h + j, y);
  }
  for (; j < n; j++) h[j] = swiglu(h[2 * j] + bf16_to_f32(bias[2 * j]), h[2 * j + 1] + bf16_to_f32(bias[2 * j + 1]), limit);
}

static void swiglu_row(float* h, const uint16_t* bias, int64_t n, float limit) {
  static const Isa isa = detect_isa();
  if (isa >= Isa::avx512) return swiglu_row_avx512(h, bias, n, limit);
  if (isa == Isa::avx2) return swiglu_row_avx2(h, bias, n, limit);
  for (int64_t j = 0; j < n; j++) {
    h[j] = swiglu(h[2 * j] + bf16_to_f32(bias[2 * j]), h[2 * j + 1] + bf16_to_f32(bias[2 * j + 1]), limit);
  }
}

namespace {

/** How one expert's rows meet its tokens, chosen by how many tokens it has this step (see choose_path). */
enum class Path {
  amx,           // ≥ 4 tokens and AMX: 32 rows per tile pass
  integer,       // ≤ 4 tokens (any count in the q8 mode): the integer dot over prepared activations
  blocked,       // ≥ 5 tokens, AVX-512 without AMX: 4 rows decoded to f32, 4 × 4 register blocks
  f32_dot,       // narrower CPUs, ≤ 16 tokens: the f32 MXFP4 dot, 4 tokens per call
  decoded_rows,  // narrower CPUs, > 16 tokens: each row decoded to f32 once, reused for every token
};

Path choose_path(int64_t count, int64_t hidden, int64_t intermediate, bool int8_activations) {
  static const Isa isa = detect_isa();
  const bool avx512 = isa >= Isa::avx512;
  if (int8_activations) return Path::integer;  // the q8 mode: 8-bit activations whatever the count
  if (count >= kAmxMinTokens && hidden % 32 == 0 && intermediate % 32 == 0 && use_amx()) return Path::amx;
  // The integer dot does more per token than the f32 one; it wins while decoding the codes dominates: up to 4
  // tokens with VNNI (then the register-blocked f32 kernel), up to 16 with AVX2 and on the scalar path (then rows
  // decoded once). Not on AVX-512 without VNNI, whose f32 dot decodes 16 codes per permute (native_kernels.sh moe).
  if (count <= (avx512 ? kIntegerMaxTokens : kIntegerMaxTokensNarrow) && isa != Isa::avx512) return Path::integer;
  if (count > kIntegerMaxTokens && avx512) return Path::blocked;
  return count > 16 ? Path::decoded_rows : Path::f32_dot;  // measured: per group of 4 tokens wins below 17
}

/** One projection's activations: token s is f32 + s * stride, plus the layout its path reads. */
struct Inputs {
  const float* f32 = nullptr;
  int64_t stride = 0;
  std::vector<float> split;  // f32_dot, blocked: split_for_mxfp4 order
  std::vector<QGroup> q;     // integer
  std::vector<uint16_t> amx; // amx
  bool int8 = false;         // integer: q8-mode activations (prepare_mxfp4_q8), not the exact digits
};

void prepare_inputs(Path path, Inputs& in, const float* x, int64_t stride, int64_t count, int64_t k, bool int8) {
  in.f32 = x;
  in.stride = stride;
  switch (path) {
    case Path::amx:
      in.amx.resize(static_cast<size_t>(amx_prepared_elems(count, k)));
      amx_prepare(x, stride, count, k, in.amx.data(), true);
      break;
    case Path::integer:
      in.q.resize(static_cast<size_t>(count * q_groups(k)));
      in.int8 = int8;
      for (int64_t s = 0; s < count; s++) {
        if (int8) prepare_mxfp4_q8(x + s * stride, k, in.q.data() + s * q_groups(k));
        else prepare_mxfp4_q(x + s * stride, k, in.q.data() + s * q_groups(k));
      }
      break;
    case Path::blocked:
    case Path::f32_dot:
      in.split.resize(static_cast<size_t>(count * k));
      for (int64_t s = 0; s < count; s++) split_for_mxfp4(x + s * stride, k, in.split.data() + s * k);
      break;
    case Path::decoded_rows: break;
  }
}

/** One expert's share of a step: its (token, slot) pairs, path, and activations. */
struct ExpertWork {
  int64_t expert;
  std::vector<int64_t> slots;  // t * top_k + j, ascending
  Path path;
  std::vector<float> xs, act, y;
  Inputs gate_in, down_in;
};

/** One expert matrix: `rows` rows of k / 32 MXFP4 blocks. */
struct ExpertMatrix {
  const uint8_t* blocks;
  const uint8_t* scales;
  int64_t rows, k;
};

/** out[s * out_stride + row]: one row of one expert's matrix against each of its tokens, 4 tokens per dot call. */
void expert_row(const DotKernels& dot, const ExpertWork& ew, const ExpertMatrix& m, int64_t row, const Inputs& in,
                float* row_f32, float* out, int64_t out_stride) {
  const int64_t num_blocks = m.k / 32;
  const int64_t count = static_cast<int64_t>(ew.slots.size());
  const uint8_t* row_blocks = m.blocks + row * num_blocks * 16;
  const uint8_t* row_scales = m.scales + row * num_blocks;
  if (ew.path == Path::decoded_rows) dequantize_mxfp4_row(row_blocks, row_scales, num_blocks, row_f32);
  float acc[4];
  for (int64_t s = 0; s < count; s += 4) {
    const int rows = static_cast<int>(std::min<int64_t>(4, count - s));
    if (ew.path == Path::decoded_rows) dot.f32(row_f32, in.f32 + s * in.stride, in.stride, m.k, rows, acc);
    else dot.mxfp4(row_blocks, row_scales, in.split.data() + s * m.k, m.k, num_blocks, rows, acc);
    for (int q = 0; q < rows; q++) out[(s + q) * out_stride + row] = acc[q];
  }
}

/** Rows [row, row + 32) (fewer at the end of the matrix) of one expert's matrix, for each of its tokens. */
void expert_rows32(const DotKernels& dot, const ExpertWork& ew, const ExpertMatrix& m, int64_t row, const Inputs& in,
                   float* row_f32, float* out, int64_t out_stride) {
  const int64_t end = std::min(row + 32, m.rows), num_blocks = m.k / 32;
  const int64_t count = static_cast<int64_t>(ew.slots.size());
  if (ew.path == Path::blocked) {
    for (int64_t r0 = row; r0 < end; r0 += 4) {
      const int rows = static_cast<int>(std::min<int64_t>(4, end - r0));
      for (int r = 0; r < rows; r++) {
        dequantize_mxfp4_split(m.blocks + (r0 + r) * num_blocks * 16, m.scales + (r0 + r) * num_blocks, num_blocks,
                               row_f32 + r * m.k);
      }
      for (int64_t s = 0; s < count; s += 4) {
        const int tokens = static_cast<int>(std::min<int64_t>(4, count - s));
        block_dot(row_f32, rows, m.k, in.split.data() + s * m.k, m.k, tokens, m.k, nullptr, out + s * out_stride + r0,
                  out_stride);
      }
    }
    return;
  }
  if (ew.path == Path::integer) {
    // Tokens outside, rows inside: 4 tokens' prepared activations stay in L1 while the 32 rows (49 KB at the 20b's
    // width) come from L2. Rows outside made every row re-read all its tokens' activations (13 KB each) from L2:
    // 16× the L2 traffic per multiply-add, which bound a 512-token prefill. (Up to 4 tokens: one pass, as before.)
    const int64_t groups = q_groups(m.k);
    auto kernel = in.int8 ? dot.mxfp4_q8 : dot.mxfp4_q;
    float acc[4];
    for (int64_t s = 0; s < count; s += 4) {
      const int tokens = static_cast<int>(std::min<int64_t>(4, count - s));
      for (int64_t r = row; r < end; r++) {
        kernel(m.blocks + r * num_blocks * 16, m.scales + r * num_blocks, in.q.data() + s * groups, groups, num_blocks,
               tokens, acc);
        for (int q = 0; q < tokens; q++) out[(s + q) * out_stride + r] = acc[q];
      }
    }
    return;
  }
  if (ew.path == Path::amx && end - row == 32) {
    amx_rows32_mxfp4(m.blocks + row * num_blocks * 16, m.scales + row * num_blocks, m.k, in.amx.data(), count,
                     out + row, out_stride);
    return;
  }
  for (int64_t r = row; r < end; r++) expert_row(dot, ew, m, r, in, row_f32, out, out_stride);
}

}  // namespace

void moe_mlp_f32_mxfp4w(float* out, const float* x, const int32_t* ids, const float* weights, const MoeWeights& w,
                        int64_t num_tokens, int32_t top_k, int64_t hidden, int64_t intermediate, float swiglu_limit,
                        bool int8_activations) {
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
    ew.path = choose_path(count, hidden, intermediate, int8_activations);
    ew.xs.resize(static_cast<size_t>(count * hidden));
    for (int64_t s = 0; s < count; s++) std::copy_n(x + (ew.slots[s] / top_k) * hidden, hidden, ew.xs.data() + s * hidden);
    prepare_inputs(ew.path, ew.gate_in, ew.xs.data(), hidden, count, hidden, int8_activations);
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
      const ExpertMatrix gate_up{w.gate_up_blocks + ew.expert * gate_rows * hidden_blocks * 16,
                                 w.gate_up_scales + ew.expert * gate_rows * hidden_blocks, gate_rows, hidden};
      expert_rows32(dot, ew, gate_up, (i % gate_units) * 32, ew.gate_in, row_f32.data(), ew.act.data(), gate_rows);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < num_work; i++) {
      ExpertWork& ew = work[static_cast<size_t>(i)];
      const int64_t count = static_cast<int64_t>(ew.slots.size());
      const uint16_t* gu_bias = w.gate_up_bias + ew.expert * gate_rows;
      // Interleaved rows: even = glu, odd = linear. The activation goes to the first half of each slot's row.
      for (int64_t s = 0; s < count; s++) swiglu_row(ew.act.data() + s * gate_rows, gu_bias, intermediate, swiglu_limit);
      prepare_inputs(ew.path, ew.down_in, ew.act.data(), gate_rows, count, intermediate, int8_activations);
    }
    const int64_t down_units = (hidden + 31) / 32;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < num_work * down_units; i++) {
      ExpertWork& ew = work[static_cast<size_t>(i / down_units)];
      const ExpertMatrix down{w.down_blocks + ew.expert * hidden * inter_blocks * 16,
                              w.down_scales + ew.expert * hidden * inter_blocks, hidden, intermediate};
      expert_rows32(dot, ew, down, (i % down_units) * 32, ew.down_in, row_f32.data(), ew.y.data(), hidden);
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
