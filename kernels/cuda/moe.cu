// The MoE MLP on MXFP4 experts, grouped by expert so each weight row is read once per step whatever the batch:
//   moe_route_f32    top-k of the router logits (ties: lowest index), softmax over the k
//   moe_plan         which experts the step uses and, per expert, its (token, slot) list
//   moe_pairs_f32    per used expert, one warp per two adjacent rows: gate_up rows 2i (glu) and 2i + 1 (linear)
//                    into SwiGLU, or two hidden rows of down: y[slot, r]
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
/**
 * 8 weights of an MXFP4 block (one 32-bit word: 8 nibbles, low nibble first), unscaled, without a table: an E2M1
 * nibble s·e1e0·m put where an f32 keeps its sign, exponent's low bits and mantissa's top bit reads as the FP4 value
 * × 2^-126 (e = 0 gives the subnormal 0.5 step); one exact multiply by 2^126 restores it.
 */
__device__ __forceinline__ void decode_word(uint32_t word, float* w) {
#pragma unroll
  for (int n = 0; n < 8; n++) {
    const uint32_t nibble = (word >> (4 * n)) & 15u;
    w[n] = __uint_as_float(((nibble & 8u) << 28) | ((nibble & 7u) << 22)) * 8.507059173023462e37f;
  }
}

__device__ __forceinline__ float dot8(const float* w, const float* x) {
  const float4 a = *reinterpret_cast<const float4*>(x), b = *reinterpret_cast<const float4*>(x + 4);
  float s = w[0] * a.x;
  s = fmaf(w[1], a.y, s);
  s = fmaf(w[2], a.z, s);
  s = fmaf(w[3], a.w, s);
  s = fmaf(w[4], b.x, s);
  s = fmaf(w[5], b.y, s);
  s = fmaf(w[6], b.z, s);
  return fmaf(w[7], b.w, s);
}

__device__ __forceinline__ uint32_t load_word_stream(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

constexpr int kWords = 24;  // 4-byte words each lane has in flight: a 20b row pair (720 words) in one pass
}  // namespace

/**
 * Two adjacent rows (2p, 2p + 1) of an active expert, one warp, dotted with every slot routed to it, TT slots at a
 * time. The pair is 2·K/32 contiguous MXFP4 blocks = 8·K/16 words; lane l takes words l, l + 32, … (all loads issued
 * before any use), so a warp reads 128 contiguous bytes of weights and, per token, 1 KB of contiguous activations
 * per step (coalesced). kGateUp: the rows are glu and linear, the output is SwiGLU (out [slots, rows/2]); else they
 * are two hidden rows of the down projection (out [slots, rows]). A slot's sum runs in the same order for any TT.
 */
template <int TT, bool kGateUp>
__global__ void __launch_bounds__(256, 2) moe_pairs_f32(float* out, const float* in, const int32_t* plan,
                                                     const uint8_t* blocks, const uint8_t* scales,
                                                     const uint16_t* bias, int32_t num_experts, int32_t top_k,
                                                     int64_t k, int64_t rows, float limit) {
  const int32_t a = blockIdx.y;
  if (a >= plan[0]) return;
  const int32_t E = num_experts, e = plan[1 + a], begin = plan[1 + E + a], end = plan[2 + E + a];
  const int32_t* lists = plan + 2 + 2 * E;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (2 * p >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t nb = k / 32, words = 8 * nb, row0 = static_cast<int64_t>(e) * rows + 2 * p;
  const uint32_t* pair_words = reinterpret_cast<const uint32_t*>(blocks + row0 * nb * 16);
  const uint8_t* pair_scales = scales + row0 * nb;
  const float bias0 = bf16_to_f32(bias[row0]), bias1 = bf16_to_f32(bias[row0 + 1]);
  const int64_t width = kGateUp ? rows / 2 : rows;
  for (int32_t c = begin; c < end; c += TT) {
    float acc0[TT], acc1[TT];
    const float* xt[TT];
#pragma unroll
    for (int t = 0; t < TT; t++) {
      acc0[t] = acc1[t] = 0.f;
      const int32_t slot = lists[min(c + t, end - 1)];
      xt[t] = in + static_cast<int64_t>(kGateUp ? slot / top_k : slot) * k;
    }
    for (int64_t base = lane; base < words; base += 32 * kWords) {
      uint32_t packed[kWords];
#pragma unroll
      for (int j = 0; j < kWords; j++) {
        const int64_t w = base + 32 * j;
        packed[j] = w < words ? load_word_stream(pair_words + w) : 0u;
      }
#pragma unroll
      for (int j = 0; j < kWords; j++) {
        const int64_t w = base + 32 * j, b = w / 4;
        if (w >= words) break;
        const bool second = b >= nb;
        const int64_t at = (second ? b - nb : b) * 32 + (w % 4) * 8;  // first activation of these 8 weights
        const float scale = e8m0(pair_scales[b]);
        float wv[8];
        decode_word(packed[j], wv);
#pragma unroll
        for (int t = 0; t < TT; t++) {
          const float v = dot8(wv, xt[t] + at) * scale;
          if (second) acc1[t] += v;
          else acc0[t] += v;
        }
      }
    }
#pragma unroll
    for (int t = 0; t < TT; t++) {
      const float h0 = warp_sum(acc0[t]) + bias0, h1 = warp_sum(acc1[t]) + bias1;
      if (lane != 0 || c + t >= end) continue;
      const int64_t slot = lists[c + t];
      if (kGateUp) {
        const float glu = fminf(h0, limit), lin = fmaxf(-limit, fminf(h1, limit));
        out[slot * width + p] = glu / (1.f + expf(-1.702f * glu)) * (lin + 1.f);
      } else {
        out[slot * width + 2 * p] = h0;
        out[slot * width + 2 * p + 1] = h1;
      }
    }
  }
}

using MoePairsKernel = void (*)(float*, const float*, const int32_t*, const uint8_t*, const uint8_t*, const uint16_t*,
                                int32_t, int32_t, int64_t, int64_t, float);

/** The pair kernel for a step of `slots` (token, expert) slots: one slot per pass when few, else four. */
MoePairsKernel moe_pairs_kernel(bool gate_up, int64_t slots) {
  if (slots <= 8) return gate_up ? moe_pairs_f32<1, true> : moe_pairs_f32<1, false>;
  return gate_up ? moe_pairs_f32<4, true> : moe_pairs_f32<4, false>;
}

/** out[t, r] = Σ_j w[t, j] · y[t·k + j, r] (a slot left out for a bad expert id fails the flush anyway). */
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
