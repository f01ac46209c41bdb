// moe_route_f32 and moe_mlp_f32_mxfp4w: top-k with softmax over the k; MXFP4 experts dequantized in registers.
#include "common.cuh"
namespace gptoss::cuda {
__global__ void moe_route_f32(int32_t* ids, float* weights, const float* logits, int64_t num_tokens, int64_t num_experts,
                              int32_t top_k) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= num_tokens) return;
  const float* z = logits + t * num_experts;
  int32_t* chosen = ids + t * top_k;
  for (int32_t j = 0; j < top_k; j++) {
    int32_t best = -1;
    for (int32_t e = 0; e < num_experts; e++) {
      bool taken = false;
      for (int32_t c = 0; c < j; c++) taken |= chosen[c] == e;
      if (!taken && (best < 0 || z[e] > z[best])) best = e;
    }
    chosen[j] = best;
  }
  const float m = z[chosen[0]];
  float sum = 0.f;
  for (int32_t j = 0; j < top_k; j++) sum += __expf(z[chosen[j]] - m);
  for (int32_t j = 0; j < top_k; j++) weights[t * top_k + j] = __expf(z[chosen[j]] - m) / sum;
}

/** gate_up for every (token, slot): one warp per output row; activation written for the down projection. */
__global__ void moe_gate_up_f32(float* act, const float* x, const int32_t* ids, const uint8_t* blocks,
                                const uint8_t* scales, const uint16_t* bias, int32_t top_k, int64_t hidden,
                                int64_t intermediate, float limit) {
  const int64_t slot = blockIdx.y;  // token * top_k + j
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;  // output i
  if (pair >= intermediate) return;
  const int64_t e = ids[slot], t = slot / top_k, hidden_blocks = hidden / 32;
  float h[2];
  for (int half = 0; half < 2; half++) {  // rows 2i (glu) and 2i + 1 (linear): interleaved
    const int64_t row = e * 2 * intermediate + 2 * pair + half;
    h[half] = mxfp4_row_dot(blocks + row * hidden_blocks * 16, scales + row * hidden_blocks, x + t * hidden, hidden_blocks) +
              bf16_to_f32(bias[row]);
  }
  if (threadIdx.x % 32 == 0) {
    const float g = fminf(h[0], limit), l = fmaxf(-limit, fminf(h[1], limit));
    act[slot * intermediate + pair] = g / (1.f + __expf(-1.702f * g)) * (l + 1.f);
  }
}

/** down for every (token, slot), weighted and summed into out (atomic across the k experts of a token). */
__global__ void moe_down_f32(float* out, const float* act, const int32_t* ids, const float* weights,
                             const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int32_t top_k,
                             int64_t hidden, int64_t intermediate) {
  const int64_t slot = blockIdx.y;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= hidden) return;
  const int64_t e = ids[slot], t = slot / top_k, inter_blocks = intermediate / 32;
  const int64_t row = e * hidden + r;
  const float y = mxfp4_row_dot(blocks + row * inter_blocks * 16, scales + row * inter_blocks, act + slot * intermediate,
                                inter_blocks) + bf16_to_f32(bias[row]);
  if (threadIdx.x % 32 == 0) atomicAdd(out + t * hidden + r, weights[slot] * y);
}
}  // namespace gptoss::cuda
