/**
 * Tensor parallelism over ranks in one process (CPU native contexts or any backends): each rank holds a shard of
 * every layer (its KV-head group of q/k/v and o_proj's matching columns, its share of every expert's intermediate
 * dimension, its slice of the vocabulary in lm_head) and its own KV pool with its heads. The residual stream is
 * replicated; the two partial sums of each layer (o_proj and the experts' down_proj) are all-reduced, and the logits
 * slices all-gathered, by a Communicator (host memory for ranks in one process, NCCL between GPUs). The arithmetic is the single-device forward's, summed in a different order: f32 tolerance.
 * The weights are sharded by checkpoint/load_sharded.ts.
 */
import type { KvPool } from "../backends/backend.ts";
import type { Communicator } from "../backends/communicator.ts";
import type { ModelConfig } from "./config.ts";
import {
  attentionBlock,
  expertBlock,
  layerTensors,
  layoutStep,
  type Model,
  splitRows,
  type StepSequence,
  StepTensors,
} from "./gpt_oss.ts";

/**
 * Rank `rank`'s 32-element MXFP4 blocks of the experts' intermediate dimension: [first, end), as even as whole blocks
 * allow (2,880 = 90 blocks: 45 each for 2 ranks; 22, 23, 22, 23 for 4). Uneven shares only change who sums what.
 */
export function expertBlocks(config: ModelConfig, rank: number, size: number): readonly [number, number] {
  const blocks = config.intermediateSize / 32;
  return [Math.floor(rank * blocks / size), Math.floor((rank + 1) * blocks / size)];
}

/**
 * Rank `rank`'s view of the model: the same layers with its share of heads, vocabulary and intermediate size. Heads,
 * KV heads and the vocabulary must divide evenly (each rank's KV pool and logits slice have one shape); the experts'
 * blocks need not.
 */
export function shardConfig(config: ModelConfig, size: number, rank = 0): ModelConfig {
  const need = (what: string, n: number, unit = 1) => {
    if (n % (size * unit) !== 0) {
      throw new RangeError(
        `Tensor parallel size ${size} does not divide ${what} (${n}${unit > 1 ? ` / ${unit}` : ""})`,
      );
    }
    return n / size;
  };
  return {
    ...config,
    numAttentionHeads: need("the attention heads", config.numAttentionHeads),
    numKeyValueHeads: need("the key/value heads", config.numKeyValueHeads),
    intermediateSize: expertShare(config, size, rank),
    vocabSize: need("the vocabulary", config.vocabSize),
  };
}

function expertShare(config: ModelConfig, size: number, rank: number): number {
  const blocks = config.intermediateSize / 32;
  if (!Number.isInteger(blocks) || blocks < size) {
    throw new RangeError(
      `Tensor parallel size ${size} leaves a rank without a 32-element MXFP4 block of the experts' intermediate size ` +
        `(${config.intermediateSize})`,
    );
  }
  const [first, end] = expertBlocks(config, rank, size);
  return (end - first) * 32;
}

/**
 * One step on every rank (prefill chunks and decode tokens mixed, as forward()); returns each sequence's logits rows
 * over the whole vocabulary. `ranks[r]` runs on its own backend with its shard; `pools[r]` holds its heads.
 */
export async function forwardTensorParallel(
  ranks: readonly Model[],
  pools: readonly KvPool[],
  sequences: readonly StepSequence[],
  comm: Communicator,
): Promise<Float32Array[]> {
  const numTokens = sequences.reduce((s, q) => s + q.tokenIds.length, 0);
  const layouts = pools.map((pool) => layoutStep(pool, sequences, numTokens));
  const all = ranks.map((m) => new StepTensors(m.backend));
  try {
    const backends = ranks.map((m) => m.backend);
    const ts = ranks.map((m, r) => layerTensors(m, layouts[r], all[r]));
    ranks.forEach((m, r) => m.backend.ops.embed(ts[r].x, m.weights.embedding, ts[r].tokenIds));
    for (let layer = 0; layer < ranks[0].config.numHiddenLayers; layer++) {
      ranks.forEach((m, r) => attentionBlock(m, pools[r], layouts[r], ts[r], layer));
      await comm.allReduceSum(backends, ts.map((t) => t.delta));
      ranks.forEach((m, r) => expertBlock(m, ts[r], layer));
      await comm.allReduceSum(backends, ts.map((t) => t.delta));
      ranks.forEach((m, r) => m.backend.ops.add(ts[r].x, ts[r].x, ts[r].delta));
    }
    const rows = layouts[0].logitRows;
    if (rows.length === 0) return sequences.map(() => new Float32Array(0));
    const slices = ranks.map((m, r) => {
      const rowIds = all[r].alloc([rows.length], "i32", Int32Array.from(rows));
      const gathered = all[r].alloc([rows.length, m.config.hiddenSize], "f32");
      const normed = all[r].alloc([rows.length, m.config.hiddenSize], "f32");
      const logits = all[r].alloc([rows.length, m.config.vocabSize], "f32");
      m.backend.ops.gatherRows(gathered, ts[r].x, rowIds);
      m.backend.ops.rmsnorm(normed, gathered, m.weights.norm, m.config.rmsNormEps);
      m.backend.ops.matmul(logits, normed, m.weights.lmHead);
      return logits;
    });
    const vocab = ranks[0].config.vocabSize * ranks.length;
    return splitRows(sequences, await comm.allGatherColumns(backends, slices, rows.length), vocab);
  } finally {
    all.forEach((t) => t.freeAll());
  }
}
