// add_f32 and gather_rows_f32.
#include <algorithm>

#include "kernels.h"

namespace gptoss::cpu {

void add_f32(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void gather_rows_f32(float* out, const float* x, const int32_t* rows, int64_t num_rows, int64_t width) {
  for (int64_t r = 0; r < num_rows; r++) std::copy_n(x + static_cast<int64_t>(rows[r]) * width, width, out + r * width);
}

}  // namespace gptoss::cpu
