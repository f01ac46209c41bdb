// matmul_f32_bf16w: out[T, N] = x[T, K] · W[N, K]ᵀ + b. One warp per weight row; bf16 widened in registers.
// The vector kernel (K a multiple of 8) streams each row in 16-byte loads, eight in flight per lane, and dots every
// load with TT tokens at once; a token's sum runs in the same order whatever TT is, so results do not depend on
// how many tokens share the step (batch invariance). The scalar kernel serves any K.
#include "common.cuh"
namespace gptoss::cuda {

template <int TT>
__global__ void __launch_bounds__(256) matmul_f32_bf16w_vec(float* out, const float* x, const uint16_t* weight,
                                                            const uint16_t* bias, int64_t n, int64_t k,
                                                            int64_t tokens) {
  constexpr int kUnroll = 8, kStep = 32 * 8;  // a warp covers 256 weights per load
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= n) return;
  const int lane = threadIdx.x % 32;
  const uint16_t* w = weight + row * k;
  const float b = bias ? bf16_to_f32(bias[row]) : 0.f;
  for (int64_t t0 = 0; t0 < tokens; t0 += TT) {
    float acc[TT];
#pragma unroll
    for (int t = 0; t < TT; t++) acc[t] = 0.f;
    for (int64_t base = lane * 8; base < k; base += kStep * kUnroll) {
      uint4 wv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; u++) {
        const int64_t i = base + u * kStep;
        wv[u] = i < k ? load_stream(w + i) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; u++) {
        const int64_t i = base + u * kStep;
        if (i >= k) break;
#pragma unroll
        for (int t = 0; t < TT; t++) {
          if (t0 + t < tokens) acc[t] += dot8_bf16(wv[u], x + (t0 + t) * k + i);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < TT; t++) {
      const float s = warp_sum(acc[t]);
      if (lane == 0 && t0 + t < tokens) out[(t0 + t) * n + row] = s + b;
    }
  }
}

using MatmulKernel = void (*)(float*, const float*, const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t);

/** The vector kernel for a step of `tokens` tokens: TT = 1, 2, 4 or 8 tokens per pass over each row. */
MatmulKernel matmul_vec_kernel(int64_t tokens) {
  if (tokens == 1) return matmul_f32_bf16w_vec<1>;
  if (tokens == 2) return matmul_f32_bf16w_vec<2>;
  if (tokens <= 4) return matmul_f32_bf16w_vec<4>;
  return matmul_f32_bf16w_vec<8>;
}

/** Any K: grid (rows / 8, tokens), one warp per (row, token). */
__global__ void matmul_f32_bf16w(float* out, const float* x, const uint16_t* weight, const uint16_t* bias, int64_t n,
                                 int64_t k) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int64_t t = blockIdx.y;
  if (row >= n) return;
  const uint16_t* w = weight + row * k;
  const float* xt = x + t * k;
  float acc = 0.f;
  for (int64_t i = threadIdx.x % 32; i < k; i += 32) acc += bf16_to_f32(w[i]) * xt[i];
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) out[t * n + row] = acc + (bias ? bf16_to_f32(bias[row]) : 0.f);
}
}  // namespace gptoss::cuda
