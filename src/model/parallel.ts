/**
 * A model on one device or on several (tensor-parallel ranks, pipeline stages): the KV pool and the step the engine
 * uses, whichever it is.
 */
import type { KvPool, KvPoolSpec } from "../backends/backend.ts";
import { forwardStep, kvPoolSpec, type Model, type StepResult, type StepSequence } from "./gpt_oss.ts";
import { createStagePools, forwardPipeline } from "./pipeline_parallel.ts";
import { forwardTensorParallel } from "./tensor_parallel.ts";

/** A group's KV pool: one pool per rank (tensor parallel: its heads) or stage (pipeline: its layers). */
export interface GroupPool extends KvPool {
  readonly ranks: readonly KvPool[];
}

/** The KV pool for a model: its backend's, or one per rank or stage of a group (`spec` is the whole model's). */
export function createKvPoolFor(model: Model, spec: KvPoolSpec): KvPool {
  if (!model.parallel) return model.backend.createKvPool(spec);
  if (model.parallel.kind === "pipeline") return createStagePools(model.parallel.stages, spec);
  const ranks = model.parallel.ranks.map((m) =>
    m.backend.createKvPool(kvPoolSpec(m.config, {
      blockSize: spec.blockSize,
      numFullBlocks: spec.numFullBlocks,
      numSlidingBlocks: spec.numSlidingBlocks,
    }))
  );
  const pool: GroupPool = { spec, sizeBytes: ranks.reduce((s, p) => s + p.sizeBytes, 0), ranks };
  return pool;
}

/** One step of a model on one device or a group (no device sampling in a group: the logits rows come back). */
export async function runStep(
  model: Model,
  pool: KvPool,
  sequences: readonly StepSequence[],
  options: { masked?: readonly [number, number] } = {},
): Promise<StepResult> {
  if (!model.parallel) return await forwardStep(model, pool, sequences, options);
  const pools = (pool as GroupPool).ranks;
  const logits = model.parallel.kind === "pipeline"
    ? await forwardPipeline(model.parallel.stages, pools, sequences)
    : await forwardTensorParallel(model.parallel.ranks, pools, sequences, model.parallel.comm);
  return { logits, sampled: new Int32Array(sequences.length).fill(-1) };
}
