// matmul_f32_bf16w: out[T, N] = x[T, K] · W[N, K]ᵀ + b. Threads split the weight rows; each row is read once per
// group of 4 tokens (it stays in L1 between groups), so decode streams the weights exactly once.
#include <algorithm>

#include "kernels.h"

namespace gptoss::cpu {

void matmul_f32_bf16w(float* out, const float* x, const uint16_t* weight, const uint16_t* bias, int64_t num_tokens,
                      int64_t n, int64_t k) {
  const DotKernels& dot = dot_kernels();
#pragma omp parallel for schedule(static, 16)
  for (int64_t row = 0; row < n; row++) {
    const uint16_t* w = weight + row * k;
    const float b = bias ? bf16_to_f32(bias[row]) : 0.0f;
    float acc[4];
    for (int64_t t = 0; t < num_tokens; t += 4) {
      const int rows = static_cast<int>(std::min<int64_t>(4, num_tokens - t));
      dot.bf16(w, x + t * k, k, k, rows, acc);
      for (int r = 0; r < rows; r++) out[(t + r) * n + row] = acc[r] + b;
    }
  }
}

}  // namespace gptoss::cpu
