/**
 * A few sequences over one KV pool without the engine: for tests, benchmarks and tools that drive the model
 * directly. Uses the same block manager as the engine (prefix caching included).
 */
import { pushAll } from "../formats/json_depth.ts";
import type { KvPool } from "../backends/backend.ts";
import { forward, kvPoolSpec, type LogitsWanted, type Model } from "../model/gpt_oss.ts";
import { KvBlockManager, type SequenceBlocks } from "./kv_blocks.ts";

/** One sequence's cache position and blocks. */
export interface SessionSequence {
  readonly tokens: number[];
  computed: number;
  readonly blocks: SequenceBlocks;
}

/** A pool and its block manager. */
export class KvSession {
  readonly pool: KvPool;
  readonly blocks: KvBlockManager;

  constructor(
    readonly model: Model,
    options: { blockSize?: number; numBlocks?: number; numSlidingBlocks?: number } = {},
  ) {
    const blockSize = options.blockSize ?? 16;
    const numFullBlocks = options.numBlocks ?? 256;
    const hasSliding = model.config.layerIsSliding.some((s) => s);
    const numSlidingBlocks = hasSliding ? options.numSlidingBlocks ?? numFullBlocks : 0;
    this.pool = model.backend.createKvPool(kvPoolSpec(model.config, { blockSize, numFullBlocks, numSlidingBlocks }));
    this.blocks = new KvBlockManager({
      blockSize,
      numFullBlocks,
      numSlidingBlocks,
      window: hasSliding ? model.config.slidingWindow : 0,
    });
  }

  /** A new, empty sequence (prefix caching is used only when `tokens` are given up front). */
  sequence(): SessionSequence {
    return { tokens: [], computed: 0, blocks: { full: [], sliding: [], keys: [] } };
  }

  /** Runs one step: each entry appends tokens to its sequence. Returns each entry's logits rows. */
  async step(entries: readonly { seq: SessionSequence; tokenIds: readonly number[]; logits: LogitsWanted }[]) {
    for (const { seq, tokenIds } of entries) {
      if (!this.blocks.ensure(seq.blocks, seq.computed + tokenIds.length, seq.computed)) {
        throw new RangeError("The KV pool is full");
      }
    }
    const logits = await forward(
      this.model,
      this.pool,
      entries.map(({ seq, tokenIds, logits }) => ({
        tokenIds,
        startPosition: seq.computed,
        fullBlocks: Int32Array.from(seq.blocks.full),
        slidingBlocks: Int32Array.from(seq.blocks.sliding),
        logits,
      })),
    );
    for (const { seq, tokenIds } of entries) {
      pushAll(seq.tokens, tokenIds);
      seq.computed += tokenIds.length;
      this.blocks.advance(seq.blocks, seq.tokens, seq.computed);
    }
    return logits;
  }

  /** Frees a sequence's blocks. */
  release(seq: SessionSequence): void {
    this.blocks.free(seq.blocks);
  }
}
