// attention_f32: writes the step's K/V into the paged pool, then softmax attention with a learned sink per head
// (an extra logit in the denominator whose value is dropped) over the visible keys: all earlier positions, or the
// last `window` positions on sliding layers. GQA: query head h reads KV head h / (num_heads / num_kv_heads).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace gptoss::cpu {
namespace {

/**
 * One (token, head) task with AVX-512, head_dim a multiple of 16 (≤ 256): q·k in f32 lanes, the softmax weights
 * 16 at a time with exp_avx512 (≤ 2 ulp), the weighted sum of values in f32. The scalar path below sums in f64; the
 * two differ by f32 rounding (relative ~1e-6 over a few thousand keys), well inside the suite's 1e-4.
 */
template <typename KeyRow>
__attribute__((target("avx512f"))) void attend_avx512(const float* qh, const float* keys, const float* values,
                                                      KeyRow row_of, int64_t first, int64_t last, float sink,
                                                      float scale, int32_t head_dim, float* scores, float* o) {
  const int vectors = head_dim / 16;
  __m512 qv[16];
  for (int v = 0; v < vectors; v++) qv[v] = _mm512_loadu_ps(qh + 16 * v);
  float max = sink;
  for (int64_t j = first; j <= last; j++) {
    const float* kj = keys + row_of(j);
    __m512 acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kj));
    for (int v = 1; v < vectors; v++) acc = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(kj + 16 * v), acc);
    const float score = _mm512_reduce_add_ps(acc) * scale;
    scores[j] = score;
    max = std::max(max, score);
  }
  // Weights e^(s − max), 16 at a time (the tail masked), and their sum.
  __m512 sum = _mm512_setzero_ps();
  const __m512 maxv = _mm512_set1_ps(max);
  for (int64_t j = first; j <= last; j += 16) {
    const __mmask16 live = static_cast<__mmask16>(last - j + 1 >= 16 ? 0xffff : (1u << (last - j + 1)) - 1);
    const __m512 w = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, scores + j), maxv));
    _mm512_mask_storeu_ps(scores + j, live, w);
    sum = _mm512_mask_add_ps(sum, live, sum, w);
  }
  const float denominator = _mm512_reduce_add_ps(sum) + std::exp(sink - max);
  __m512 out[16];
  for (int v = 0; v < vectors; v++) out[v] = _mm512_setzero_ps();
  for (int64_t j = first; j <= last; j++) {
    const float* vj = values + row_of(j);
    const __m512 w = _mm512_set1_ps(scores[j]);
    for (int v = 0; v < vectors; v++) out[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vj + 16 * v), out[v]);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / denominator);
  for (int v = 0; v < vectors; v++) _mm512_storeu_ps(o + 16 * v, _mm512_mul_ps(out[v], inverse));
}

/** 8 lanes summed. */
__attribute__((target("avx2"))) inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/**
 * attend_avx512 with 8 lanes (AVX2 + FMA), head_dim a multiple of 8 (≤ 256). The scalar path (f64 sums, one libm
 * exp per key) made a 4,096-token context cost 18 ms per full-attention layer of the 20b shape at decode, ~30× the
 * time to read its keys and values.
 */
template <typename KeyRow>
__attribute__((target("avx2,fma"))) void attend_avx2(const float* qh, const float* keys, const float* values,
                                                     KeyRow row_of, int64_t first, int64_t last, float sink,
                                                     float scale, int32_t head_dim, float* scores, float* o) {
  const int vectors = head_dim / 8;
  __m256 qv[32];
  for (int v = 0; v < vectors; v++) qv[v] = _mm256_loadu_ps(qh + 8 * v);
  float max = sink;
  for (int64_t j = first; j <= last; j++) {
    const float* kj = keys + row_of(j);
    __m256 acc0 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kj)), acc1 = _mm256_setzero_ps();
    for (int v = 1; v < vectors; v++) {
      if (v & 1) acc1 = _mm256_fmadd_ps(qv[v], _mm256_loadu_ps(kj + 8 * v), acc1);
      else acc0 = _mm256_fmadd_ps(qv[v], _mm256_loadu_ps(kj + 8 * v), acc0);
    }
    const float score = sum8(_mm256_add_ps(acc0, acc1)) * scale;
    scores[j] = score;
    max = std::max(max, score);
  }
  // Weights e^(s − max), 8 at a time (the tail one by one), and their sum.
  __m256 sum = _mm256_setzero_ps();
  const __m256 maxv = _mm256_set1_ps(max);
  int64_t j = first;
  for (; j + 8 <= last + 1; j += 8) {
    const __m256 w = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(scores + j), maxv));
    _mm256_storeu_ps(scores + j, w);
    sum = _mm256_add_ps(sum, w);
  }
  float tail = 0;
  for (; j <= last; j++) tail += scores[j] = std::exp(scores[j] - max);
  const float denominator = sum8(sum) + tail + std::exp(sink - max);
  __m256 out[32];
  for (int v = 0; v < vectors; v++) out[v] = _mm256_setzero_ps();
  for (int64_t i = first; i <= last; i++) {
    const float* vi = values + row_of(i);
    const __m256 w = _mm256_set1_ps(scores[i]);
    for (int v = 0; v < vectors; v++) out[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vi + 8 * v), out[v]);
  }
  const __m256 inverse = _mm256_set1_ps(1.0f / denominator);
  for (int v = 0; v < vectors; v++) _mm256_storeu_ps(o + 8 * v, _mm256_mul_ps(out[v], inverse));
}

}  // namespace

void attention_f32(float* out, const float* q, const float* k, const float* v, const uint16_t* sinks,
                   const KvLayer& layer, int32_t block_size, const Segment* segments, int32_t num_segments,
                   int32_t num_heads, int32_t num_kv_heads, int32_t head_dim) {
  const int64_t kv_width = static_cast<int64_t>(num_kv_heads) * head_dim;
  const int64_t q_width = static_cast<int64_t>(num_heads) * head_dim;
  const int32_t group = num_heads / num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  auto row_of = [&](const Segment& s, int64_t position) -> int64_t {
    const int32_t* table = layer.window > 0 ? s.sliding_blocks : s.full_blocks;
    return (static_cast<int64_t>(table[position / block_size]) * block_size + position % block_size) * kv_width;
  };
  for (int32_t si = 0; si < num_segments; si++) {
    const Segment& s = segments[si];
    for (int32_t i = 0; i < s.num_tokens; i++) {
      const int64_t dst = row_of(s, s.start_position + i);
      const int64_t src = static_cast<int64_t>(s.row_offset + i) * kv_width;
      std::copy(k + src, k + src + kv_width, layer.keys + dst);
      std::copy(v + src, v + src + kv_width, layer.values + dst);
    }
  }
  static const Isa isa = detect_isa();
  const bool wide = isa >= Isa::avx512 && head_dim % 16 == 0 && head_dim <= 256;
  const bool narrow = isa == Isa::avx2 && head_dim % 8 == 0 && head_dim <= 256;
  for (int32_t si = 0; si < num_segments; si++) {
    const Segment& s = segments[si];
    const int64_t tasks = static_cast<int64_t>(s.num_tokens) * num_heads;
#pragma omp parallel
    {
      std::vector<float> scores(static_cast<size_t>(s.start_position + s.num_tokens));
      std::vector<double> acc(static_cast<size_t>(head_dim));
#pragma omp for schedule(dynamic, 4)
      for (int64_t task = 0; task < tasks; task++) {
        const int32_t i = static_cast<int32_t>(task / num_heads), h = static_cast<int32_t>(task % num_heads);
        const int64_t p = s.start_position + i;
        const int64_t first = layer.window > 0 ? std::max<int64_t>(0, p - layer.window + 1) : 0;
        const float* qh = q + static_cast<int64_t>(s.row_offset + i) * q_width + static_cast<int64_t>(h) * head_dim;
        const int64_t kv_offset = static_cast<int64_t>(h / group) * head_dim;
        const float sink = bf16_to_f32(sinks[h]);
        float* o = out + static_cast<int64_t>(s.row_offset + i) * q_width + static_cast<int64_t>(h) * head_dim;
        if (wide) {
          attend_avx512(qh, layer.keys, layer.values, [&](int64_t j) { return row_of(s, j) + kv_offset; }, first, p,
                        sink, scale, head_dim, scores.data(), o);
          continue;
        }
        if (narrow) {
          attend_avx2(qh, layer.keys, layer.values, [&](int64_t j) { return row_of(s, j) + kv_offset; }, first, p, sink,
                      scale, head_dim, scores.data(), o);
          continue;
        }
        float max = sink;
        for (int64_t j = first; j <= p; j++) {
          const float* kj = layer.keys + row_of(s, j) + kv_offset;
          float dot = 0;
          for (int32_t d = 0; d < head_dim; d++) dot += qh[d] * kj[d];
          scores[j] = dot * scale;
          max = std::max(max, scores[j]);
        }
        double denominator = std::exp(static_cast<double>(sink) - max);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = first; j <= p; j++) {
          const double weight = std::exp(static_cast<double>(scores[j]) - max);
          denominator += weight;
          const float* vj = layer.values + row_of(s, j) + kv_offset;
          for (int32_t d = 0; d < head_dim; d++) acc[d] += weight * vj[d];
        }
        for (int32_t d = 0; d < head_dim; d++) o[d] = static_cast<float>(acc[d] / denominator);
      }
    }
  }
}

}  // namespace gptoss::cpu
