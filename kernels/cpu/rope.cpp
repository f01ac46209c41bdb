// rope_f32: half-split (NeoX) rotation with YaRN frequencies; cos and sin scaled by the concentration.
#include <cmath>

#include "kernels.h"

namespace gptoss::cpu {

void rope_f32(float* q, float* k, const int32_t* positions, const float* inv_freq, float concentration,
              int64_t num_tokens, int64_t q_width, int64_t k_width, int64_t head_dim) {
  const int64_t half = head_dim / 2;
#pragma omp parallel for if (num_tokens > 1)  // one token: cheaper on this thread than waking the team
  for (int64_t t = 0; t < num_tokens; t++) {
    float cosines[256], sines[256];  // head_dim ≤ 512 is checked by the caller
    for (int64_t i = 0; i < half; i++) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];  // f32 angle, as the reference
      cosines[i] = static_cast<float>(std::cos(static_cast<double>(angle)) * concentration);
      sines[i] = static_cast<float>(std::sin(static_cast<double>(angle)) * concentration);
    }
    for (int pass = 0; pass < 2; pass++) {
      float* base = pass == 0 ? q + t * q_width : k + t * k_width;
      const int64_t width = pass == 0 ? q_width : k_width;
      for (int64_t h = 0; h < width; h += head_dim) {
        for (int64_t i = 0; i < half; i++) {
          const float x1 = base[h + i], x2 = base[h + half + i];
          base[h + i] = x1 * cosines[i] - x2 * sines[i];
          base[h + half + i] = x2 * cosines[i] + x1 * sines[i];
        }
      }
    }
  }
}

}  // namespace gptoss::cpu
