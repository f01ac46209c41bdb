// Vector dot products: the hot loops of matmul (bf16 rows) and the MoE (MXFP4 rows), with runtime dispatch
// between AVX-512, AVX2+FMA and scalar code.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>

#include "kernels.h"

#include <algorithm>
#include <mutex>
#include <string>

namespace gptoss::cpu {
namespace {

// FP4 E2M1 values times 2 (so they are integers), by nibble; the ½ is folded into the block scale.
alignas(16) const int8_t kFp4Twice[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

struct ScaleTable {
  float half[256];  // 2^(s − 127) / 2: exact in f32 (s = 0 gives a subnormal, still exact)
  ScaleTable() {
    for (int s = 0; s < 256; s++) half[s] = std::ldexp(0.5f, s - 127);
  }
};
const ScaleTable kScales;

void bf16_scalar(const uint16_t* w, const float* x, int64_t stride, int64_t k, int rows, float* out) {
  for (int r = 0; r < rows; r++) {
    float acc = 0;
    for (int64_t i = 0; i < k; i++) acc += bf16_to_f32(w[i]) * x[r * stride + i];
    out[r] = acc;
  }
}

void mxfp4_scalar(const uint8_t* blocks, const uint8_t* scales, const float* x, int64_t stride, int64_t num_blocks,
                  int rows, float* out) {
  for (int r = 0; r < rows; r++) {
    float acc = 0;
    for (int64_t g = 0; g < num_blocks; g++) {
      const float scale = kScales.half[scales[g]];
      const float* xg = x + r * stride + g * 32;  // split layout: evens [0, 16), odds [16, 32)
      float block = 0;
      for (int j = 0; j < 16; j++) {
        const uint8_t byte = blocks[g * 16 + j];
        block += kFp4Twice[byte & 15] * xg[j] + kFp4Twice[byte >> 4] * xg[16 + j];
      }
      acc += block * scale;
    }
    out[r] = acc;
  }
}

/**
 * C independent accumulators per row (C·R FMA chains in flight): one chain per row waits 4 cycles per 8 weights on
 * the FMA latency, which capped the batch-1 GEMV at ~12 GB/s per core.
 */
template <int R>
__attribute__((target("avx2,fma"))) void bf16_avx2_rows(const uint16_t* w, const float* x, int64_t stride, int64_t k,
                                                         float* out) {
  constexpr int C = R == 1 ? 4 : 2;
  __m256 acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 * C <= k; i += 8 * C) {
    prefetch_weights(w + i);
    for (int c = 0; c < C; c++) {
      const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i + 8 * c)));
      const __m256 wv = _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
      for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * stride + i + 8 * c), acc[r][c]);
    }
  }
  for (; i + 8 <= k; i += 8) {
    const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    const __m256 wv = _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
    for (int r = 0; r < R; r++) acc[r][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * stride + i), acc[r][0]);
  }
  for (int r = 0; r < R; r++) {
    for (int c = 1; c < C; c++) acc[r][0] = _mm256_add_ps(acc[r][0], acc[r][c]);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r][0]), _mm256_extractf128_ps(acc[r][0], 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    float total = _mm_cvtss_f32(s);
    for (int64_t j = i; j < k; j++) total += bf16_to_f32(w[j]) * x[r * stride + j];
    out[r] = total;
  }
}

__attribute__((target("avx2,fma"))) void bf16_avx2(const uint16_t* w, const float* x, int64_t stride, int64_t k,
                                                   int rows, float* out) {
  switch (rows) {
    case 1: return bf16_avx2_rows<1>(w, x, stride, k, out);
    case 2: return bf16_avx2_rows<2>(w, x, stride, k, out);
    case 3: return bf16_avx2_rows<3>(w, x, stride, k, out);
    default: return bf16_avx2_rows<4>(w, x, stride, k, out);
  }
}

template <int R>
__attribute__((target("avx512f,avx512bw"))) void bf16_avx512_rows(const uint16_t* w, const float* x, int64_t stride,
                                                                    int64_t k, float* out) {
  __m512 acc[R], acc2[R];
  for (int r = 0; r < R; r++) acc[r] = acc2[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    prefetch_weights(w + i);
    const __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i)));
    const __m512i bits2 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i + 16)));
    const __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
    const __m512 wv2 = _mm512_castsi512_ps(_mm512_slli_epi32(bits2, 16));
    for (int r = 0; r < R; r++) {
      acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * stride + i), acc[r]);
      acc2[r] = _mm512_fmadd_ps(wv2, _mm512_loadu_ps(x + r * stride + i + 16), acc2[r]);
    }
  }
  for (; i + 16 <= k; i += 16) {
    const __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i)));
    const __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
    for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * stride + i), acc[r]);
  }
  for (int r = 0; r < R; r++) {
    float total = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], acc2[r]));
    for (int64_t j = i; j < k; j++) total += bf16_to_f32(w[j]) * x[r * stride + j];
    out[r] = total;
  }
}

__attribute__((target("avx512f,avx512bw"))) void bf16_avx512(const uint16_t* w, const float* x, int64_t stride,
                                                             int64_t k, int rows, float* out) {
  switch (rows) {
    case 1: return bf16_avx512_rows<1>(w, x, stride, k, out);
    case 2: return bf16_avx512_rows<2>(w, x, stride, k, out);
    case 3: return bf16_avx512_rows<3>(w, x, stride, k, out);
    default: return bf16_avx512_rows<4>(w, x, stride, k, out);
  }
}

// Decodes the 32 codes of one MXFP4 block into two vectors of 16 int8 values (2× FP4): the low nibbles (even
// elements) and the high nibbles (odd elements), matching the split activation layout.
__attribute__((target("avx2"))) inline void decode_block(const uint8_t* block, __m128i* evens, __m128i* odds) {
  const __m128i lut = _mm_load_si128(reinterpret_cast<const __m128i*>(kFp4Twice));
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block));
  *evens = _mm_shuffle_epi8(lut, _mm_and_si128(bytes, mask));
  *odds = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(bytes, 4), mask));
}

template <int R>
__attribute__((target("avx2,fma"))) void mxfp4_avx2_rows(const uint8_t* blocks, const uint8_t* scales,
                                                          const float* x, int64_t stride, int64_t num_blocks,
                                                          float* out) {
  __m256 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < num_blocks; g++) {
    if ((g & 3) == 0) prefetch_weights(blocks + g * 16);
    __m128i v0, v1;
    decode_block(blocks + g * 16, &v0, &v1);
    const __m256 scale = _mm256_set1_ps(kScales.half[scales[g]]);
    const __m256 w0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v0)), scale);
    const __m256 w1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v0, 8))), scale);
    const __m256 w2 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v1)), scale);
    const __m256 w3 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v1, 8))), scale);
    for (int r = 0; r < R; r++) {
      const float* xg = x + r * stride + g * 32;
      acc[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xg), acc[r]);
      acc[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xg + 8), acc[r]);
      acc[r] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xg + 16), acc[r]);
      acc[r] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xg + 24), acc[r]);
    }
  }
  for (int r = 0; r < R; r++) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    out[r] = _mm_cvtss_f32(s);
  }
}

__attribute__((target("avx2,fma"))) void mxfp4_avx2(const uint8_t* blocks, const uint8_t* scales, const float* x,
                                                    int64_t stride, int64_t num_blocks, int rows, float* out) {
  switch (rows) {
    case 1: return mxfp4_avx2_rows<1>(blocks, scales, x, stride, num_blocks, out);
    case 2: return mxfp4_avx2_rows<2>(blocks, scales, x, stride, num_blocks, out);
    case 3: return mxfp4_avx2_rows<3>(blocks, scales, x, stride, num_blocks, out);
    default: return mxfp4_avx2_rows<4>(blocks, scales, x, stride, num_blocks, out);
  }
}

// One block's 32 weights as two f32 vectors (evens, odds), scale folded into the 16-entry value table.
__attribute__((target("avx512f,avx512bw"))) inline void decode_block_avx512(const uint8_t* block, float scale_half,
                                                                              __m512 lut_twice, __m512* evens,
                                                                              __m512* odds) {
  const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
  const __m512 table = _mm512_mul_ps(lut_twice, _mm512_set1_ps(scale_half));
  *evens = _mm512_permutexvar_ps(_mm512_and_si512(codes, _mm512_set1_epi32(15)), table);
  *odds = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table);
}

template <int R>
__attribute__((target("avx512f,avx512bw"))) void mxfp4_avx512_rows(const uint8_t* blocks, const uint8_t* scales,
                                                                     const float* x, int64_t stride,
                                                                     int64_t num_blocks, float* out) {
  alignas(64) float twice[16];
  for (int i = 0; i < 16; i++) twice[i] = kFp4Twice[i];
  const __m512 lut = _mm512_load_ps(twice);
  // Two blocks per iteration into separate accumulators: the FMA chains overlap instead of waiting on each other.
  __m512 acc0[R], acc1[R];
  for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= num_blocks; g += 2) {
    if ((g & 3) == 0) prefetch_weights(blocks + g * 16);
    __m512 a0, a1, b0, b1;
    decode_block_avx512(blocks + g * 16, kScales.half[scales[g]], lut, &a0, &a1);
    decode_block_avx512(blocks + (g + 1) * 16, kScales.half[scales[g + 1]], lut, &b0, &b1);
    for (int r = 0; r < R; r++) {
      const float* xg = x + r * stride + g * 32;
      acc0[r] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(xg), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(xg + 16), acc1[r]);
      acc0[r] = _mm512_fmadd_ps(b0, _mm512_loadu_ps(xg + 32), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(b1, _mm512_loadu_ps(xg + 48), acc1[r]);
    }
  }
  for (; g < num_blocks; g++) {
    __m512 a0, a1;
    decode_block_avx512(blocks + g * 16, kScales.half[scales[g]], lut, &a0, &a1);
    for (int r = 0; r < R; r++) {
      const float* xg = x + r * stride + g * 32;
      acc0[r] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(xg), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(xg + 16), acc1[r]);
    }
  }
  for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
}

__attribute__((target("avx512f,avx512bw"))) void mxfp4_avx512(const uint8_t* blocks, const uint8_t* scales,
                                                              const float* x, int64_t stride, int64_t num_blocks,
                                                              int rows, float* out) {
  switch (rows) {
    case 1: return mxfp4_avx512_rows<1>(blocks, scales, x, stride, num_blocks, out);
    case 2: return mxfp4_avx512_rows<2>(blocks, scales, x, stride, num_blocks, out);
    case 3: return mxfp4_avx512_rows<3>(blocks, scales, x, stride, num_blocks, out);
    default: return mxfp4_avx512_rows<4>(blocks, scales, x, stride, num_blocks, out);
  }
}

// VNNI MXFP4 dot: per group of 4 blocks (64 code bytes), the codes become unsigned weights 2·FP4 + 12 by one byte
// shuffle per nibble half; three VPDPBUSD pairs (hi, mid, lo digits of the prepared activations) with shifts in
// between give Σ (w + 12)·q exactly; corr removes the +12; one convert and FMA apply 2^(e − 128) · scale_x.
alignas(64) const int8_t kFp4TwicePlus12[64] = {
    12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0, 12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
    12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0, 12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
// Spreads 4 scale bytes (one dword, broadcast) to the lanes of their blocks: lane i gets byte i / 4, zero-extended.
alignas(64) const int8_t kScaleSpread[64] = {
    0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1,
    2, -1, -1, -1, 2, -1, -1, -1, 2, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1};

template <int R, int D>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void mxfp4_q_rows(const uint8_t* blocks, const uint8_t* scales,
                                                                         const QGroup* x, int64_t stride,
                                                                         int64_t num_blocks, float* out) {
  const __m512i lut = _mm512_load_si512(kFp4TwicePlus12), spread = _mm512_load_si512(kScaleSpread);
  const __m512i low4 = _mm512_set1_epi8(0x0f), one = _mm512_set1_epi8(1);
  __m512 total[R];
  for (int r = 0; r < R; r++) total[r] = _mm512_setzero_ps();
  const int64_t groups = (num_blocks + 3) / 4;
  for (int64_t g = 0; g < groups; g++) {
    const int64_t left = num_blocks - g * 4;
    __m512i codes, scale_bytes;
    if (left >= 4) {
      prefetch_weights<D == 3 ? Fetch::l1 : Fetch::l2>(blocks + g * 64);
      codes = _mm512_loadu_si512(blocks + g * 64);
      int32_t four;
      std::memcpy(&four, scales + g * 4, 4);
      scale_bytes = _mm512_set1_epi32(four);
    } else {  // the row's last 1–3 blocks: read only what is there
      codes = _mm512_maskz_loadu_epi8(~0ull >> (64 - 16 * left), blocks + g * 64);
      uint32_t four = 0;
      for (int64_t q = 0; q < left; q++) four |= static_cast<uint32_t>(scales[g * 4 + q]) << (8 * q);
      scale_bytes = _mm512_set1_epi32(static_cast<int32_t>(four));
    }
    const __m512i even = _mm512_shuffle_epi8(lut, _mm512_and_si512(codes, low4));
    const __m512i odd = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(codes, 4), low4));
    // E8M0 e → 2^(e − 128) (the FP4 table is doubled): exponent field e − 1, saturating so e = 0 gives 0 (as DAZ
    // does to the f32 path's subnormal 2^−128).
    const __m512 w_scale = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_shuffle_epi8(_mm512_subs_epu8(scale_bytes, one), spread), 23));
    for (int r = 0; r < R; r++) {
      const QGroup& q = x[r * stride + g];
      __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), even, _mm512_load_si512(q.hi_even));
      acc = _mm512_dpbusd_epi32(acc, odd, _mm512_load_si512(q.hi_odd));
      if constexpr (D == 3) {  // D = 1: the q8 mode's 8-bit activations, hi only
        acc = _mm512_slli_epi32(acc, 7);
        acc = _mm512_dpbusd_epi32(acc, _mm512_load_si512(q.mid_even), even);
        acc = _mm512_dpbusd_epi32(acc, _mm512_load_si512(q.mid_odd), odd);
        acc = _mm512_slli_epi32(acc, 7);
        acc = _mm512_dpbusd_epi32(acc, _mm512_load_si512(q.lo_even), even);
        acc = _mm512_dpbusd_epi32(acc, _mm512_load_si512(q.lo_odd), odd);
      }
      acc = _mm512_add_epi32(acc, _mm512_load_si512(q.corr));
      total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(w_scale, _mm512_load_ps(q.scale)), total[r]);
    }
  }
  for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(total[r]);
}

template <int D>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void mxfp4_q_vnni(const uint8_t* blocks,
                                                                         const uint8_t* scales, const QGroup* x,
                                                                         int64_t stride, int64_t num_blocks, int rows,
                                                                         float* out) {
  switch (rows) {
    case 1: return mxfp4_q_rows<1, D>(blocks, scales, x, stride, num_blocks, out);
    case 2: return mxfp4_q_rows<2, D>(blocks, scales, x, stride, num_blocks, out);
    case 3: return mxfp4_q_rows<3, D>(blocks, scales, x, stride, num_blocks, out);
    default: return mxfp4_q_rows<4, D>(blocks, scales, x, stride, num_blocks, out);
  }
}

/** One MXFP4 row to f32 in the split layout (per block: 16 even elements, then 16 odd ones). */
__attribute__((target("avx512f,avx512bw"))) void dequantize_split_avx512(const uint8_t* blocks, const uint8_t* scales,
                                                                         int64_t num_blocks, float* out) {
  alignas(64) float twice[16];
  for (int i = 0; i < 16; i++) twice[i] = kFp4Twice[i];
  const __m512 lut = _mm512_load_ps(twice);
  for (int64_t g = 0; g < num_blocks; g++) {
    if ((g & 3) == 0) prefetch_weights(blocks + g * 16);
    __m512 evens, odds;
    decode_block_avx512(blocks + g * 16, kScales.half[scales[g]], lut, &evens, &odds);
    _mm512_storeu_ps(out + g * 32, evens);
    _mm512_storeu_ps(out + g * 32 + 16, odds);
  }
}

void dequantize_split_scalar(const uint8_t* blocks, const uint8_t* scales, int64_t num_blocks, float* out) {
  for (int64_t g = 0; g < num_blocks; g++) {
    const float scale = kScales.half[scales[g]];
    for (int j = 0; j < 16; j++) {
      const uint8_t byte = blocks[g * 16 + j];
      out[g * 32 + j] = kFp4Twice[byte & 15] * scale;
      out[g * 32 + 16 + j] = kFp4Twice[byte >> 4] * scale;
    }
  }
}

// 16 weights as f32: bf16 widened, or f32 as they are.
__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const uint16_t* w) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
__attribute__((target("avx512f"))) inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }

/** RB weight rows × TB activation rows in registers; see block_dot() in kernels.h. */
template <typename W, int RB, int TB>
__attribute__((target("avx512f,avx512bw"))) void block_avx512(const W* w, int64_t w_pitch, const float* x,
                                                               int64_t x_stride, int64_t k, const uint16_t* bias,
                                                               float* out, int64_t out_stride) {
  __m512 acc[RB][TB];
  for (int r = 0; r < RB; r++)
    for (int t = 0; t < TB; t++) acc[r][t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    if constexpr (std::is_same_v<W, uint16_t>) {  // bf16 rows stream from the mapping; f32 rows are scratch
      if (i % 32 == 0)
        for (int r = 0; r < RB; r++) prefetch_weights(w + r * w_pitch + i);
    }
    __m512 wv[RB];
    for (int r = 0; r < RB; r++) wv[r] = load16(w + r * w_pitch + i);
    for (int t = 0; t < TB; t++) {
      const __m512 xv = _mm512_loadu_ps(x + t * x_stride + i);
      for (int r = 0; r < RB; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < RB; r++) {
    const float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
    for (int t = 0; t < TB; t++) out[t * out_stride + r] = _mm512_reduce_add_ps(acc[r][t]) + b;
  }
}

template <typename W>
using BlockKernel = void (*)(const W*, int64_t, const float*, int64_t, int64_t, const uint16_t*, float*, int64_t);
template <typename W, int RB>
constexpr BlockKernel<W> kBlockRow[4] = {block_avx512<W, RB, 1>, block_avx512<W, RB, 2>, block_avx512<W, RB, 3>,
                                         block_avx512<W, RB, 4>};
template <typename W>
constexpr const BlockKernel<W>* kBlock[4] = {kBlockRow<W, 1>, kBlockRow<W, 2>, kBlockRow<W, 3>, kBlockRow<W, 4>};

// 8 weights as f32 (AVX2): bf16 widened, or f32 as they are.
__attribute__((target("avx2"))) inline __m256 load8(const uint16_t* w) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
__attribute__((target("avx2"))) inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }

/**
 * RB weight rows × TB activation rows with AVX2 (k a multiple of 8): the same blocking in 256-bit registers, at most
 * 4 × 2 accumulators so that weights, accumulators and one activation vector fit the 16 registers.
 */
template <typename W, int RB, int TB>
__attribute__((target("avx2,fma"))) void block_avx2(const W* w, int64_t w_pitch, const float* x, int64_t x_stride,
                                                    int64_t k, const uint16_t* bias, float* out, int64_t out_stride) {
  __m256 acc[RB][TB];
  for (int r = 0; r < RB; r++)
    for (int t = 0; t < TB; t++) acc[r][t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; i += 8) {
    if constexpr (std::is_same_v<W, uint16_t>) {
      if (i % 32 == 0)
        for (int r = 0; r < RB; r++) prefetch_weights(w + r * w_pitch + i);
    }
    __m256 wv[RB];
    for (int r = 0; r < RB; r++) wv[r] = load8(w + r * w_pitch + i);
    for (int t = 0; t < TB; t++) {
      const __m256 xv = _mm256_loadu_ps(x + t * x_stride + i);
      for (int r = 0; r < RB; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < RB; r++) {
    const float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
    for (int t = 0; t < TB; t++) {
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r][t]), _mm256_extractf128_ps(acc[r][t], 1));
      s = _mm_hadd_ps(s, s);
      s = _mm_hadd_ps(s, s);
      out[t * out_stride + r] = _mm_cvtss_f32(s) + b;
    }
  }
}

template <typename W, int RB>
constexpr BlockKernel<W> kBlockRowAvx2[2] = {block_avx2<W, RB, 1>, block_avx2<W, RB, 2>};
template <typename W>
constexpr const BlockKernel<W>* kBlockAvx2[4] = {kBlockRowAvx2<W, 1>, kBlockRowAvx2<W, 2>, kBlockRowAvx2<W, 3>,
                                                 kBlockRowAvx2<W, 4>};

template <typename W>
bool block_dot_any(const W* w, int rows, int64_t w_pitch, const float* x, int64_t x_stride, int tokens, int64_t k,
                   const uint16_t* bias, float* out, int64_t out_stride) {
  static const Isa isa = detect_isa();
  if (isa < Isa::avx2 || rows < 1 || rows > 4 || tokens < 1 || tokens > 4) return false;
  if (isa >= Isa::avx512) {
    if (k % 16 != 0) return false;
    kBlock<W>[rows - 1][tokens - 1](w, w_pitch, x, x_stride, k, bias, out, out_stride);
    return true;
  }
  if (k % 8 != 0) return false;
  for (int t = 0; t < tokens; t += 2) {  // tokens in pairs (see block_avx2)
    const int tb = std::min(2, tokens - t);
    kBlockAvx2<W>[rows - 1][tb - 1](w, w_pitch, x + t * x_stride, x_stride, k, bias, out + t * out_stride, out_stride);
  }
  return true;
}

void f32_scalar(const float* w, const float* x, int64_t stride, int64_t k, int rows, float* out) {
  for (int r = 0; r < rows; r++) {
    float acc = 0;
    for (int64_t i = 0; i < k; i++) acc += w[i] * x[r * stride + i];
    out[r] = acc;
  }
}

template <int R>
__attribute__((target("avx2,fma"))) void f32_avx2_rows(const float* w, const float* x, int64_t stride, int64_t k,
                                                        float* out) {
  __m256 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 wv = _mm256_loadu_ps(w + i);
    for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * stride + i), acc[r]);
  }
  for (int r = 0; r < R; r++) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    float total = _mm_cvtss_f32(s);
    for (int64_t j = i; j < k; j++) total += w[j] * x[r * stride + j];
    out[r] = total;
  }
}

__attribute__((target("avx2,fma"))) void f32_avx2(const float* w, const float* x, int64_t stride, int64_t k, int rows,
                                                  float* out) {
  switch (rows) {
    case 1: return f32_avx2_rows<1>(w, x, stride, k, out);
    case 2: return f32_avx2_rows<2>(w, x, stride, k, out);
    case 3: return f32_avx2_rows<3>(w, x, stride, k, out);
    default: return f32_avx2_rows<4>(w, x, stride, k, out);
  }
}

template <int R>
__attribute__((target("avx512f"))) void f32_avx512_rows(const float* w, const float* x, int64_t stride, int64_t k,
                                                        float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512 wv = _mm512_loadu_ps(w + i);
    for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * stride + i), acc[r]);
  }
  for (int r = 0; r < R; r++) {
    float total = _mm512_reduce_add_ps(acc[r]);
    for (int64_t j = i; j < k; j++) total += w[j] * x[r * stride + j];
    out[r] = total;
  }
}

__attribute__((target("avx512f"))) void f32_avx512(const float* w, const float* x, int64_t stride, int64_t k, int rows,
                                                   float* out) {
  switch (rows) {
    case 1: return f32_avx512_rows<1>(w, x, stride, k, out);
    case 2: return f32_avx512_rows<2>(w, x, stride, k, out);
    case 3: return f32_avx512_rows<3>(w, x, stride, k, out);
    default: return f32_avx512_rows<4>(w, x, stride, k, out);
  }
}

}  // namespace

void dequantize_mxfp4_split(const uint8_t* blocks, const uint8_t* scales, int64_t num_blocks, float* out) {
  static const bool avx512 = detect_isa() >= Isa::avx512;
  if (avx512) dequantize_split_avx512(blocks, scales, num_blocks, out);
  else dequantize_split_scalar(blocks, scales, num_blocks, out);
}

bool block_dot(const uint16_t* w, int rows, int64_t w_pitch, const float* x, int64_t x_stride, int tokens, int64_t k,
               const uint16_t* bias, float* out, int64_t out_stride) {
  return block_dot_any(w, rows, w_pitch, x, x_stride, tokens, k, bias, out, out_stride);
}

bool block_dot(const float* w, int rows, int64_t w_pitch, const float* x, int64_t x_stride, int tokens, int64_t k,
               const uint16_t* bias, float* out, int64_t out_stride) {
  return block_dot_any(w, rows, w_pitch, x, x_stride, tokens, k, bias, out, out_stride);
}

void prepare_mxfp4_q(const float* x, int64_t k, QGroup* out) {
  constexpr int32_t kMax = (1 << 21) - 1;  // hi = q >> 14 stays within int8
  const int64_t num_blocks = k / 32;
  std::memset(static_cast<void*>(out), 0, static_cast<size_t>(q_groups(k)) * sizeof(QGroup));
  for (int64_t b = 0; b < num_blocks; b++) {
    QGroup& group = out[b / 4];
    const int slot = static_cast<int>(b % 4);
    const float* xb = x + b * 32;
    float max = 0;
    for (int j = 0; j < 32; j++) max = std::max(max, std::fabs(xb[j]));
    // Not finite (inf/NaN) or zero: the block's q stay 0 and its scale carries the value (0, inf or NaN) into the
    // products, as the f32 path would.
    const bool usable = max > 0 && std::isfinite(max);
    const float inverse = usable ? static_cast<float>(kMax) / max : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < 32; j++) {
      const int32_t q = usable ? static_cast<int32_t>(std::nearbyint(std::clamp(xb[j] * inverse, -float(kMax), float(kMax)))) : 0;
      sum += q;
      const int p = slot * 16 + j / 2;
      const int8_t hi = static_cast<int8_t>(q >> 14);
      const uint8_t mid = static_cast<uint8_t>((q >> 7) & 127), lo = static_cast<uint8_t>(q & 127);
      if (j % 2 == 0) group.hi_even[p] = hi, group.mid_even[p] = mid, group.lo_even[p] = lo;
      else group.hi_odd[p] = hi, group.mid_odd[p] = mid, group.lo_odd[p] = lo;
    }
    const float scale = usable ? max / static_cast<float>(kMax) : max;
    for (int lane = 0; lane < 4; lane++) group.scale[slot * 4 + lane] = scale;
    group.corr[slot * 4] = -12 * sum;
    group.block_scale[slot] = scale;
    group.block_corr[slot] = -12 * sum;
  }
}

void split_for_mxfp4(const float* x, int64_t k, float* out) {
  for (int64_t g = 0; g < k / 32; g++) {
    for (int j = 0; j < 16; j++) {
      out[g * 32 + j] = x[g * 32 + 2 * j];
      out[g * 32 + 16 + j] = x[g * 32 + 2 * j + 1];
    }
  }
}

void widen_bf16_row(const uint16_t* w, int64_t k, float* out) {
  for (int64_t i = 0; i < k; i++) out[i] = bf16_to_f32(w[i]);
}

void dequantize_mxfp4_row(const uint8_t* blocks, const uint8_t* scales, int64_t num_blocks, float* out) {
  for (int64_t g = 0; g < num_blocks; g++) {
    const float scale = kScales.half[scales[g]];
    for (int j = 0; j < 16; j++) {
      const uint8_t byte = blocks[g * 16 + j];
      out[g * 32 + 2 * j] = kFp4Twice[byte & 15] * scale;
      out[g * 32 + 2 * j + 1] = kFp4Twice[byte >> 4] * scale;
    }
  }
}

namespace {

/** The widest path this CPU has. */
Isa widest_isa() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  const bool vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  if (vnni && amx_available()) return Isa::avx512amx;
  if (vnni) return Isa::avx512vnni;
  if (avx512) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
  return Isa::scalar;
}

std::mutex g_isa_mutex;
/** The cap asked for (avx512amx = none) and whether the path has been chosen. */
Isa g_isa_cap = Isa::avx512amx;
bool g_isa_fixed = false;

}  // namespace

bool request_isa(const char* name, const char** error) {
  Isa cap = Isa::avx512amx;
  const std::string n = name ? name : "";
  if (n == "scalar") cap = Isa::scalar;
  else if (n == "avx2") cap = Isa::avx2;
  else if (n == "avx512") cap = Isa::avx512;
  else if (n == "avx512-vnni") cap = Isa::avx512vnni;
  else if (n != "" && n != "avx512-amx" && n != "auto") {
    *error = "unknown CPU path (expected scalar, avx2, avx512, avx512-vnni, avx512-amx or auto)";
    return false;
  }
  std::lock_guard<std::mutex> lock(g_isa_mutex);
  if (g_isa_fixed && cap != g_isa_cap) {
    *error = "the CPU path is fixed for this process by its first context; start another process for another one";
    return false;
  }
  g_isa_cap = cap;
  return true;
}

Isa preview_isa() {
  std::lock_guard<std::mutex> lock(g_isa_mutex);
  return std::min(widest_isa(), g_isa_cap);
}

Isa detect_isa() {
  static const Isa isa = [] {
    std::lock_guard<std::mutex> lock(g_isa_mutex);
    g_isa_fixed = true;
    return std::min(widest_isa(), g_isa_cap);
  }();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512amx: return "avx512-amx";
    case Isa::avx512vnni: return "avx512-vnni";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

bool use_amx() {
  static const bool amx = detect_isa() == Isa::avx512amx;
  return amx;
}

const DotKernels& dot_kernels() {
  static const DotKernels kernels = [] {
    switch (detect_isa()) {
      case Isa::avx512amx:
      case Isa::avx512vnni:
        return DotKernels{bf16_avx512, mxfp4_avx512, f32_avx512, mxfp4_q_vnni<3>, mxfp4_q_vnni<1>, q8_dot_avx2};
      case Isa::avx512:
        return DotKernels{bf16_avx512, mxfp4_avx512, f32_avx512, mxfp4_q_avx2_exact, mxfp4_q8_avx2, q8_dot_avx2};
      case Isa::avx2:
        return DotKernels{bf16_avx2, mxfp4_avx2, f32_avx2, mxfp4_q_avx2_exact, mxfp4_q8_avx2, q8_dot_avx2};
      default:
        return DotKernels{bf16_scalar, mxfp4_scalar, f32_scalar, mxfp4_q_portable, mxfp4_q8_portable, q8_dot_portable};
    }
  }();
  return kernels;
}

}  // namespace gptoss::cpu
