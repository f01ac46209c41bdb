/** Checkpoint tensors → backend tensors, grouped the way the model uses them. */
import type { Backend, DeviceTensor, DType, MoeWeights } from "../backends/backend.ts";
import type { Checkpoint, LoadProgress } from "./checkpoint.ts";

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

const BACKEND_DTYPE = { BF16: "bf16", U8: "u8", F32: "f32", I32: "i32" } as const;

/** Reads every tensor once and uploads it; `onProgress` is called after each tensor. */
export function loadWeights(
  checkpoint: Checkpoint,
  backend: Backend,
  onProgress?: (progress: LoadProgress) => void,
): ModelWeights {
  const bytesTotal = checkpoint.totalBytes();
  let bytesDone = 0;
  const load = (name: string): DeviceTensor => {
    const spec = checkpoint.spec(name);
    const data = checkpoint.read(name);
    bytesDone += data.byteLength;
    const dtype = BACKEND_DTYPE[spec.dtype as keyof typeof BACKEND_DTYPE] as DType;
    const tensor = backend.upload({ dtype, shape: spec.shape, data });
    onProgress?.({ bytesDone, bytesTotal, tensor: name });
    return tensor;
  };
  const embedding = load("model.embed_tokens.weight");
  const layers: LayerWeights[] = [];
  for (let n = 0; n < checkpoint.config.numHiddenLayers; n++) {
    const p = `model.layers.${n}.`;
    layers.push({
      inputNorm: load(p + "input_layernorm.weight"),
      qWeight: load(p + "self_attn.q_proj.weight"),
      qBias: load(p + "self_attn.q_proj.bias"),
      kWeight: load(p + "self_attn.k_proj.weight"),
      kBias: load(p + "self_attn.k_proj.bias"),
      vWeight: load(p + "self_attn.v_proj.weight"),
      vBias: load(p + "self_attn.v_proj.bias"),
      oWeight: load(p + "self_attn.o_proj.weight"),
      oBias: load(p + "self_attn.o_proj.bias"),
      sinks: load(p + "self_attn.sinks"),
      postAttentionNorm: load(p + "post_attention_layernorm.weight"),
      routerWeight: load(p + "mlp.router.weight"),
      routerBias: load(p + "mlp.router.bias"),
      experts: {
        gateUpBlocks: load(p + "mlp.experts.gate_up_proj_blocks"),
        gateUpScales: load(p + "mlp.experts.gate_up_proj_scales"),
        gateUpBias: load(p + "mlp.experts.gate_up_proj_bias"),
        downBlocks: load(p + "mlp.experts.down_proj_blocks"),
        downScales: load(p + "mlp.experts.down_proj_scales"),
        downBias: load(p + "mlp.experts.down_proj_bias"),
      },
    });
  }
  const norm = load("model.norm.weight");
  const lmHead = load("lm_head.weight");
  return { embedding, layers, norm, lmHead };
}
