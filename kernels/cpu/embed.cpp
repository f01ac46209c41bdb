// embed_f32_bf16w: rows of the bf16 embedding table, widened to f32.
#include "kernels.h"

namespace gptoss::cpu {

void embed_f32_bf16w(float* out, const uint16_t* table, const int32_t* ids, int64_t num_tokens, int64_t hidden) {
#pragma omp parallel for
  for (int64_t t = 0; t < num_tokens; t++) {
    const uint16_t* row = table + static_cast<int64_t>(ids[t]) * hidden;
    for (int64_t i = 0; i < hidden; i++) out[t * hidden + i] = bf16_to_f32(row[i]);
  }
}

}  // namespace gptoss::cpu
