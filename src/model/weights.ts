/** The weights the model runs on, as backend tensors, grouped the way the forward pass uses them. */
import type { DeviceTensor, MoeWeights } from "../backends/backend.ts";

/** One transformer block's weights. */
export interface LayerWeights {
  readonly inputNorm: DeviceTensor; // [H] bf16
  readonly qWeight: DeviceTensor; // [nh·d, H]
  readonly qBias: DeviceTensor;
  readonly kWeight: DeviceTensor; // [nkv·d, H]
  readonly kBias: DeviceTensor;
  readonly vWeight: DeviceTensor; // [nkv·d, H]
  readonly vBias: DeviceTensor;
  readonly oWeight: DeviceTensor; // [H, nh·d]
  readonly oBias: DeviceTensor;
  readonly sinks: DeviceTensor; // [nh]
  readonly postAttentionNorm: DeviceTensor; // [H]
  readonly routerWeight: DeviceTensor; // [E, H]
  readonly routerBias: DeviceTensor; // [E]
  readonly experts: MoeWeights;
}

/** All weights of a model. */
export interface ModelWeights {
  readonly embedding: DeviceTensor; // [V, H] bf16
  readonly layers: readonly LayerWeights[];
  readonly norm: DeviceTensor; // [H]
  readonly lmHead: DeviceTensor; // [V, H]
}
