/**
 * Pipeline parallelism over stages in one process: stage s holds a contiguous run of layers (its own backend, KV pool
 * with those layers), the first also the embedding, the last the final norm and lm_head. A step's sequences are cut
 * into micro-batches that flow stage to stage (the residual stream passes through the host); each stage works on one
 * micro-batch at a time, in order, so while stage 1 runs micro-batch 0, stage 0 runs micro-batch 1. The arithmetic is
 * the single-device forward's: the logits are the same bit for bit on the same backend.
 */
import type { KvPool, KvPoolSpec } from "../backends/backend.ts";
import type { ModelConfig } from "./config.ts";
import {
  attentionBlock,
  expertBlock,
  kvPoolSpec,
  layerTensors,
  layoutStep,
  type Model,
  splitRows,
  type StepSequence,
  StepTensors,
} from "./gpt_oss.ts";
import type { GroupPool } from "./parallel.ts";

/** The layers [first, first + count) of a model as a stage's config. */
export function stageConfig(config: ModelConfig, first: number, count: number): ModelConfig {
  return {
    ...config,
    numHiddenLayers: count,
    layerIsSliding: config.layerIsSliding.slice(first, first + count),
  };
}

/** Each stage's layer range: as even as possible, earlier stages taking the remainder. */
export function stageLayers(numLayers: number, stages: number): { first: number; count: number }[] {
  if (stages > numLayers) throw new RangeError(`Pipeline size ${stages} exceeds the ${numLayers} layers`);
  const base = Math.floor(numLayers / stages), extra = numLayers % stages;
  let first = 0;
  return Array.from({ length: stages }, (_, s) => {
    const count = base + (s < extra ? 1 : 0);
    const range = { first, count };
    first += count;
    return range;
  });
}

/** One KV pool per stage, with that stage's layers. */
export function createStagePools(stages: readonly Model[], spec: KvPoolSpec): GroupPool {
  const ranks = stages.map((m) =>
    m.backend.createKvPool(kvPoolSpec(m.config, {
      blockSize: spec.blockSize,
      numFullBlocks: spec.numFullBlocks,
      numSlidingBlocks: spec.numSlidingBlocks,
    }))
  );
  return { spec, sizeBytes: ranks.reduce((s, p) => s + p.sizeBytes, 0), ranks };
}

/** Runs one micro-batch through every stage; returns its logits rows (read from the last stage). */
async function runMicroBatch(
  stages: readonly Model[],
  pools: readonly KvPool[],
  sequences: readonly StepSequence[],
  turns: Promise<void>[],
): Promise<Float32Array[]> {
  const numTokens = sequences.reduce((s, q) => s + q.tokenIds.length, 0);
  let hidden: Float32Array | undefined;
  let logits: Float32Array | undefined;
  for (let s = 0; s < stages.length; s++) {
    const m = stages[s];
    // A stage takes micro-batches one at a time, in order: wait for its previous one.
    const turn = turns[s].then(async () => {
      const layout = layoutStep(pools[s], sequences, numTokens);
      const tensors = new StepTensors(m.backend);
      try {
        const t = layerTensors(m, layout, tensors);
        if (s === 0) m.backend.ops.embed(t.x, m.weights.embedding, t.tokenIds);
        else m.backend.write(t.x, hidden!);
        for (let layer = 0; layer < m.config.numHiddenLayers; layer++) {
          attentionBlock(m, pools[s], layout, t, layer);
          expertBlock(m, t, layer);
          m.backend.ops.add(t.x, t.x, t.delta);
        }
        if (s < stages.length - 1) {
          await m.backend.flush();
          hidden = await m.backend.read(t.x) as Float32Array;
          return;
        }
        const rows = layout.logitRows;
        if (rows.length === 0) return await m.backend.flush();
        const rowIds = tensors.alloc([rows.length], "i32", Int32Array.from(rows));
        const gathered = tensors.alloc([rows.length, m.config.hiddenSize], "f32");
        const normed = tensors.alloc([rows.length, m.config.hiddenSize], "f32");
        const out = tensors.alloc([rows.length, m.config.vocabSize], "f32");
        m.backend.ops.gatherRows(gathered, t.x, rowIds);
        m.backend.ops.rmsnorm(normed, gathered, m.weights.norm, m.config.rmsNormEps);
        m.backend.ops.matmul(out, normed, m.weights.lmHead);
        await m.backend.flush();
        logits = await m.backend.read(out) as Float32Array;
      } finally {
        tensors.freeAll();
      }
    });
    turns[s] = turn.catch(() => {});
    await turn;
  }
  return splitRows(sequences, logits, stages[0].config.vocabSize);
}

/**
 * One step over the stages (prefill chunks and decode tokens mixed, as forward()), in up to `stages.length`
 * micro-batches of whole sequences; returns each sequence's logits rows.
 */
export async function forwardPipeline(
  stages: readonly Model[],
  pools: readonly KvPool[],
  sequences: readonly StepSequence[],
): Promise<Float32Array[]> {
  const count = Math.max(1, Math.min(stages.length, sequences.length));
  const size = Math.ceil(sequences.length / count);
  const batches = Array.from({ length: count }, (_, i) => sequences.slice(i * size, (i + 1) * size))
    .filter((b) => b.length > 0);
  const turns = stages.map(() => Promise.resolve());
  const results = await Promise.all(batches.map((batch) => runMicroBatch(stages, pools, batch, turns)));
  return results.flat();
}
