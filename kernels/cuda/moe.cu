// The MoE MLP on MXFP4 experts, grouped by expert so each weight row is read once per step whatever the batch:
//   moe_route_f32    top-k of the router logits (ties: lowest index), softmax over the k
//   moe_plan         which experts the step uses and, per expert, its (token, slot) list
//   moe_gate_up_f32  per used expert, one warp per output pair: rows 2i (glu) and 2i + 1 (linear), SwiGLU
//   moe_down_f32     per used expert, one warp per hidden row: y[slot, r]
//   moe_combine_f32  out[t, r] = Σ_j w[t, j] · y[t·k + j, r] in slot order (deterministic: no atomics)
// A slot's sums run in the same order whatever else shares its expert (batch invariance).
#include "common.cuh"
namespace gptoss::cuda {

__global__ void moe_route_f32(int32_t* ids, float* weights, const float* logits, int64_t num_tokens,
                              int64_t num_experts, int32_t top_k) {
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
  for (int32_t j = 0; j < top_k; j++) sum += expf(z[chosen[j]] - m);
  for (int32_t j = 0; j < top_k; j++) weights[t * top_k + j] = expf(z[chosen[j]] - m) / sum;
}

/**
 * One block. plan = [num_active, active[E], offsets[E + 1], slots grouped by active expert]; an id outside
 * [0, E) reports kExpertIdOutOfRange and its slot is left out (its output is then zero). Shared: 3·E ints.
 */
__global__ void moe_plan(int32_t* plan, const int32_t* ids, int64_t slots, int32_t num_experts, int32_t* error) {
  extern __shared__ int32_t shared[];
  int32_t* count = shared;
  int32_t* cursor = shared + num_experts;
  const int32_t E = num_experts;
  for (int32_t e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int64_t s = threadIdx.x; s < slots; s += blockDim.x) {
    const int32_t e = ids[s];
    if (e < 0 || e >= E) report(error, kExpertIdOutOfRange);
    else atomicAdd(&count[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t n = 0, offset = 0;
    for (int32_t e = 0; e < E; e++) {
      if (count[e] == 0) continue;
      plan[1 + n] = e;
      plan[1 + E + n] = offset;
      cursor[e] = offset;
      offset += count[e];
      n++;
    }
    plan[0] = n;
    plan[1 + E + n] = offset;
  }
  __syncthreads();
  int32_t* lists = plan + 2 + 2 * E;
  for (int64_t s = threadIdx.x; s < slots; s += blockDim.x) {
    const int32_t e = ids[s];
    if (e >= 0 && e < E) lists[atomicAdd(&cursor[e], 1)] = static_cast<int32_t>(s);
  }
}

namespace {
constexpr int kTile = 4;  // slots dotted with each decoded weight block

/** The 32 weights of one MXFP4 block, decoded through the shared table (unscaled). */
__device__ __forceinline__ void decode_block(uint4 packed, const float* lut, float* w) {
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
  for (int q = 0; q < 4; q++) {
#pragma unroll
    for (int b = 0; b < 4; b++) {
      const uint32_t byte = (words[q] >> (8 * b)) & 0xffu;
      w[8 * q + 2 * b] = lut[byte & 15u];
      w[8 * q + 2 * b + 1] = lut[byte >> 4];
    }
  }
}

__device__ __forceinline__ float dot32(const float* w, const float* x) {
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < 32; j += 4) {
    const float4 v = *reinterpret_cast<const float4*>(x + j);
    s = fmaf(w[j], v.x, s);
    s = fmaf(w[j + 1], v.y, s);
    s = fmaf(w[j + 2], v.z, s);
    s = fmaf(w[j + 3], v.w, s);
  }
  return s;
}

__device__ __forceinline__ void fill_lut(float* lut) {
  if (threadIdx.x < 16) lut[threadIdx.x] = fp4_value(static_cast<int>(threadIdx.x));
  __syncthreads();
}
}  // namespace

/** Grid (⌈I / 8⌉, min(E, slots)), 256 threads: warp = output pair i of active expert blockIdx.y. */
__global__ void __launch_bounds__(256) moe_gate_up_f32(float* act, const float* x, const int32_t* plan,
                                                       const uint8_t* blocks, const uint8_t* scales,
                                                       const uint16_t* bias, int32_t num_experts, int32_t top_k,
                                                       int64_t hidden, int64_t intermediate, float limit) {
  __shared__ float lut[16];
  fill_lut(lut);
  const int32_t a = blockIdx.y;
  if (a >= plan[0]) return;
  const int32_t E = num_experts, e = plan[1 + a], begin = plan[1 + E + a], end = plan[2 + E + a];
  const int32_t* lists = plan + 2 + 2 * E;
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (pair >= intermediate) return;
  const int lane = threadIdx.x % 32;
  const int64_t hb = hidden / 32, row0 = static_cast<int64_t>(e) * 2 * intermediate + 2 * pair;
  const uint8_t* b0 = blocks + row0 * hb * 16;
  const uint8_t* b1 = b0 + hb * 16;
  const uint8_t* s0 = scales + row0 * hb;
  const uint8_t* s1 = s0 + hb;
  const float bias0 = bf16_to_f32(bias[row0]), bias1 = bf16_to_f32(bias[row0 + 1]);
  for (int32_t c = begin; c < end; c += kTile) {
    float acc0[kTile], acc1[kTile];
    const float* xt[kTile];
#pragma unroll
    for (int t = 0; t < kTile; t++) {
      acc0[t] = acc1[t] = 0.f;
      xt[t] = x + static_cast<int64_t>(lists[min(c + t, end - 1)] / top_k) * hidden;
    }
    for (int64_t g = lane; g < hb; g += 32) {
      float w0[32], w1[32];
      decode_block(load_stream(b0 + g * 16), lut, w0);
      decode_block(load_stream(b1 + g * 16), lut, w1);
      const float sc0 = e8m0(s0[g]), sc1 = e8m0(s1[g]);
#pragma unroll
      for (int t = 0; t < kTile; t++) {
        if (c + t < end) {
          acc0[t] = fmaf(dot32(w0, xt[t] + g * 32), sc0, acc0[t]);
          acc1[t] = fmaf(dot32(w1, xt[t] + g * 32), sc1, acc1[t]);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kTile; t++) {
      const float h0 = warp_sum(acc0[t]) + bias0, h1 = warp_sum(acc1[t]) + bias1;
      if (lane == 0 && c + t < end) {
        const float glu = fminf(h0, limit), lin = fmaxf(-limit, fminf(h1, limit));
        act[static_cast<int64_t>(lists[c + t]) * intermediate + pair] = glu / (1.f + expf(-1.702f * glu)) * (lin + 1.f);
      }
    }
  }
}

/** Grid (⌈H / 8⌉, min(E, slots)), 256 threads: warp = hidden row r of active expert blockIdx.y; y[slot, r]. */
__global__ void __launch_bounds__(256) moe_down_f32(float* y, const float* act, const int32_t* plan,
                                                    const uint8_t* blocks, const uint8_t* scales,
                                                    const uint16_t* bias, int32_t num_experts, int64_t hidden,
                                                    int64_t intermediate) {
  __shared__ float lut[16];
  fill_lut(lut);
  const int32_t a = blockIdx.y;
  if (a >= plan[0]) return;
  const int32_t E = num_experts, e = plan[1 + a], begin = plan[1 + E + a], end = plan[2 + E + a];
  const int32_t* lists = plan + 2 + 2 * E;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= hidden) return;
  const int lane = threadIdx.x % 32;
  const int64_t ib = intermediate / 32, row = static_cast<int64_t>(e) * hidden + r;
  const uint8_t* b = blocks + row * ib * 16;
  const uint8_t* s = scales + row * ib;
  const float bias_r = bf16_to_f32(bias[row]);
  for (int32_t c = begin; c < end; c += kTile) {
    float acc[kTile];
    const float* at[kTile];
#pragma unroll
    for (int t = 0; t < kTile; t++) {
      acc[t] = 0.f;
      at[t] = act + static_cast<int64_t>(lists[min(c + t, end - 1)]) * intermediate;
    }
    for (int64_t g = lane; g < ib; g += 32) {
      float w[32];
      decode_block(load_stream(b + g * 16), lut, w);
      const float sc = e8m0(s[g]);
#pragma unroll
      for (int t = 0; t < kTile; t++) {
        if (c + t < end) acc[t] = fmaf(dot32(w, at[t] + g * 32), sc, acc[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kTile; t++) {
      const float v = warp_sum(acc[t]) + bias_r;
      if (lane == 0 && c + t < end) y[static_cast<int64_t>(lists[c + t]) * hidden + r] = v;
    }
  }
}

/** out[t, r] = Σ_j w[t, j] · y[t·k + j, r]; y must be zeroed where a slot was left out (bad expert id). */
__global__ void moe_combine_f32(float* out, const float* y, const float* weights, int32_t top_k, int64_t num_tokens,
                                int64_t hidden) {
  const int64_t n = num_tokens * hidden;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / hidden, r = i % hidden;
    float sum = 0.f;
    for (int32_t j = 0; j < top_k; j++) sum = fmaf(weights[t * top_k + j], y[(t * top_k + j) * hidden + r], sum);
    out[i] = sum;
  }
}
}  // namespace gptoss::cuda
