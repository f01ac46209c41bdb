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

/** A model ready to run: config, weights on a backend, RoPE tables. */
export interface Model {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  readonly backend: Backend;
  /** [headDim/2] f32 on the backend */
  readonly ropeInvFreq: DeviceTensor;
  readonly ropeConcentration: number;
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

/**
 * {@link forward} with device sampling: sequences with `sample` get a token id instead of logits. `masked` is the id
 * range never sampled. When every wanted row is sampled, only the ids are read back.
 */
export async function forwardStep(
  model: Model,
  pool: KvPool,
  sequences: readonly StepSequence[],
  options: { masked?: readonly [number, number] } = {},
): Promise<StepResult> {
  const { config, weights, backend } = model;
  const ops = backend.ops;
  const numTokens = sequences.reduce((sum, s) => sum + s.tokenIds.length, 0);
  const sampled = new Int32Array(sequences.length).fill(-1);
  if (numTokens === 0) return { logits: sequences.map(() => new Float32Array(0)), sampled };
  for (const seq of sequences) {
    if (seq.sample && (seq.logits !== "last" || !ops.sample)) {
      throw new RangeError(`Device sampling needs logits "last" and a backend with ops.sample (${backend.name})`);
    }
  }
  const hidden = config.hiddenSize;
  const qWidth = config.numAttentionHeads * config.headDim;
  const kvWidth = config.numKeyValueHeads * config.headDim;
  const topK = config.numExpertsPerTok;

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
  const batch: AttentionBatch = { segments, numTokens };

  // Activations for this step.
  const tokenIds = backend.alloc([numTokens], "i32"); // [T]
  const positionIds = backend.alloc([numTokens], "i32"); // [T]
  const x = backend.alloc([numTokens, hidden], "f32"); // [T, H] residual stream
  const normed = backend.alloc([numTokens, hidden], "f32"); // [T, H]
  const q = backend.alloc([numTokens, qWidth], "f32"); // [T, nh·d]
  const k = backend.alloc([numTokens, kvWidth], "f32"); // [T, nkv·d]
  const v = backend.alloc([numTokens, kvWidth], "f32"); // [T, nkv·d]
  const attn = backend.alloc([numTokens, qWidth], "f32"); // [T, nh·d]
  const delta = backend.alloc([numTokens, hidden], "f32"); // [T, H] block output before the residual add
  const routerLogits = backend.alloc([numTokens, config.numLocalExperts], "f32"); // [T, E]
  const expertIds = backend.alloc([numTokens, topK], "i32"); // [T, k]
  const expertWeights = backend.alloc([numTokens, topK], "f32"); // [T, k]
  backend.write(tokenIds, ids);
  backend.write(positionIds, positions);

  ops.embed(x, weights.embedding, tokenIds);
  for (let layer = 0; layer < config.numHiddenLayers; layer++) {
    const w = weights.layers[layer];
    ops.rmsnorm(normed, x, w.inputNorm, config.rmsNormEps);
    ops.matmul(q, normed, w.qWeight, w.qBias);
    ops.matmul(k, normed, w.kWeight, w.kBias);
    ops.matmul(v, normed, w.vWeight, w.vBias);
    ops.rope(q, k, positionIds, model.ropeInvFreq, model.ropeConcentration);
    ops.attention(attn, q, k, v, {
      batch,
      pool,
      layer,
      sinks: w.sinks,
      numHeads: config.numAttentionHeads,
      numKeyValueHeads: config.numKeyValueHeads,
      headDim: config.headDim,
      window: config.layerIsSliding[layer] ? config.slidingWindow : 0,
    });
    ops.matmul(delta, attn, w.oWeight, w.oBias);
    ops.add(x, x, delta);
    ops.rmsnorm(normed, x, w.postAttentionNorm, config.rmsNormEps);
    ops.matmul(routerLogits, normed, w.routerWeight, w.routerBias);
    ops.moeRoute(expertIds, expertWeights, routerLogits, topK);
    ops.moeMlp(delta, normed, expertIds, expertWeights, {
      weights: w.experts,
      intermediateSize: config.intermediateSize,
      swigluLimit: config.swigluLimit,
    });
    ops.add(x, x, delta);
  }

  let result: Float32Array | undefined;
  const temporaries = [tokenIds, positionIds, x, normed, q, k, v, attn, delta, routerLogits, expertIds, expertWeights];
  if (logitRows.length > 0) {
    const rows = backend.alloc([logitRows.length], "i32"); // [R]
    const gathered = backend.alloc([logitRows.length, hidden], "f32"); // [R, H]
    const gatheredNormed = backend.alloc([logitRows.length, hidden], "f32"); // [R, H]
    const logits = backend.alloc([logitRows.length, config.vocabSize], "f32"); // [R, V]
    backend.write(rows, Int32Array.from(logitRows));
    ops.gatherRows(gathered, x, rows);
    ops.rmsnorm(gatheredNormed, gathered, weights.norm, config.rmsNormEps);
    ops.matmul(logits, gatheredNormed, weights.lmHead);
    temporaries.push(rows, gathered, gatheredNormed, logits);
    // Rows sampled on the device: their index among the logits rows, per sampling sequence.
    const sampleRows: number[] = [], params: number[] = [], samplers: number[] = [];
    let offset = 0;
    sequences.forEach((seq, i) => {
      const count = rowCount(seq);
      if (seq.sample && count > 0) {
        sampleRows.push(offset);
        params.push(seq.sample.temperature, seq.sample.topK, seq.sample.topP, Math.min(seq.sample.u, 0.99999994));
        samplers.push(i);
      }
      offset += count;
    });
    let ids: DeviceTensor | undefined;
    if (sampleRows.length > 0) {
      let picked = logits;
      if (sampleRows.length < logitRows.length) {
        const which = backend.alloc([sampleRows.length], "i32");
        backend.write(which, Int32Array.from(sampleRows));
        picked = backend.alloc([sampleRows.length, config.vocabSize], "f32");
        ops.gatherRows(picked, logits, which);
        temporaries.push(which, picked);
      }
      const paramTensor = backend.alloc([sampleRows.length, SAMPLE_PARAMS], "f32");
      backend.write(paramTensor, Float32Array.from(params));
      ids = backend.alloc([sampleRows.length], "i32");
      ops.sample!(ids, picked, paramTensor, options.masked);
      temporaries.push(paramTensor, ids);
    }
    await backend.flush();
    if (ids) {
      const picked = (await backend.read(ids)) as Int32Array;
      samplers.forEach((seq, j) => sampled[seq] = picked[j]);
    }
    const logitsWanted = sequences.some((seq) => rowCount(seq) > 0 && (!seq.sample || seq.keepLogits));
    if (logitsWanted) result = (await backend.read(logits)) as Float32Array;
  } else {
    await backend.flush();
  }
  for (const t of temporaries) backend.free(t);

  const out: Float32Array[] = [];
  let offset = 0;
  for (const seq of sequences) {
    const count = rowCount(seq);
    out.push(
      result && (!seq.sample || seq.keepLogits)
        ? result.subarray(offset * config.vocabSize, (offset + count) * config.vocabSize)
        : new Float32Array(0),
    );
    offset += count;
  }
  return { logits: out, sampled };
}

/** Logits rows a sequence asks for. */
function rowCount(seq: StepSequence): number {
  return seq.logits === "all" ? seq.tokenIds.length : seq.logits === "last" && seq.tokenIds.length > 0 ? 1 : 0;
}
