// moe_route_f32 and moe_mlp_f32_mxfp4w: top-k routing with softmax over the k, then the MXFP4 experts with the
// clamped SwiGLU, dequantized block by block inside the dot products (experts stay packed).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace gptoss::cpu {

void moe_route_f32(int32_t* ids, float* weights, const float* logits, int64_t num_tokens, int64_t num_experts,
                   int32_t top_k) {
  for (int64_t t = 0; t < num_tokens; t++) {
    const float* z = logits + t * num_experts;
    int32_t* chosen = ids + t * top_k;
    for (int32_t j = 0; j < top_k; j++) {
      int32_t best = -1;
      for (int32_t e = 0; e < num_experts; e++) {
        if (std::find(chosen, chosen + j, e) != chosen + j) continue;
        if (best < 0 || z[e] > z[best]) best = e;  // strict: ties keep the lowest index
      }
      chosen[j] = best;
    }
    const double max = z[chosen[0]];
    double sum = 0;
    for (int32_t j = 0; j < top_k; j++) sum += std::exp(z[chosen[j]] - max);
    for (int32_t j = 0; j < top_k; j++) weights[t * top_k + j] = static_cast<float>(std::exp(z[chosen[j]] - max) / sum);
  }
}

static inline float swiglu(float glu, float lin, float limit) {
  const float g = std::min(glu, limit);
  const float l = std::max(-limit, std::min(lin, limit));
  return g / (1.0f + std::exp(-1.702f * g)) * (l + 1.0f);  // e^(+large) → inf → g/inf = 0: overflow-safe
}

void moe_mlp_f32_mxfp4w(float* out, const float* x, const int32_t* ids, const float* weights, const MoeWeights& w,
                        int64_t num_tokens, int32_t top_k, int64_t hidden, int64_t intermediate, float swiglu_limit) {
  const DotKernels& dot = dot_kernels();
  std::fill(out, out + num_tokens * hidden, 0.0f);
  const int64_t hidden_blocks = hidden / 32, inter_blocks = intermediate / 32;
  // Group (token, slot) pairs by expert so each weight row is read once for all the tokens routed to it.
  std::vector<std::vector<int64_t>> slots(static_cast<size_t>(w.num_experts));
  for (int64_t t = 0; t < num_tokens; t++)
    for (int32_t j = 0; j < top_k; j++) slots[static_cast<size_t>(ids[t * top_k + j])].push_back(t * top_k + j);
  std::vector<float> xs, xs_split, act, act_split, y;
  for (int64_t e = 0; e < w.num_experts; e++) {
    const std::vector<int64_t>& mine = slots[static_cast<size_t>(e)];
    const int64_t count = static_cast<int64_t>(mine.size());
    if (count == 0) continue;
    xs.resize(static_cast<size_t>(count * hidden));
    for (int64_t s = 0; s < count; s++) std::copy_n(x + (mine[s] / top_k) * hidden, hidden, xs.data() + s * hidden);
    // The MXFP4 dot reads activations in the split layout (evens, then odds, per block): reorder once per expert.
    xs_split.resize(xs.size());
    for (int64_t s = 0; s < count; s++) split_for_mxfp4(xs.data() + s * hidden, hidden, xs_split.data() + s * hidden);
    act.resize(static_cast<size_t>(count * 2 * intermediate));
    const uint8_t* gu_blocks = w.gate_up_blocks + e * 2 * intermediate * hidden_blocks * 16;
    const uint8_t* gu_scales = w.gate_up_scales + e * 2 * intermediate * hidden_blocks;
    const uint16_t* gu_bias = w.gate_up_bias + e * 2 * intermediate;
    // More than 4 tokens on this expert (prefill): decode each row to f32 once, reuse it for every token.
    const bool decode_once = count > 16;  // measured: decoding a row per group of 4 tokens wins below this
#pragma omp parallel
    {
      std::vector<float> row_f32(decode_once ? static_cast<size_t>(std::max(hidden, intermediate)) : 0);
#pragma omp for schedule(static, 16)
      for (int64_t r = 0; r < 2 * intermediate; r++) {
        float acc[4];
        const uint8_t* row_blocks = gu_blocks + r * hidden_blocks * 16;
        const uint8_t* row_scales = gu_scales + r * hidden_blocks;
        if (decode_once) dequantize_mxfp4_row(row_blocks, row_scales, hidden_blocks, row_f32.data());
        for (int64_t s = 0; s < count; s += 4) {
          const int rows = static_cast<int>(std::min<int64_t>(4, count - s));
          if (decode_once) dot.f32(row_f32.data(), xs.data() + s * hidden, hidden, hidden, rows, acc);
          else dot.mxfp4(row_blocks, row_scales, xs_split.data() + s * hidden, hidden, hidden_blocks, rows, acc);
          for (int q = 0; q < rows; q++) act[static_cast<size_t>((s + q) * 2 * intermediate + r)] = acc[q] + bf16_to_f32(gu_bias[r]);
        }
      }
    }
    // Interleaved rows: even = glu, odd = linear. The activation goes to the first half of each slot's row.
    for (int64_t s = 0; s < count; s++) {
      float* h = act.data() + s * 2 * intermediate;
      for (int64_t i = 0; i < intermediate; i++) h[i] = swiglu(h[2 * i], h[2 * i + 1], swiglu_limit);
    }
    act_split.resize(static_cast<size_t>(count * intermediate));
    for (int64_t s = 0; s < count; s++) {
      split_for_mxfp4(act.data() + s * 2 * intermediate, intermediate, act_split.data() + s * intermediate);
    }
    y.resize(static_cast<size_t>(count * hidden));
    const uint8_t* d_blocks = w.down_blocks + e * hidden * inter_blocks * 16;
    const uint8_t* d_scales = w.down_scales + e * hidden * inter_blocks;
    const uint16_t* d_bias = w.down_bias + e * hidden;
#pragma omp parallel
    {
      std::vector<float> row_f32(decode_once ? static_cast<size_t>(intermediate) : 0);
#pragma omp for schedule(static, 16)
      for (int64_t r = 0; r < hidden; r++) {
        float acc[4];
        const uint8_t* row_blocks = d_blocks + r * inter_blocks * 16;
        const uint8_t* row_scales = d_scales + r * inter_blocks;
        if (decode_once) dequantize_mxfp4_row(row_blocks, row_scales, inter_blocks, row_f32.data());
        for (int64_t s = 0; s < count; s += 4) {
          const int rows = static_cast<int>(std::min<int64_t>(4, count - s));
          const float* a = act.data() + s * 2 * intermediate;
          if (decode_once) dot.f32(row_f32.data(), a, 2 * intermediate, intermediate, rows, acc);
          else dot.mxfp4(row_blocks, row_scales, act_split.data() + s * intermediate, intermediate, inter_blocks, rows, acc);
          for (int q = 0; q < rows; q++) y[static_cast<size_t>((s + q) * hidden + r)] = acc[q] + bf16_to_f32(d_bias[r]);
        }
      }
    }
    for (int64_t s = 0; s < count; s++) {
      const int64_t t = mine[s] / top_k;
      const float weight = weights[mine[s]];
      for (int64_t r = 0; r < hidden; r++) out[t * hidden + r] += weight * y[static_cast<size_t>(s * hidden + r)];
    }
  }
}

}  // namespace gptoss::cpu
