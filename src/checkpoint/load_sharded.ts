/**
 * One tensor-parallel rank's weights (model/tensor_parallel.ts): slices of the checkpoint's tensors, uploaded to that
 * rank's backend. Row slices of a matrix are views of the mapping; column slices and per-expert slices are copied.
 *  - q/k/v: the rows of the rank's KV-head group (q heads come in groups per KV head, so they stay together); sinks.
 *  - o_proj: the matching input columns; its bias on rank 0 only (the partial sums are added).
 *  - experts: the rank's share of the intermediate dimension: gate_up rows (interleaved glu/linear pairs stay
 *    together) and down_proj's input columns in whole 32-element MXFP4 blocks; down's bias on rank 0 only.
 *  - lm_head: the rank's rows of the vocabulary. Embedding, norms and the router are replicated.
 */
import type { Backend, DeviceTensor, DType } from "../backends/backend.ts";
import type { LayerWeights, ModelWeights } from "../model/weights.ts";
import { createModel, type Model } from "../model/gpt_oss.ts";
import { type Communicator, HostCommunicator } from "../backends/communicator.ts";
import { expertBlocks, shardConfig } from "../model/tensor_parallel.ts";
import { stageConfig, stageLayers } from "../model/pipeline_parallel.ts";
import type { Checkpoint } from "./checkpoint.ts";

const BACKEND_DTYPE = { BF16: "bf16", U8: "u8", F32: "f32", I32: "i32" } as const;
const BYTES: Record<DType, number> = { bf16: 2, u8: 1, f32: 4, i32: 4 };

interface Slice {
  readonly dtype: DType;
  readonly shape: number[];
  readonly data: Uint8Array;
  /** A copy made here (not a view of the checkpoint's mapping): nothing reads it after its upload. */
  readonly copied?: boolean;
}

/** Rows [r0, r1) of dimension `axis` of a row-major tensor (every index before it kept whole). */
function sliceAxis(t: Slice, axis: number, r0: number, r1: number): Slice {
  const outer = t.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const inner = t.shape.slice(axis + 1).reduce((a, b) => a * b, 1) * BYTES[t.dtype];
  const rows = t.shape[axis];
  const shape = [...t.shape];
  shape[axis] = r1 - r0;
  if (outer === 1) return { ...t, shape, data: t.data.subarray(r0 * inner, r1 * inner) };
  const data = new Uint8Array(outer * (r1 - r0) * inner);
  for (let o = 0; o < outer; o++) {
    data.set(t.data.subarray((o * rows + r0) * inner, (o * rows + r1) * inner), o * (r1 - r0) * inner);
  }
  return { dtype: t.dtype, shape, data, copied: true };
}

/** What a pipeline stage loads: its layers, and the embedding / final norm and lm_head only where used. */
export interface StagePart {
  readonly first: number;
  readonly count: number;
  readonly embedding: boolean;
  readonly head: boolean;
}

/**
 * Loads rank `rank` of `size` (the model config must be divisible: model/tensor_parallel.ts shardConfig checks), or
 * with `stage` only a pipeline stage's part (rank 0 of 1: whole tensors).
 */
export function loadShardedWeights(
  checkpoint: Checkpoint,
  backend: Backend,
  rank: number,
  size: number,
  stage?: StagePart,
): ModelWeights {
  const c = checkpoint.config;
  const read = (name: string): Slice => {
    const spec = checkpoint.spec(name);
    return {
      dtype: BACKEND_DTYPE[spec.dtype as keyof typeof BACKEND_DTYPE] as DType,
      shape: [...spec.shape],
      data: checkpoint.read(name),
    };
  };
  // Views of the mapping are used in place where the backend can; the copies made here are released once uploaded.
  const mapped = checkpoint.files.mapped;
  const up = (t: Slice, use?: "matmul"): DeviceTensor =>
    backend.upload({
      dtype: t.dtype,
      shape: t.shape,
      data: t.data,
      use,
      external: mapped && !t.copied,
      discardable: t.copied,
    });
  const part = (n: number) => [rank * n / size, (rank + 1) * n / size] as const;
  const zeroUnlessFirst = (t: Slice): Slice =>
    rank === 0 ? t : { ...t, data: new Uint8Array(t.data.length), copied: true };
  const [q0, q1] = part(c.numAttentionHeads * c.headDim);
  const [kv0, kv1] = part(c.numKeyValueHeads * c.headDim);
  const [h0, h1] = part(c.numAttentionHeads);
  const [b0, b1] = expertBlocks(c, rank, size);
  const [i0, i1] = [b0 * 32, b1 * 32];
  const [v0, v1] = part(c.vocabSize);
  const layers: LayerWeights[] = [];
  const first = stage?.first ?? 0, count = stage?.count ?? c.numHiddenLayers;
  // A stage that never embeds (or never computes logits) holds a 1-element stand-in for those tensors.
  const unused = () => backend.upload({ dtype: "bf16", shape: [1], data: new Uint8Array(2) });
  for (let n = first; n < first + count; n++) {
    const p = `model.layers.${n}.`;
    const x = (name: string) => read(p + name);
    layers.push({
      inputNorm: up(x("input_layernorm.weight")),
      qWeight: up(sliceAxis(x("self_attn.q_proj.weight"), 0, q0, q1), "matmul"),
      qBias: up(sliceAxis(x("self_attn.q_proj.bias"), 0, q0, q1)),
      kWeight: up(sliceAxis(x("self_attn.k_proj.weight"), 0, kv0, kv1), "matmul"),
      kBias: up(sliceAxis(x("self_attn.k_proj.bias"), 0, kv0, kv1)),
      vWeight: up(sliceAxis(x("self_attn.v_proj.weight"), 0, kv0, kv1), "matmul"),
      vBias: up(sliceAxis(x("self_attn.v_proj.bias"), 0, kv0, kv1)),
      oWeight: up(sliceAxis(x("self_attn.o_proj.weight"), 1, q0, q1), "matmul"),
      oBias: up(zeroUnlessFirst(x("self_attn.o_proj.bias"))),
      sinks: up(sliceAxis(x("self_attn.sinks"), 0, h0, h1)),
      postAttentionNorm: up(x("post_attention_layernorm.weight")),
      routerWeight: up(x("mlp.router.weight"), "matmul"),
      routerBias: up(x("mlp.router.bias")),
      experts: {
        gateUpBlocks: up(sliceAxis(x("mlp.experts.gate_up_proj_blocks"), 1, 2 * i0, 2 * i1)),
        gateUpScales: up(sliceAxis(x("mlp.experts.gate_up_proj_scales"), 1, 2 * i0, 2 * i1)),
        gateUpBias: up(sliceAxis(x("mlp.experts.gate_up_proj_bias"), 1, 2 * i0, 2 * i1)),
        downBlocks: up(sliceAxis(x("mlp.experts.down_proj_blocks"), 2, b0, b1)),
        downScales: up(sliceAxis(x("mlp.experts.down_proj_scales"), 2, b0, b1)),
        downBias: up(zeroUnlessFirst(x("mlp.experts.down_proj_bias"))),
      },
    });
  }
  return {
    embedding: stage?.embedding === false ? unused() : up(read("model.embed_tokens.weight")),
    layers,
    norm: stage?.head === false ? unused() : up(read("model.norm.weight")),
    lmHead: stage?.head === false ? unused() : up(sliceAxis(read("lm_head.weight"), 0, v0, v1), "matmul"),
  };
}

/**
 * A tensor-parallel model over `backends` (one rank each): shards loaded, ranks built, joined by `comm` (default: the
 * host communicator, for ranks in one process).
 */
export function loadTensorParallelModel(
  checkpoint: Checkpoint,
  backends: readonly Backend[],
  comm: Communicator = new HostCommunicator(backends.length),
): Model {
  const size = backends.length;
  const ranks = backends.map((b, r) =>
    createModel(shardConfig(checkpoint.config, size, r), loadShardedWeights(checkpoint, b, r, size), b)
  );
  return {
    ...ranks[0],
    config: checkpoint.config,
    parallel: { kind: "tensor", ranks, comm },
  };
}

/** A pipeline of `backends.length` stages, each with its run of layers (the first also embeds, the last has lm_head). */
export function loadPipelineModel(checkpoint: Checkpoint, backends: readonly Backend[]): Model {
  const config = checkpoint.config;
  const ranges = stageLayers(config.numHiddenLayers, backends.length);
  const stages = backends.map((b, s) => {
    const { first, count } = ranges[s];
    const part = { first, count, embedding: s === 0, head: s === backends.length - 1 };
    return createModel(stageConfig(config, first, count), loadShardedWeights(checkpoint, b, 0, 1, part), b);
  });
  return { ...stages[0], config, parallel: { kind: "pipeline", stages } };
}
