// rope_f32: half-split rotation, YaRN frequencies, cos/sin scaled by the concentration. The angle is an f32 product
// as in the reference; cos and sin are taken in double precision (as the CPU kernel does) and rounded once.
#include "common.cuh"
namespace gptoss::cuda {
__global__ void rope_f32(float* q, float* k, const int32_t* positions, const float* inv_freq, float concentration,
                         int64_t q_width, int64_t k_width, int64_t head_dim) {
  const int64_t t = blockIdx.x, half = head_dim / 2;
  for (int64_t idx = threadIdx.x; idx < (q_width + k_width) / 2; idx += blockDim.x) {
    const bool is_q = idx < q_width / 2;
    const int64_t local = is_q ? idx : idx - q_width / 2;
    const int64_t head = local / half, i = local % half;
    float* base = (is_q ? q + t * q_width : k + t * k_width) + head * head_dim;
    const float angle = __fmul_rn(static_cast<float>(positions[t]), inv_freq[i]);
    const float c = static_cast<float>(cos(static_cast<double>(angle)) * concentration);
    const float s = static_cast<float>(sin(static_cast<double>(angle)) * concentration);
    const float x1 = base[i], x2 = base[half + i];
    base[i] = x1 * c - x2 * s;
    base[half + i] = x2 * c + x1 * s;
  }
}
}  // namespace gptoss::cuda
