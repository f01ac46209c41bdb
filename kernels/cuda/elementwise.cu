// add_f32 and gather_rows_f32 (a row outside x reports kGatherRowOutOfRange and writes zeros).
#include "common.cuh"
namespace gptoss::cuda {
__global__ void add_f32(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}
__global__ void gather_rows_f32(float* out, const float* x, const int32_t* rows, int64_t num_rows, int64_t width,
                                int32_t* error) {
  const int64_t r = blockIdx.x;
  const int32_t src = rows[r];
  const bool valid = src >= 0 && src < num_rows;
  if (!valid && threadIdx.x == 0) report(error, kGatherRowOutOfRange);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    out[r * width + i] = valid ? x[static_cast<int64_t>(src) * width + i] : 0.f;
}
}  // namespace gptoss::cuda
