/** Napkin math for benchmarks: bytes of weights read per decoded token at batch 1 (spec §7). */
import type { ModelConfig } from "./config.ts";

/**
 * Weight bytes one decode step reads at batch 1: attention, router, the active experts, lm_head, one embedding row.
 * `matmulWeights` "q8": the matmul matrices (q/k/v/o, router, lm_head) as Q8_0, 1 + 4/32 bytes per weight.
 */
export function bytesPerDecodeToken(config: ModelConfig, matmulWeights: "bf16" | "q8" = "bf16"): number {
  const h = config.hiddenSize,
    q = config.numAttentionHeads * config.headDim,
    kv = config.numKeyValueHeads * config.headDim;
  const bf16 = 2, matrix = matmulWeights === "q8" ? 1 + 4 / 32 : bf16;
  const attention = (q * h + 2 * kv * h + h * q) * matrix +
    (q + 2 * kv + h + config.numAttentionHeads + 2 * h) * bf16;
  const router = config.numLocalExperts * h * matrix + config.numLocalExperts * bf16;
  const i = config.intermediateSize;
  // Per expert: packed blocks (4 bits/weight) + one scale byte per 32 weights + bf16 biases.
  const expert = (2 * i * h) / 2 + (2 * i * h) / 32 + (h * i) / 2 + (h * i) / 32 + (2 * i + h) * bf16;
  const perLayer = attention + router + config.numExpertsPerTok * expert;
  return config.numHiddenLayers * perLayer + h * bf16 + config.vocabSize * h * matrix + h * bf16;
}
