/**
 * KV cache sizing, in one place: how many blocks of each group (full-attention, sliding-window) a byte budget buys,
 * with the bytes per element the backend stores (f32 today on every backend; a bf16 or fp8 cache changes only that).
 */
import type { ModelConfig } from "../model/config.ts";

/** What the sizing needs to know. */
export interface KvSizingOptions {
  readonly kvCacheBytes: number;
  readonly blockSize: number;
  /** Bytes of one stored K or V element (the backend's). */
  readonly bytesPerElement: number;
  readonly maxNumSeqs: number;
  readonly prefillChunkSize: number;
  readonly maxModelLen: number;
  /** A backend that keeps each layer's K and V in one buffer caps the blocks per group. */
  readonly maxKvLayerBytes?: number;
}

/** The chosen block counts. */
export interface KvSizing {
  readonly blockSize: number;
  readonly numFullBlocks: number;
  readonly numSlidingBlocks: number;
  /** The sliding window (0 when no layer slides). */
  readonly window: number;
}

/** KV bytes per position of each block group. */
export function kvBytesPerPosition(config: ModelConfig, bytesPerElement: number): { full: number; sliding: number } {
  const row = 2 * config.numKeyValueHeads * config.headDim * bytesPerElement;
  const sliding = config.layerIsSliding.filter((s) => s).length;
  return { full: row * (config.numHiddenLayers - sliding), sliding: row * sliding };
}

/**
 * Sliding layers need at most window + chunk positions per running sequence (twice that is kept so the prefix cache
 * has some); the rest of the budget goes to full-attention blocks.
 */
export function sizeKvCache(config: ModelConfig, options: KvSizingOptions): KvSizing {
  const { blockSize, kvCacheBytes } = options;
  const perPosition = kvBytesPerPosition(config, options.bytesPerElement);
  const window = config.layerIsSliding.some((s) => s) ? config.slidingWindow : 0;
  const slidingPerSequence = window > 0 ? Math.ceil((window + options.prefillChunkSize) / blockSize) + 2 : 0;
  const numSlidingBlocks = Math.min(
    slidingPerSequence * options.maxNumSeqs * 2,
    perPosition.sliding > 0 ? Math.floor(kvCacheBytes / 2 / (blockSize * perPosition.sliding)) : 0,
  );
  const slidingBytes = numSlidingBlocks * blockSize * perPosition.sliding;
  const numFullBlocks = perPosition.full > 0
    ? Math.max(1, Math.floor((kvCacheBytes - slidingBytes) / (blockSize * perPosition.full)))
    // A model with only sliding layers still needs block tables for positions: make them cheap.
    : Math.ceil(options.maxModelLen / blockSize) * options.maxNumSeqs;
  const layerBlockBytes = blockSize * config.numKeyValueHeads * config.headDim * options.bytesPerElement;
  const maxBlocks = options.maxKvLayerBytes !== undefined
    ? Math.floor(options.maxKvLayerBytes / layerBlockBytes)
    : Infinity;
  return {
    blockSize,
    numFullBlocks: Math.min(numFullBlocks, maxBlocks),
    numSlidingBlocks: Math.min(numSlidingBlocks, maxBlocks),
    window,
  };
}
