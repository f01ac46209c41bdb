// rmsnorm_f32_bf16w: one block per row, f32 math.
#include "common.cuh"
namespace gptoss::cuda {
__global__ void rmsnorm_f32_bf16w(float* out, const float* x, const uint16_t* weight, int64_t hidden, float eps) {
  __shared__ float partial[32];
  const float* xr = x + blockIdx.x * hidden;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) sum += xr[i] * xr[i];
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = rsqrtf(v / hidden + eps);
  }
  __syncthreads();
  const float scale = partial[0];
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[blockIdx.x * hidden + i] = xr[i] * scale * bf16_to_f32(weight[i]);
}
}  // namespace gptoss::cuda
