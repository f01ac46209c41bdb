// embed_f32_bf16w
#include "common.cuh"
namespace gptoss::cuda {
__global__ void embed_f32_bf16w(float* out, const uint16_t* table, const int32_t* ids, int64_t hidden) {
  const int64_t t = blockIdx.x;
  const uint16_t* row = table + static_cast<int64_t>(ids[t]) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[t * hidden + i] = bf16_to_f32(row[i]);
}
}  // namespace gptoss::cuda
