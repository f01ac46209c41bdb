// Integer dot products for CPUs without AVX-512 VNNI (AVX2, scalar), and the 8-bit formats of the q8 mode:
// MXFP4 rows against prepared activations (QGroup, 3 digits exact or 1 digit in q8 mode) and Q8_0 weight rows
// against Q8_0 activations. Every product and sum is exact in int32; floats enter only through the block scales.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace gptoss::cpu {
namespace {

// 2·FP4 + 12 by nibble (unsigned weights for VPMADDUBSW; QGroup::corr removes the 12), twice for a 256-bit shuffle.
alignas(32) const int8_t kFp4Plus12[32] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
                                           12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
// Spreads two scale bytes (a broadcast word) to the lanes of their blocks: lanes 0–3 get byte 0, lanes 4–7 byte 1.
alignas(32) const int8_t kScaleSpread2[32] = {0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1,
                                              1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1};

/**
 * 2^(e − 128) for an E8M0 byte e (the FP4 table is doubled), as the vector paths make it: the exponent field e − 1,
 * so e ≤ 1 gives 0 (the subnormal 2^−127 flushed, as DAZ does on the f32 path).
 */
inline float e8m0_half(uint8_t e) { return e <= 1 ? 0.0f : std::ldexp(1.0f, int{e} - 128); }

/** The value of prepared element p (0–63) of a QGroup's even or odd half, with `digits` digits. */
inline int32_t q_value(const QGroup& q, bool odd, int p, int digits) {
  const int32_t hi = odd ? q.hi_odd[p] : q.hi_even[p];
  if (digits == 1) return hi;
  const int32_t mid = odd ? q.mid_odd[p] : q.mid_even[p], lo = odd ? q.lo_odd[p] : q.lo_even[p];
  return hi * (1 << 14) + mid * (1 << 7) + lo;
}

void mxfp4_q_scalar(const uint8_t* blocks, const uint8_t* scales, const QGroup* x, int64_t stride,
                    int64_t num_blocks, int rows, float* out, int digits) {
  for (int r = 0; r < rows; r++) {
    float total = 0;
    for (int64_t b = 0; b < num_blocks; b++) {
      const QGroup& q = x[r * stride + b / 4];
      const int slot = static_cast<int>(b % 4);
      int32_t acc = q.corr[slot * 4];
      for (int j = 0; j < 16; j++) {
        const uint8_t byte = blocks[b * 16 + j];
        acc += kFp4Plus12[byte & 15] * q_value(q, false, slot * 16 + j, digits);
        acc += kFp4Plus12[byte >> 4] * q_value(q, true, slot * 16 + j, digits);
      }
      total += static_cast<float>(acc) * (e8m0_half(scales[b]) * q.scale[slot * 4]);
    }
    out[r] = total;
  }
}

/** 32 bytes of a QGroup field from byte `offset` (a multiple of 32). */
template <typename T>
__attribute__((target("avx2"))) inline __m256i load32(const T* field, int offset) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(field + offset));
}

/** Σ over 32 byte pairs of a·b (a unsigned, b signed; |pair sums| < 2¹⁵), as 16 int16 lanes. */
__attribute__((target("avx2"))) inline __m256i madd_u8s8(__m256i a0, __m256i b0, __m256i a1, __m256i b1) {
  return _mm256_add_epi16(_mm256_maddubs_epi16(a0, b0), _mm256_maddubs_epi16(a1, b1));
}

/** The codes of two blocks (b, b + 1; only b when `odd_tail`) as unsigned 2·FP4 + 12, even and odd nibbles. */
__attribute__((target("avx2"))) inline void decode_pair(const uint8_t* blocks, int64_t b, bool odd_tail, __m256i& even,
                                                        __m256i& odd) {
  const __m256i lut = _mm256_load_si256(reinterpret_cast<const __m256i*>(kFp4Plus12));
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i codes =
      odd_tail ? _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + b * 16)))
               : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blocks + b * 16));
  even = _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, low4));
  odd = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(codes, 4), low4));
}

/**
 * One token's exact int32 sums over two decoded blocks without the offset correction: lanes 0–3 hold parts of
 * block b, lanes 4–7 of block b + 1. D = 3: the digits weighted by VPMADDWD with 2¹⁴, 2⁷, 1; D = 1: 8-bit values.
 */
template <int D>
__attribute__((target("avx2"))) inline __m256i pair_sums(__m256i even, __m256i odd, const QGroup& q, int half) {
  const __m256i hi = madd_u8s8(even, load32(q.hi_even, half), odd, load32(q.hi_odd, half));
  __m256i acc = _mm256_madd_epi16(hi, _mm256_set1_epi16(D == 3 ? 1 << 14 : 1));
  if constexpr (D == 3) {
    const __m256i mid = madd_u8s8(load32(q.mid_even, half), even, load32(q.mid_odd, half), odd);
    const __m256i lo = madd_u8s8(load32(q.lo_even, half), even, load32(q.lo_odd, half), odd);
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(mid, _mm256_set1_epi16(1 << 7)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(lo, _mm256_set1_epi16(1)));
  }
  return acc;
}

/** Two blocks (b, b + 1; only b when `odd_tail`) of mxfp4_q_avx2_rows into total[0..R): the rows' last blocks. */
template <int R, int D>
__attribute__((target("avx2,fma"))) inline void mxfp4_q_avx2_pair(const uint8_t* blocks, const uint8_t* scales,
                                                                   const QGroup* x, int64_t stride, int64_t b,
                                                                   bool odd_tail, __m256* total) {
  __m256i even, odd;
  decode_pair(blocks, b, odd_tail, even, odd);
  uint16_t two = scales[b];
  if (!odd_tail) std::memcpy(&two, scales + b, 2);
  // E8M0 e → 2^(e − 128): exponent field e − 1 (saturating, so e ≤ 1 gives 0), spread to each block's 4 lanes.
  const __m256i exponents = _mm256_subs_epu8(_mm256_set1_epi16(static_cast<int16_t>(two)), _mm256_set1_epi8(1));
  const __m256 w_scale = _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_shuffle_epi8(exponents, _mm256_load_si256(reinterpret_cast<const __m256i*>(kScaleSpread2))), 23));
  const int half = static_cast<int>(b % 4) * 16;  // byte offset of these two blocks in the group's arrays
  for (int r = 0; r < R; r++) {
    const QGroup& q = x[r * stride + b / 4];
    __m256i acc = pair_sums<D>(even, odd, q, half);
    acc = _mm256_add_epi32(acc, _mm256_load_si256(reinterpret_cast<const __m256i*>(q.corr + half / 4)));
    const __m256 scale = _mm256_mul_ps(w_scale, _mm256_load_ps(q.scale + half / 4));
    total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), scale, total[r]);
  }
}

/**
 * Eight blocks (b … b + 7, b a multiple of 4: groups b / 4 and b / 4 + 1) into total[0..R). Each pair's four
 * int32 lanes per block are summed by three VPHADDDs into one lane per block (a whole block's sum stays below
 * 32·24·2²¹ < 2³¹), so the offset correction, the two scales, the conversion and the FMA are paid once per 8 blocks
 * instead of once per pair: ~15 vector instructions per 32 code bytes instead of ~20, for the rates a core reaches
 * when memory is not the limit.
 */
template <int R, int D>
__attribute__((target("avx2,fma"))) inline void mxfp4_q_avx2_oct(const uint8_t* blocks, const uint8_t* scales,
                                                                  const QGroup* x, int64_t stride, int64_t b,
                                                                  __m256* total) {
  __m256i first[R], second[R];  // hadd of pairs 0 and 1, then of pairs 2 and 3
  for (int p = 0; p < 4; p++) {
    __m256i even, odd;
    decode_pair(blocks, b + 2 * p, false, even, odd);
    const int half = (p % 2) * 32;
    for (int r = 0; r < R; r++) {
      const __m256i sums = pair_sums<D>(even, odd, x[r * stride + b / 4 + p / 2], half);
      if (p == 0) first[r] = sums;
      else if (p == 1) first[r] = _mm256_hadd_epi32(first[r], sums);
      else if (p == 2) second[r] = sums;
      else second[r] = _mm256_hadd_epi32(second[r], sums);
    }
  }
  // hadd(hadd(p0, p1), hadd(p2, p3)) holds blocks 0 2 4 6 | 1 3 5 7: back to block order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m128i exponents = _mm_subs_epu8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + b)), _mm_set1_epi8(1));
  const __m256 w_scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu8_epi32(exponents), 23));
  for (int r = 0; r < R; r++) {
    const QGroup& q0 = x[r * stride + b / 4];
    const QGroup& q1 = x[r * stride + b / 4 + 1];
    const __m256i sums = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(first[r], second[r]), order);
    const __m256i corr = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(q1.block_corr),
                                             reinterpret_cast<const __m128i*>(q0.block_corr));
    const __m256 x_scale = _mm256_loadu2_m128(q1.block_scale, q0.block_scale);
    total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sums, corr)), _mm256_mul_ps(w_scale, x_scale),
                               total[r]);
  }
}

/**
 * R activation rows against one MXFP4 row: 8 blocks (128 code bytes) per step (mxfp4_q_avx2_oct), the last 0–7
 * blocks in pairs. D = 3: the exact 22-bit digits (hi·2¹⁴ + mid·2⁷ + lo); D = 1: the q8 mode's 8-bit activations.
 * The int16 sums stay below 2·2·24·128 = 12,288 and the int32 ones below 2³¹ (see QGroup).
 */
template <int R, int D>
__attribute__((target("avx2,fma"))) void mxfp4_q_avx2_rows(const uint8_t* blocks, const uint8_t* scales,
                                                            const QGroup* x, int64_t stride, int64_t num_blocks,
                                                            float* out) {
  __m256 total[R];
  for (int r = 0; r < R; r++) total[r] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= num_blocks; b += 8) {
    prefetch_weights<Fetch::l1>(blocks + b * 16);
    prefetch_weights<Fetch::l1>(blocks + b * 16 + 64);
    mxfp4_q_avx2_oct<R, D>(blocks, scales, x, stride, b, total);
  }
  for (; b < num_blocks; b += 2) mxfp4_q_avx2_pair<R, D>(blocks, scales, x, stride, b, b + 1 == num_blocks, total);
  for (int r = 0; r < R; r++) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(total[r]), _mm256_extractf128_ps(total[r], 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    out[r] = _mm_cvtss_f32(s);
  }
}

template <int D>
__attribute__((target("avx2,fma"))) void mxfp4_q_avx2(const uint8_t* blocks, const uint8_t* scales, const QGroup* x,
                                                      int64_t stride, int64_t num_blocks, int rows, float* out) {
  switch (rows) {
    case 1: return mxfp4_q_avx2_rows<1, D>(blocks, scales, x, stride, num_blocks, out);
    case 2: return mxfp4_q_avx2_rows<2, D>(blocks, scales, x, stride, num_blocks, out);
    case 3: return mxfp4_q_avx2_rows<3, D>(blocks, scales, x, stride, num_blocks, out);
    default: return mxfp4_q_avx2_rows<4, D>(blocks, scales, x, stride, num_blocks, out);
  }
}

void q8_scalar(const int8_t* w, const float* w_scales, const int8_t* x, const float* x_scales, int64_t x_stride,
               int64_t k, int rows, float* out) {
  for (int r = 0; r < rows; r++) {
    float total = 0;
    for (int64_t b = 0; b < k / 32; b++) {
      int32_t acc = 0;
      for (int j = 0; j < 32; j++) acc += int32_t{w[b * 32 + j]} * x[r * x_stride + b * 32 + j];
      total += static_cast<float>(acc) * (w_scales[b] * x_scales[r * (x_stride / 32) + b]);
    }
    out[r] = total;
  }
}

/** One block b of q8_avx2_rows into acc[0..R). */
template <int R>
__attribute__((target("avx2,fma"))) inline void q8_avx2_block(const int8_t* w, const float* w_scales, const int8_t* x,
                                                               const float* x_scales, int64_t x_stride, int64_t b,
                                                               __m256* acc) {
  const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * 32));
  const __m256i aw = _mm256_abs_epi8(wv);
  for (int r = 0; r < R; r++) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + r * x_stride + b * 32));
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), _mm256_set1_epi16(1));
    const float scale = w_scales[b] * x_scales[r * (x_stride / 32) + b];
    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale), acc[r]);
  }
}

/**
 * One Q8_0 weight row against R Q8_0 activation rows: VPMADDUBSW on |w| and x·sign(w) (|pair sums| ≤ 2·127² <
 * 2¹⁵), VPMADDWD to int32, one FMA per block with the product of the two scales. Two blocks per step in separate
 * accumulators so the FMA chains overlap.
 */
template <int R>
__attribute__((target("avx2,fma"))) void q8_avx2_rows(const int8_t* w, const float* w_scales, const int8_t* x,
                                                       const float* x_scales, int64_t x_stride, int64_t k, float* out) {
  const int64_t num_blocks = k / 32;
  __m256 acc0[R], acc1[R];
  for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int64_t b = 0;
  // A prefetch for every 64-byte line: one for every other line (the hardware left to fetch the rest) streamed
  // 14.5 GB/s per core on an AVX2 EPYC instead of 27 (the 201,088-row unembedding, /tmp microbenchmark).
  for (; b + 2 <= num_blocks; b += 2) {
    prefetch_weights(w + b * 32);
    q8_avx2_block<R>(w, w_scales, x, x_scales, x_stride, b, acc0);
    q8_avx2_block<R>(w, w_scales, x, x_scales, x_stride, b + 1, acc1);
  }
  if (b < num_blocks) q8_avx2_block<R>(w, w_scales, x, x_scales, x_stride, b, acc0);
  for (int r = 0; r < R; r++) {
    const __m256 sum = _mm256_add_ps(acc0[r], acc1[r]);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    out[r] = _mm_cvtss_f32(s);
  }
}

__attribute__((target("avx2,fma"))) void q8_avx2(const int8_t* w, const float* w_scales, const int8_t* x,
                                                 const float* x_scales, int64_t x_stride, int64_t k, int rows,
                                                 float* out) {
  switch (rows) {
    case 1: return q8_avx2_rows<1>(w, w_scales, x, x_scales, x_stride, k, out);
    case 2: return q8_avx2_rows<2>(w, w_scales, x, x_scales, x_stride, k, out);
    case 3: return q8_avx2_rows<3>(w, w_scales, x, x_scales, x_stride, k, out);
    default: return q8_avx2_rows<4>(w, w_scales, x, x_scales, x_stride, k, out);
  }
}

/** Q8_0 of one 32-value block: q = round(v · 127 / max|v|), scale max|v| / 127 (0 and non-finite as QGroup does). */
float quantize_block_scalar(const float* v, int8_t* q) {
  float max = 0;
  for (int j = 0; j < 32; j++) max = std::max(max, std::fabs(v[j]));
  const bool usable = max > 0 && std::isfinite(max);
  const float inverse = usable ? 127.0f / max : 0.0f;
  for (int j = 0; j < 32; j++) {
    q[j] = usable ? static_cast<int8_t>(std::nearbyint(std::clamp(v[j] * inverse, -127.0f, 127.0f))) : 0;
  }
  return usable ? max / 127.0f : max;
}

/**
 * quantize_block_scalar with AVX2, bit for bit: the same products, clamps and round-to-nearest-even (VROUNDPS with
 * the default rounding, as nearbyint); a NaN value is left out of the maximum and quantized to 0, as the scalar code
 * does. The scalar nearbyint per value cost ~10 µs per 2,880-wide row, more than a 32-row matmul's whole dot.
 */
__attribute__((target("avx2,fma"))) float quantize_block_avx2(const float* v, int8_t* q) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 x[4], ordered[4];
  __m256 max8 = _mm256_setzero_ps();
  for (int i = 0; i < 4; i++) {
    x[i] = _mm256_loadu_ps(v + 8 * i);
    ordered[i] = _mm256_cmp_ps(x[i], x[i], _CMP_ORD_Q);
    max8 = _mm256_max_ps(max8, _mm256_and_ps(_mm256_andnot_ps(sign, x[i]), ordered[i]));
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(max8), _mm256_extractf128_ps(max8, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float max = _mm_cvtss_f32(m);
  const bool usable = max > 0 && std::isfinite(max);
  if (!usable) {
    std::memset(q, 0, 32);
    return max;
  }
  const __m256 inverse = _mm256_set1_ps(127.0f / max), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  __m256i n[4];
  for (int i = 0; i < 4; i++) {
    const __m256 clamped = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(x[i], inverse), lo), hi);
    const __m256 rounded = _mm256_round_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    n[i] = _mm256_cvtps_epi32(_mm256_and_ps(rounded, ordered[i]));
  }
  // Packs interleave 128-bit lanes: words (0 1 | 2 3) then bytes (0 1 2 3 | ...) need one dword permute.
  const __m256i words01 = _mm256_packs_epi32(n[0], n[1]), words23 = _mm256_packs_epi32(n[2], n[3]);
  const __m256i bytes = _mm256_packs_epi16(words01, words23);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  return max / 127.0f;
}

float quantize_block(const float* v, int8_t* q) {
  static const bool avx2 = detect_isa() >= Isa::avx2;
  return avx2 ? quantize_block_avx2(v, q) : quantize_block_scalar(v, q);
}

}  // namespace

void mxfp4_q_portable(const uint8_t* blocks, const uint8_t* scales, const QGroup* x, int64_t stride,
                      int64_t num_blocks, int rows, float* out) {
  mxfp4_q_scalar(blocks, scales, x, stride, num_blocks, rows, out, 3);
}
void mxfp4_q8_portable(const uint8_t* blocks, const uint8_t* scales, const QGroup* x, int64_t stride,
                       int64_t num_blocks, int rows, float* out) {
  mxfp4_q_scalar(blocks, scales, x, stride, num_blocks, rows, out, 1);
}
void mxfp4_q_avx2_exact(const uint8_t* blocks, const uint8_t* scales, const QGroup* x, int64_t stride,
                        int64_t num_blocks, int rows, float* out) {
  mxfp4_q_avx2<3>(blocks, scales, x, stride, num_blocks, rows, out);
}
void mxfp4_q8_avx2(const uint8_t* blocks, const uint8_t* scales, const QGroup* x, int64_t stride, int64_t num_blocks,
                   int rows, float* out) {
  mxfp4_q_avx2<1>(blocks, scales, x, stride, num_blocks, rows, out);
}
void q8_dot_portable(const int8_t* w, const float* w_scales, const int8_t* x, const float* x_scales, int64_t x_stride,
                     int64_t k, int rows, float* out) {
  q8_scalar(w, w_scales, x, x_scales, x_stride, k, rows, out);
}
void q8_dot_avx2(const int8_t* w, const float* w_scales, const int8_t* x, const float* x_scales, int64_t x_stride,
                 int64_t k, int rows, float* out) {
  q8_avx2(w, w_scales, x, x_scales, x_stride, k, rows, out);
}

void prepare_mxfp4_q8(const float* x, int64_t k, QGroup* out) {
  std::memset(static_cast<void*>(out), 0, static_cast<size_t>(q_groups(k)) * sizeof(QGroup));
  for (int64_t b = 0; b < k / 32; b++) {
    QGroup& group = out[b / 4];
    const int slot = static_cast<int>(b % 4);
    int8_t q[32];
    const float scale = quantize_block(x + b * 32, q);
    int32_t sum = 0;
    for (int j = 0; j < 32; j++) {
      sum += q[j];
      (j % 2 == 0 ? group.hi_even : group.hi_odd)[slot * 16 + j / 2] = q[j];
    }
    for (int lane = 0; lane < 4; lane++) group.scale[slot * 4 + lane] = scale;
    group.corr[slot * 4] = -12 * sum;
    group.block_scale[slot] = scale;
    group.block_corr[slot] = -12 * sum;
  }
}

void quantize_q8_row(const float* x, int64_t k, int8_t* q, float* scales) {
  for (int64_t b = 0; b < k / 32; b++) scales[b] = quantize_block(x + b * 32, q + b * 32);
}

void quantize_q8_bf16_row(const uint16_t* w, int64_t k, int8_t* q, float* scales) {
  float v[32];
  for (int64_t b = 0; b < k / 32; b++) {
    for (int j = 0; j < 32; j++) v[j] = bf16_to_f32(w[b * 32 + j]);
    scales[b] = quantize_block(v, q + b * 32);
  }
}

}  // namespace gptoss::cpu
