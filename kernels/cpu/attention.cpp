// attention_f32: writes the step's K/V into the paged pool, then softmax attention with a learned sink per head
// (an extra logit in the denominator whose value is dropped) over the visible keys: all earlier positions, or the
// last `window` positions on sliding layers. GQA: query head h reads KV head h / (num_heads / num_kv_heads).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace gptoss::cpu {

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
        float* o = out + static_cast<int64_t>(s.row_offset + i) * q_width + static_cast<int64_t>(h) * head_dim;
        for (int32_t d = 0; d < head_dim; d++) o[d] = static_cast<float>(acc[d] / denominator);
      }
    }
  }
}

}  // namespace gptoss::cpu
