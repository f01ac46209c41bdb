// matmul_f32_bf16w: out[T, N] = x[T, K] · W[N, K]ᵀ + b. One warp per weight row and token; bf16 widened in registers.
#include "common.cuh"
namespace gptoss::cuda {
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
