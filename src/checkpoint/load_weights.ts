/** Checkpoint tensors → backend tensors, grouped the way the model uses them. */
import type { Backend, DeviceTensor, DType } from "../backends/backend.ts";
import type { LayerWeights, ModelWeights } from "../model/weights.ts";
import type { Checkpoint, LoadProgress } from "./checkpoint.ts";

export type { LayerWeights, ModelWeights } from "../model/weights.ts";

const BACKEND_DTYPE = { BF16: "bf16", U8: "u8", F32: "f32", I32: "i32" } as const;

/**
 * Reads every tensor once and uploads it; `onProgress` is called after each tensor. Yields to the event loop
 * every 50 ms so a server stays responsive (/health answers "loading") during a long load.
 */
export async function loadWeights(
  checkpoint: Checkpoint,
  backend: Backend,
  onProgress?: (progress: LoadProgress) => void,
): Promise<ModelWeights> {
  const bytesTotal = checkpoint.totalBytes();
  let bytesDone = 0;
  let lastYield = performance.now();
  const load = async (name: string, use?: "matmul"): Promise<DeviceTensor> => {
    if (performance.now() - lastYield > 50) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      lastYield = performance.now();
    }
    const spec = checkpoint.spec(name);
    const data = checkpoint.read(name);
    bytesDone += data.byteLength;
    const dtype = BACKEND_DTYPE[spec.dtype as keyof typeof BACKEND_DTYPE] as DType;
    const tensor = backend.upload({ dtype, shape: spec.shape, data, external: checkpoint.files.mapped, use });
    onProgress?.({ bytesDone, bytesTotal, tensor: name });
    return tensor;
  };
  const embedding = await load("model.embed_tokens.weight");
  const layers: LayerWeights[] = [];
  for (let n = 0; n < checkpoint.config.numHiddenLayers; n++) {
    const p = `model.layers.${n}.`;
    layers.push({
      inputNorm: await load(p + "input_layernorm.weight"),
      qWeight: await load(p + "self_attn.q_proj.weight", "matmul"),
      qBias: await load(p + "self_attn.q_proj.bias"),
      kWeight: await load(p + "self_attn.k_proj.weight", "matmul"),
      kBias: await load(p + "self_attn.k_proj.bias"),
      vWeight: await load(p + "self_attn.v_proj.weight", "matmul"),
      vBias: await load(p + "self_attn.v_proj.bias"),
      oWeight: await load(p + "self_attn.o_proj.weight", "matmul"),
      oBias: await load(p + "self_attn.o_proj.bias"),
      sinks: await load(p + "self_attn.sinks"),
      postAttentionNorm: await load(p + "post_attention_layernorm.weight"),
      routerWeight: await load(p + "mlp.router.weight", "matmul"),
      routerBias: await load(p + "mlp.router.bias"),
      experts: {
        gateUpBlocks: await load(p + "mlp.experts.gate_up_proj_blocks"),
        gateUpScales: await load(p + "mlp.experts.gate_up_proj_scales"),
        gateUpBias: await load(p + "mlp.experts.gate_up_proj_bias"),
        downBlocks: await load(p + "mlp.experts.down_proj_blocks"),
        downScales: await load(p + "mlp.experts.down_proj_scales"),
        downBias: await load(p + "mlp.experts.down_proj_bias"),
      },
    });
  }
  const norm = await load("model.norm.weight");
  const lmHead = await load("lm_head.weight", "matmul");
  return { embedding, layers, norm, lmHead };
}
