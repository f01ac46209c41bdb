// attention_f32: store the step's K/V into the paged pool (kv_store_f32), then one warp per (token, head): online
// softmax with the head's learned sink over the visible keys (the sliding window on sliding layers). The segments
// and block tables come from the step's descriptor (gptoss_cuda.cu copies it to the device once per step).
#include "common.cuh"
namespace gptoss::cuda {

__global__ void kv_store_f32(float* keys, float* values, const float* k, const float* v, const int32_t* desc,
                             int32_t block_size, int64_t kv_width, bool sliding) {
  const Segment s = reinterpret_cast<const Segment*>(desc)[blockIdx.y];
  const int32_t i = blockIdx.x;
  if (i >= s.num_tokens) return;
  const int64_t p = int64_t{s.start_position} + i;
  const int32_t* table = desc + (sliding ? s.sliding_at : s.full_at);
  const int64_t dst = (static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size) * kv_width;
  const int64_t src = static_cast<int64_t>(s.row_offset + i) * kv_width;
  for (int64_t d = threadIdx.x; d < kv_width; d += blockDim.x) {
    keys[dst + d] = k[src + d];
    values[dst + d] = v[src + d];
  }
}

/** Grid (tokens, heads, segments), 32 threads. head_dim ≤ 256 (checked by the caller): lane holds dims lane + 32·j. */
__global__ void attention_f32(float* out, const float* q, const float* keys, const float* values, const uint16_t* sinks,
                              const int32_t* desc, int32_t block_size, int32_t num_heads, int32_t num_kv_heads,
                              int32_t head_dim, int32_t window) {
  constexpr int kSlots = 256 / 32;
  const Segment s = reinterpret_cast<const Segment*>(desc)[blockIdx.z];
  const int32_t i = blockIdx.x, h = blockIdx.y;
  if (i >= s.num_tokens) return;
  const int lane = threadIdx.x % 32;
  const int64_t kv_width = static_cast<int64_t>(num_kv_heads) * head_dim;
  const int64_t q_width = static_cast<int64_t>(num_heads) * head_dim;
  const int64_t p = int64_t{s.start_position} + i;
  const int64_t first = window > 0 ? max(int64_t{0}, p - window + 1) : 0;
  const int32_t* table = desc + (window > 0 ? s.sliding_at : s.full_at);
  const float* qh = q + static_cast<int64_t>(s.row_offset + i) * q_width + static_cast<int64_t>(h) * head_dim;
  const int64_t kv_offset = static_cast<int64_t>(h / (num_heads / num_kv_heads)) * head_dim;
  const float scale = 1.f / sqrtf(static_cast<float>(head_dim));
  // Online softmax: the sink contributes e^(sink − m) to the denominator and nothing to the output.
  float m = bf16_to_f32(sinks[h]), l = 1.f;
  float acc[kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; j++) acc[j] = 0.f;
  for (int64_t base = first; base <= p; base += 32) {
    const int64_t j = base + lane;  // lane j scores key j; then every lane adds every key's value to its dims
    float score = -INFINITY;
    int64_t row = 0;
    if (j <= p) {
      row = (static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size) * kv_width + kv_offset;
      float dot = 0.f;
      for (int d = 0; d < head_dim; d++) dot = fmaf(qh[d], keys[row + d], dot);
      score = dot * scale;
    }
    float chunk_max = score;
    for (int o = 16; o > 0; o >>= 1) chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, o));
    const float new_m = fmaxf(m, chunk_max);
    const float correction = expf(m - new_m);
    const float weight = j <= p ? expf(score - new_m) : 0.f;
    l = l * correction + warp_sum(weight);
#pragma unroll
    for (int d = 0; d < kSlots; d++) acc[d] *= correction;
    const int count = static_cast<int>(min(int64_t{32}, p - base + 1));
    for (int src = 0; src < count; src++) {
      const float w = __shfl_sync(0xffffffffu, weight, src);
      const int64_t r = __shfl_sync(0xffffffffu, row, src);
#pragma unroll
      for (int slot = 0; slot < kSlots; slot++) {
        const int d = lane + 32 * slot;
        if (d < head_dim) acc[slot] = fmaf(w, values[r + d], acc[slot]);
      }
    }
    m = new_m;
  }
  float* o = out + static_cast<int64_t>(s.row_offset + i) * q_width + static_cast<int64_t>(h) * head_dim;
#pragma unroll
  for (int slot = 0; slot < kSlots; slot++) {
    const int d = lane + 32 * slot;
    if (d < head_dim) o[d] = acc[slot] / l;
  }
}
}  // namespace gptoss::cuda
