// embed_f32_bf16w: out[t] = table[ids[t]]; an id outside the table writes zeros and reports kEmbedIdOutOfRange.
#include "common.cuh"
namespace gptoss::cuda {
__global__ void embed_f32_bf16w(float* out, const uint16_t* table, const int32_t* ids, int64_t vocab, int64_t hidden,
                                int32_t* error) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  const bool valid = id >= 0 && id < vocab;
  if (!valid && threadIdx.x == 0) report(error, kEmbedIdOutOfRange);
  const uint16_t* row = table + static_cast<int64_t>(valid ? id : 0) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[t * hidden + i] = valid ? bf16_to_f32(row[i]) : 0.f;
}
}  // namespace gptoss::cuda
