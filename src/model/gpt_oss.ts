/**
 * The GPT-OSS forward pass, written once against the backend ops (spec §3):
 * embed → for each layer { x += o_proj(attention(rope(qkv(rmsnorm(x))))); x += moe(rmsnorm(x)) } → norm → lm_head.
 * Sliding-window attention on the layers config.json marks (even layers in the release).
 */
import type { AttentionBatch, Backend, BatchSegment, DeviceTensor, KvPool, KvPoolSpec } from "../backends/backend.ts";
import { SAMPLE_PARAMS } from "../backends/backend.ts";
import type { ModelConfig } from "./config.ts";
import { buildRopeTables } from "./rope.ts";
import type { ModelWeights } from "./weights.ts";
import type { Communicator } from "../backends/communicator.ts";

/** A model ready to run: config, weights on a backend, RoPE tables. */
export interface Model {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  readonly backend: Backend;
  /** [headDim/2] f32 on the backend */
  readonly ropeInvFreq: DeviceTensor;
  readonly ropeConcentration: number;
  /**
   * Several devices: the tensor-parallel ranks (each with a shard of every layer) or the pipeline stages (each with
   * some layers) that run this model's steps, each on its own backend (tensor_parallel.ts, pipeline_parallel.ts);
   * `backend` and `weights` are then the first one's.
   */
  readonly parallel?:
    | { readonly kind: "tensor"; readonly ranks: readonly Model[]; readonly comm: Communicator }
    | { readonly kind: "pipeline"; readonly stages: readonly Model[] };
}

/** Wraps loaded weights into a model (builds the RoPE tables). */
export function createModel(config: ModelConfig, weights: ModelWeights, backend: Backend): Model {
  const rope = buildRopeTables(config);
  const ropeInvFreq = backend.alloc([rope.invFreq.length], "f32");
  backend.write(ropeInvFreq, rope.invFreq);
  return { config, weights, backend, ropeInvFreq, ropeConcentration: rope.concentration };
}

/** The KV pool shape for this model with the given block counts. */
export function kvPoolSpec(
  config: ModelConfig,
  blocks: { blockSize: number; numFullBlocks: number; numSlidingBlocks: number },
): KvPoolSpec {
  return {
    numLayers: config.numHiddenLayers,
    numKeyValueHeads: config.numKeyValueHeads,
    headDim: config.headDim,
    layerWindows: config.layerIsSliding.map((sliding) => (sliding ? config.slidingWindow : 0)),
    blockSize: blocks.blockSize,
    numFullBlocks: blocks.numFullBlocks,
    numSlidingBlocks: blocks.numSlidingBlocks,
  };
}

/** Which rows of logits a sequence wants back from a step. */
export type LogitsWanted = "last" | "all" | "none";

/** One sequence's part of a step: new tokens at `startPosition`, with the block tables that hold its cache. */
export interface StepSequence {
  readonly tokenIds: readonly number[];
  readonly startPosition: number;
  /** Full-layer blocks covering [0, startPosition + tokenIds.length). */
  readonly fullBlocks: Int32Array;
  /** Sliding-layer blocks covering what this step's queries can see. */
  readonly slidingBlocks: Int32Array;
  readonly logits: LogitsWanted;
  /**
   * Sample the last row on the device ({@link Ops.sample}) instead of returning its logits; needs `logits: "last"`
   * and a backend with `ops.sample`. `u` is the request's seeded uniform draw in [0, 1).
   */
  readonly sample?: { readonly temperature: number; readonly topK: number; readonly topP: number; readonly u: number };
  /** With `sample`: return the row's logits as well (logprobs of a device-sampled token). */
  readonly keepLogits?: boolean;
}

/** A step's results per sequence: logits rows (empty when none were wanted or the row was sampled) and the id. */
export interface StepResult {
  readonly logits: Float32Array[];
  /** The token sampled on the device per sequence; −1 where none was. */
  readonly sampled: Int32Array;
}

/**
 * Runs one step over a batch of sequences (prefill chunks and single decode tokens mixed) and returns, per
 * sequence, its logits rows as [rows × vocabSize] (empty when "none").
 */
export async function forward(
  model: Model,
  pool: KvPool,
  sequences: readonly StepSequence[],
): Promise<Float32Array[]> {
  return (await forwardStep(model, pool, sequences)).logits;
}

/** The step's token rows: ids, positions, attention segments and which rows' logits are wanted. */
export interface StepLayout {
  readonly ids: Int32Array;
  readonly positions: Int32Array;
  readonly batch: AttentionBatch;
  readonly logitRows: number[];
}

export function layoutStep(pool: KvPool, sequences: readonly StepSequence[], numTokens: number): StepLayout {
  const ids = new Int32Array(numTokens);
  const positions = new Int32Array(numTokens);
  const segments: BatchSegment[] = [];
  const logitRows: number[] = [];
  let row = 0;
  for (const seq of sequences) {
    const start = seq.startPosition;
    if (Math.ceil((start + seq.tokenIds.length) / pool.spec.blockSize) > seq.fullBlocks.length) {
      throw new RangeError(
        `Block table covers ${seq.fullBlocks.length} blocks, too few for position ${start + seq.tokenIds.length - 1}`,
      );
    }
    segments.push({
      rowOffset: row,
      numTokens: seq.tokenIds.length,
      startPosition: start,
      fullBlocks: seq.fullBlocks,
      slidingBlocks: seq.slidingBlocks,
    });
    for (let i = 0; i < seq.tokenIds.length; i++) {
      ids[row + i] = seq.tokenIds[i];
      positions[row + i] = start + i;
    }
    if (seq.logits === "all") { for (let i = 0; i < seq.tokenIds.length; i++) logitRows.push(row + i); }
    else if (seq.logits === "last" && seq.tokenIds.length > 0) logitRows.push(row + seq.tokenIds.length - 1);
    row += seq.tokenIds.length;
  }
  return { ids, positions, batch: { segments, numTokens }, logitRows };
}

/** A step's device tensors, freed together at its end. */
export class StepTensors {
  readonly #backend: Backend;
  readonly #all: DeviceTensor[] = [];
  constructor(backend: Backend) {
    this.#backend = backend;
  }
  alloc(shape: readonly number[], dtype: "f32" | "i32", data?: Int32Array | Float32Array): DeviceTensor {
    const tensor = this.#backend.alloc(shape, dtype);
    if (data) this.#backend.write(tensor, data);
    this.#all.push(tensor);
    return tensor;
  }
  freeAll(): void {
    for (const t of this.#all) this.#backend.free(t);
  }
}

/** The transformer stack: embeds the step's tokens and runs every layer; returns the residual stream [T, H]. */
function runLayers(model: Model, pool: KvPool, layout: StepLayout, tensors: StepTensors): DeviceTensor {
  const t = layerTensors(model, layout, tensors);
  const ops = model.backend.ops;
  ops.embed(t.x, model.weights.embedding, t.tokenIds);
  for (let layer = 0; layer < model.config.numHiddenLayers; layer++) {
    attentionBlock(model, pool, layout, t, layer);
    expertBlock(model, t, layer);
    ops.add(t.x, t.x, t.delta);
  }
  return t.x;
}

/** A step's activations for one model (or one rank's or stage's shard of it). */
export function layerTensors(model: Model, layout: StepLayout, tensors: StepTensors) {
  const { config } = model;
  const t = layout.batch.numTokens;
  return {
    tokenIds: tensors.alloc([t], "i32", layout.ids),
    positions: tensors.alloc([t], "i32", layout.positions),
    x: tensors.alloc([t, config.hiddenSize], "f32"),
    normed: tensors.alloc([t, config.hiddenSize], "f32"),
    q: tensors.alloc([t, config.numAttentionHeads * config.headDim], "f32"),
    k: tensors.alloc([t, config.numKeyValueHeads * config.headDim], "f32"),
    v: tensors.alloc([t, config.numKeyValueHeads * config.headDim], "f32"),
    attn: tensors.alloc([t, config.numAttentionHeads * config.headDim], "f32"),
    delta: tensors.alloc([t, config.hiddenSize], "f32"),
    routerLogits: tensors.alloc([t, config.numLocalExperts], "f32"),
    expertIds: tensors.alloc([t, config.numExpertsPerTok], "i32"),
    expertWeights: tensors.alloc([t, config.numExpertsPerTok], "f32"),
  };
}

/** The step's activations of a layer. */
export type LayerTensors = ReturnType<typeof layerTensors>;

/** rmsnorm → q/k/v → rope → attention → o_proj into `delta` (a rank's heads: a partial sum; its bias on rank 0). */
export function attentionBlock(
  m: Model,
  pool: KvPool,
  layout: StepLayout,
  t: LayerTensors,
  layer: number,
): void {
  const { config, weights, backend } = m;
  const ops = backend.ops, w = weights.layers[layer];
  ops.rmsnorm(t.normed, t.x, w.inputNorm, config.rmsNormEps);
  ops.matmul(t.q, t.normed, w.qWeight, w.qBias);
  ops.matmul(t.k, t.normed, w.kWeight, w.kBias);
  ops.matmul(t.v, t.normed, w.vWeight, w.vBias);
  ops.rope(t.q, t.k, t.positions, m.ropeInvFreq, m.ropeConcentration);
  ops.attention(t.attn, t.q, t.k, t.v, {
    batch: layout.batch,
    pool,
    layer,
    sinks: w.sinks,
    numHeads: config.numAttentionHeads,
    numKeyValueHeads: config.numKeyValueHeads,
    headDim: config.headDim,
    window: config.layerIsSliding[layer] ? config.slidingWindow : 0,
  });
  ops.matmul(t.delta, t.attn, w.oWeight, w.oBias);
}

/** x += the attention's `delta`; rmsnorm → router → the experts into `delta` (a rank's share: a partial sum). */
export function expertBlock(m: Model, t: LayerTensors, layer: number): void {
  const { config, weights, backend } = m;
  const ops = backend.ops, w = weights.layers[layer];
  ops.add(t.x, t.x, t.delta);
  ops.rmsnorm(t.normed, t.x, w.postAttentionNorm, config.rmsNormEps);
  ops.matmul(t.routerLogits, t.normed, w.routerWeight, w.routerBias);
  ops.moeRoute(t.expertIds, t.expertWeights, t.routerLogits, config.numExpertsPerTok);
  ops.moeMlp(t.delta, t.normed, t.expertIds, t.expertWeights, {
    weights: w.experts,
    intermediateSize: config.intermediateSize,
    swigluLimit: config.swigluLimit,
  });
}

/** Logits of the wanted rows: gather, final norm, lm_head; [R, V]. */
function lmHead(model: Model, x: DeviceTensor, rows: number[], tensors: StepTensors): DeviceTensor {
  const { config, weights, backend } = model;
  const rowIds = tensors.alloc([rows.length], "i32", Int32Array.from(rows)); // [R]
  const gathered = tensors.alloc([rows.length, config.hiddenSize], "f32"); // [R, H]
  const normed = tensors.alloc([rows.length, config.hiddenSize], "f32"); // [R, H]
  const logits = tensors.alloc([rows.length, config.vocabSize], "f32"); // [R, V]
  backend.ops.gatherRows(gathered, x, rowIds);
  backend.ops.rmsnorm(normed, gathered, weights.norm, config.rmsNormEps);
  backend.ops.matmul(logits, normed, weights.lmHead);
  return logits;
}

/**
 * Enqueues the device draws of the sequences with `sample` over their logits rows; returns the ids tensor and which
 * sequence each of its entries belongs to (undefined when no sequence samples on the device).
 */
function enqueueSampling(
  model: Model,
  sequences: readonly StepSequence[],
  logits: DeviceTensor,
  numRows: number,
  masked: readonly [number, number] | undefined,
  tensors: StepTensors,
): { ids: DeviceTensor; owners: number[] } | undefined {
  const sampleRows: number[] = [], params: number[] = [], owners: number[] = [];
  let offset = 0;
  sequences.forEach((seq, i) => {
    const count = rowCount(seq);
    if (seq.sample && count > 0) {
      sampleRows.push(offset);
      params.push(seq.sample.temperature, seq.sample.topK, seq.sample.topP, Math.min(seq.sample.u, 0.99999994));
      owners.push(i);
    }
    offset += count;
  });
  if (sampleRows.length === 0) return undefined;
  const vocab = model.config.vocabSize;
  let picked = logits;
  if (sampleRows.length < numRows) {
    const which = tensors.alloc([sampleRows.length], "i32", Int32Array.from(sampleRows));
    picked = tensors.alloc([sampleRows.length, vocab], "f32");
    model.backend.ops.gatherRows(picked, logits, which);
  }
  const paramTensor = tensors.alloc([sampleRows.length, SAMPLE_PARAMS], "f32", Float32Array.from(params));
  const ids = tensors.alloc([sampleRows.length], "i32");
  model.backend.ops.sample!(ids, picked, paramTensor, masked);
  return { ids, owners };
}

/**
 * {@link forward} with device sampling: sequences with `sample` get a token id (and their logits only with
 * `keepLogits`). `masked` is the id range never sampled. When every wanted row is sampled, only the ids are read.
 */
export async function forwardStep(
  model: Model,
  pool: KvPool,
  sequences: readonly StepSequence[],
  options: { masked?: readonly [number, number] } = {},
): Promise<StepResult> {
  const { config, backend } = model;
  const numTokens = sequences.reduce((sum, s) => sum + s.tokenIds.length, 0);
  const sampled = new Int32Array(sequences.length).fill(-1);
  if (numTokens === 0) return { logits: sequences.map(() => new Float32Array(0)), sampled };
  for (const seq of sequences) {
    if (seq.sample && (seq.logits !== "last" || !backend.ops.sample)) {
      throw new RangeError(`Device sampling needs logits "last" and a backend with ops.sample (${backend.name})`);
    }
  }
  const layout = layoutStep(pool, sequences, numTokens);
  const tensors = new StepTensors(backend);
  try {
    const x = runLayers(model, pool, layout, tensors);
    let result: Float32Array | undefined;
    if (layout.logitRows.length > 0) {
      const logits = lmHead(model, x, layout.logitRows, tensors);
      const draws = enqueueSampling(model, sequences, logits, layout.logitRows.length, options.masked, tensors);
      await backend.flush();
      if (draws) {
        const ids = (await backend.read(draws.ids)) as Int32Array;
        draws.owners.forEach((seq, j) => sampled[seq] = ids[j]);
      }
      if (sequences.some((seq) => rowCount(seq) > 0 && (!seq.sample || seq.keepLogits))) {
        result = (await backend.read(logits)) as Float32Array;
      }
    } else {
      await backend.flush();
    }
    return { logits: splitRows(sequences, result, config.vocabSize), sampled };
  } finally {
    tensors.freeAll();
  }
}

/** Each sequence's rows of the read logits (empty where none were wanted or read). */
export function splitRows(
  sequences: readonly StepSequence[],
  result: Float32Array | undefined,
  vocab: number,
): Float32Array[] {
  const out: Float32Array[] = [];
  let offset = 0;
  for (const seq of sequences) {
    const count = rowCount(seq);
    out.push(
      result && (!seq.sample || seq.keepLogits)
        ? result.subarray(offset * vocab, (offset + count) * vocab)
        : new Float32Array(0),
    );
    offset += count;
  }
  return out;
}

/** Logits rows a sequence asks for. */
function rowCount(seq: StepSequence): number {
  return seq.logits === "all" ? seq.tokenIds.length : seq.logits === "last" && seq.tokenIds.length > 0 ? 1 : 0;
}
