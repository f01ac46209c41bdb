/**
 * Tensor parallelism over ranks in one process (CPU native contexts or any backends): each rank holds a shard of
 * every layer (its KV-head group of q/k/v and o_proj's matching columns, its share of every expert's intermediate
 * dimension, its slice of the vocabulary in lm_head) and its own KV pool with its heads. The residual stream is
 * replicated; the two partial sums of each layer (o_proj and the experts' down_proj) are all-reduced, and the logits
 * slices all-gathered. The arithmetic is the single-device forward's, summed in a different order: f32 tolerance.
 * The weights are sharded by checkpoint/load_sharded.ts.
 */
import type { DeviceTensor, KvPool } from "../backends/backend.ts";
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

/** The collective operations tensor parallelism needs; one implementation per transport (host memory, NCCL). */
export interface Communicator {
  readonly size: number;
  /** The element-wise sum of every rank's part, in rank order (deterministic). */
  allReduceSum(parts: readonly Float32Array[]): Float32Array;
  /** The ranks' parts side by side in each of `rows` rows (a vocabulary split's logits). */
  allGatherColumns(parts: readonly Float32Array[], rows: number): Float32Array;
  /** Root's part, for every rank. */
  broadcast(parts: readonly Float32Array[], root: number): Float32Array[];
  /** Resolves once every rank has reached it. */
  barrier(): Promise<void>;
}

/** Ranks in one process: the collectives are sums and copies in host memory. */
export class HostCommunicator implements Communicator {
  constructor(readonly size: number) {}

  allReduceSum(parts: readonly Float32Array[]): Float32Array {
    const out = new Float32Array(parts[0]);
    for (let r = 1; r < parts.length; r++) for (let i = 0; i < out.length; i++) out[i] += parts[r][i];
    return out;
  }

  broadcast(parts: readonly Float32Array[], root: number): Float32Array[] {
    return parts.map(() => new Float32Array(parts[root]));
  }

  /** One process drives every rank in turn: they are always together. */
  barrier(): Promise<void> {
    return Promise.resolve();
  }

  allGatherColumns(parts: readonly Float32Array[], rows: number): Float32Array {
    const widths = parts.map((p) => p.length / Math.max(1, rows));
    const total = widths.reduce((a, b) => a + b, 0);
    const out = new Float32Array(rows * total);
    for (let row = 0; row < rows; row++) {
      let column = 0;
      parts.forEach((part, r) => {
        out.set(part.subarray(row * widths[r], (row + 1) * widths[r]), row * total + column);
        column += widths[r];
      });
    }
    return out;
  }
}

/** A rank's view of the model: the same layers with its share of heads, intermediate size and vocabulary. */
export function shardConfig(config: ModelConfig, size: number): ModelConfig {
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
    intermediateSize: need("the experts' intermediate size in 32-element MXFP4 blocks", config.intermediateSize, 32),
    vocabSize: need("the vocabulary", config.vocabSize),
  };
}

/** Sums a [T, H] partial result across ranks and writes the sum back to every rank. */
async function allReduce(ranks: readonly Model[], parts: readonly DeviceTensor[], comm: Communicator): Promise<void> {
  const host = await Promise.all(ranks.map(async (m, r) => {
    await m.backend.flush();
    return await m.backend.read(parts[r]) as Float32Array;
  }));
  const sum = comm.allReduceSum(host);
  ranks.forEach((m, r) => m.backend.write(parts[r], sum));
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
    const ts = ranks.map((m, r) => layerTensors(m, layouts[r], all[r]));
    ranks.forEach((m, r) => m.backend.ops.embed(ts[r].x, m.weights.embedding, ts[r].tokenIds));
    for (let layer = 0; layer < ranks[0].config.numHiddenLayers; layer++) {
      ranks.forEach((m, r) => attentionBlock(m, pools[r], layouts[r], ts[r], layer));
      await allReduce(ranks, ts.map((t) => t.delta), comm);
      ranks.forEach((m, r) => expertBlock(m, ts[r], layer));
      await allReduce(ranks, ts.map((t) => t.delta), comm);
      ranks.forEach((m, r) => m.backend.ops.add(ts[r].x, ts[r].x, ts[r].delta));
    }
    const rows = layouts[0].logitRows;
    if (rows.length === 0) return sequences.map(() => new Float32Array(0));
    const slices = await Promise.all(ranks.map(async (m, r) => {
      const rowIds = all[r].alloc([rows.length], "i32", Int32Array.from(rows));
      const gathered = all[r].alloc([rows.length, m.config.hiddenSize], "f32");
      const normed = all[r].alloc([rows.length, m.config.hiddenSize], "f32");
      const logits = all[r].alloc([rows.length, m.config.vocabSize], "f32");
      m.backend.ops.gatherRows(gathered, ts[r].x, rowIds);
      m.backend.ops.rmsnorm(normed, gathered, m.weights.norm, m.config.rmsNormEps);
      m.backend.ops.matmul(logits, normed, m.weights.lmHead);
      await m.backend.flush();
      return await m.backend.read(logits) as Float32Array;
    }));
    const vocab = ranks[0].config.vocabSize * ranks.length;
    return splitRows(sequences, comm.allGatherColumns(slices, rows.length), vocab);
  } finally {
    all.forEach((t) => t.freeAll());
  }
}
