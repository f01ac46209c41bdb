/** YaRN RoPE frequencies (spec §3.3 step 5; YaRN: arXiv 2309.00071), computed once at load. */
import type { ModelConfig } from "./config.ts";

/** Inverse frequencies ω_i (i < headDim/2) in f32 and the concentration multiplied into cos and sin. */
export interface RopeTables {
  /** [headDim/2] */
  readonly invFreq: Float32Array;
  readonly concentration: number;
}

/** Builds the tables as OpenAI's reference does (`_compute_concentration_and_inv_freq`). */
export function buildRopeTables(config: ModelConfig): RopeTables {
  const d = config.headDim;
  const { factor, betaFast, betaSlow, originalMaxPositionEmbeddings: context, truncate } = config.ropeScaling;
  const base = config.ropeTheta;
  const concentration = 0.1 * Math.log(factor) + 1;
  let low = (d / 2) * Math.log(context / (betaFast * 2 * Math.PI)) / Math.log(base);
  let high = (d / 2) * Math.log(context / (betaSlow * 2 * Math.PI)) / Math.log(base);
  if (truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  const invFreq = new Float32Array(d / 2);
  for (let i = 0; i < d / 2; i++) {
    // The reference computes in f32: freq = base^(2i/d); interpolation = 1/(factor·freq), extrapolation = 1/freq.
    const freq = Math.fround(base ** Math.fround((2 * i) / d));
    const extrapolation = Math.fround(1 / freq);
    const interpolation = Math.fround(1 / Math.fround(factor * freq));
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    const mask = Math.fround(1 - ramp);
    invFreq[i] = Math.fround(interpolation * (1 - mask) + extrapolation * mask);
  }
  return { invFreq, concentration };
}
