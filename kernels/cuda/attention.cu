// attention_f32: store the step's K/V into the paged pool, then one block per (token, head): softmax with a learned
// sink over the visible keys (sliding window on sliding layers), scores in shared memory chunks.
#include "common.cuh"
namespace gptoss::cuda {
__global__ void kv_store_f32(float* keys, float* values, const float* k, const float* v, const Segment* segments,
                             int32_t num_segments, int32_t block_size, int64_t kv_width, bool sliding) {
  const Segment s = segments[blockIdx.y];
  const int32_t i = blockIdx.x;
  if (i >= s.num_tokens) return;
  const int64_t p = s.start_position + i;
  const int32_t* table = sliding ? s.sliding_blocks : s.full_blocks;
  const int64_t dst = (static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size) * kv_width;
  const int64_t src = static_cast<int64_t>(s.row_offset + i) * kv_width;
  for (int64_t d = threadIdx.x; d < kv_width; d += blockDim.x) {
    keys[dst + d] = k[src + d];
    values[dst + d] = v[src + d];
  }
}

__global__ void attention_f32(float* out, const float* q, const float* keys, const float* values, const uint16_t* sinks,
                              const Segment* segments, int32_t block_size, int32_t num_heads, int32_t num_kv_heads,
                              int32_t head_dim, int32_t window) {
  const Segment s = segments[blockIdx.z];
  const int32_t i = blockIdx.x, h = blockIdx.y;
  if (i >= s.num_tokens) return;
  const int64_t kv_width = static_cast<int64_t>(num_kv_heads) * head_dim;
  const int64_t q_width = static_cast<int64_t>(num_heads) * head_dim;
  const int64_t p = s.start_position + i;
  const int64_t first = window > 0 ? max(static_cast<int64_t>(0), p - window + 1) : 0;
  const int32_t* table = window > 0 ? s.sliding_blocks : s.full_blocks;
  const float* qh = q + static_cast<int64_t>(s.row_offset + i) * q_width + static_cast<int64_t>(h) * head_dim;
  const int64_t kv_offset = static_cast<int64_t>(h / (num_heads / num_kv_heads)) * head_dim;
  const float scale = rsqrtf(static_cast<float>(head_dim));
  const float sink = bf16_to_f32(sinks[h]);
  // Online softmax over keys, one warp: lane j takes keys first + j, first + j + 32, …
  float m = sink, l = 1.f;  // the sink contributes e^(sink − m) to the denominator and nothing to the output
  float acc[256 / 32];      // head_dim ≤ 256, split across lanes
  for (int d = 0; d < 256 / 32; d++) acc[d] = 0.f;
  const int lane = threadIdx.x % 32;
  for (int64_t base = first; base <= p; base += 32) {
    const int64_t j = base + lane;
    float score = -INFINITY;
    int64_t row = 0;
    if (j <= p) {
      row = (static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size) * kv_width + kv_offset;
      float dot = 0.f;
      for (int d = 0; d < head_dim; d++) dot += qh[d] * keys[row + d];
      score = dot * scale;
    }
    float chunk_max = score;
    for (int o = 16; o > 0; o >>= 1) chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, o));
    const float new_m = fmaxf(m, chunk_max);
    const float correction = __expf(m - new_m);
    const float weight = j <= p ? __expf(score - new_m) : 0.f;
    l = l * correction + warp_sum(weight);
    for (int d = 0; d < head_dim / 32 + (head_dim % 32 ? 1 : 0); d++) acc[d] *= correction;
    for (int src = 0; src < 32; src++) {
      const float w = __shfl_sync(0xffffffffu, weight, src);
      const int64_t r = __shfl_sync(0xffffffffu, row, src);
      if (w == 0.f) continue;
      for (int d = lane, slot = 0; d < head_dim; d += 32, slot++) acc[slot] += w * values[r + d];
    }
    m = new_m;
  }
  float* o = out + static_cast<int64_t>(s.row_offset + i) * q_width + static_cast<int64_t>(h) * head_dim;
  for (int d = lane, slot = 0; d < head_dim; d += 32, slot++) o[d] = acc[slot] / l;
}
}  // namespace gptoss::cuda
