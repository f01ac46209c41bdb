// add_f32 and gather_rows_f32.
#include "common.cuh"
namespace gptoss::cuda {
__global__ void add_f32(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}
__global__ void gather_rows_f32(float* out, const float* x, const int32_t* rows, int64_t width) {
  const int64_t r = blockIdx.x;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[r * width + i] = x[static_cast<int64_t>(rows[r]) * width + i];
}
}  // namespace gptoss::cuda
