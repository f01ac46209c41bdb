/**
 * Paged KV cache bookkeeping (pure, no device calls): fixed-size blocks in two groups — full-attention layers and
 * sliding-window layers — with a block table per sequence, reference counts, and automatic prefix caching.
 *
 * - Sliding-window layers keep only the window: blocks whose positions all fell out of it are released.
 * - Prefix caching: a full block is keyed by (parent key, its token ids) and shared read-only between sequences;
 *   released cached blocks stay reusable until evicted, least recently used first. A cached prefix is reused only
 *   when the sliding-window blocks covering its last window positions are still there, so results are exact.
 */

/** Sizes of the two block groups. */
export interface KvBlockConfig {
  readonly blockSize: number;
  readonly numFullBlocks: number;
  readonly numSlidingBlocks: number;
  /** Keys visible to a query on sliding layers (current token included); 0 when the model has none. */
  readonly window: number;
}

/** Why a prefix block was not served from the cache. */
export type PrefixMissReason = "cold" | "evicted" | "partial_block";

/** Prefix-cache counters. */
export interface PrefixCacheStats {
  queriedTokens: number;
  hitTokens: number;
  missBlocks: Record<PrefixMissReason, number>;
  evictions: number;
}

/** One group's blocks: reference counts, free list, LRU of released cached blocks. */
class BlockPool {
  readonly #refs: Int32Array;
  readonly #free: number[] = [];
  /** Released blocks that still hold a cached prefix: evictable, oldest first (insertion order of a Map). */
  readonly #evictable = new Map<number, true>();
  readonly keyOf: (string | undefined)[];

  constructor(readonly size: number, private readonly onEvict: (block: number, key: string) => void) {
    this.#refs = new Int32Array(size);
    this.keyOf = new Array(size);
    for (let b = size - 1; b >= 0; b--) this.#free.push(b);
  }

  /** Blocks that can be handed out now (free or evictable). */
  get available(): number {
    return this.#free.length + this.#evictable.size;
  }

  /** Blocks referenced by sequences. */
  get used(): number {
    return this.size - this.available;
  }

  /** Blocks held only by the prefix cache. */
  get cached(): number {
    return this.#evictable.size;
  }

  allocate(): number | undefined {
    let block = this.#free.pop();
    if (block === undefined) {
      const oldest = this.#evictable.keys().next();
      if (oldest.done) return undefined;
      block = oldest.value;
      this.#evictable.delete(block);
      const key = this.keyOf[block]!;
      this.keyOf[block] = undefined;
      this.onEvict(block, key);
    }
    this.#refs[block] = 1;
    return block;
  }

  /** Takes another reference (prefix reuse); revives an evictable block. */
  retain(block: number): void {
    if (this.#refs[block] === 0) this.#evictable.delete(block);
    this.#refs[block]++;
  }

  release(block: number): void {
    if (--this.#refs[block] > 0) return;
    if (this.keyOf[block] !== undefined) this.#evictable.set(block, true);
    else this.#free.push(block);
  }

  /** Drops a cached block's key; a released one goes back to the free list. */
  forget(block: number): void {
    this.keyOf[block] = undefined;
    if (this.#evictable.delete(block)) this.#free.push(block);
  }

  refs(block: number): number {
    return this.#refs[block];
  }
}

/** A sequence's block tables. */
export interface SequenceBlocks {
  /** Full-layer block per position block (index = position / blockSize). */
  readonly full: number[];
  /** Sliding-layer block per position block; −1 where released (out of the window). */
  readonly sliding: number[];
  /** Cache key of each full block once it is registered (or computed from a cached prefix). */
  readonly keys: string[];
}

interface CacheEntry {
  full: number;
  /** −1 when the sliding block was evicted (or never kept). */
  sliding: number;
}

/** The block manager. */
export class KvBlockManager {
  readonly #full: BlockPool;
  readonly #sliding: BlockPool;
  readonly #cache = new Map<string, CacheEntry>();
  /** Keys whose blocks were evicted (bounded), to tell "evicted" misses from "cold" ones. */
  readonly #evicted = new Set<string>();
  readonly stats: PrefixCacheStats = {
    queriedTokens: 0,
    hitTokens: 0,
    missBlocks: { cold: 0, evicted: 0, partial_block: 0 },
    evictions: 0,
  };

  constructor(readonly config: KvBlockConfig) {
    this.#full = new BlockPool(config.numFullBlocks, (_block, key) => {
      const entry = this.#cache.get(key);
      this.#cache.delete(key);
      if (entry && entry.sliding >= 0) this.#sliding.forget(entry.sliding);
      this.#rememberEvicted(key);
    });
    this.#sliding = new BlockPool(config.numSlidingBlocks, (_block, key) => {
      const entry = this.#cache.get(key);
      if (entry) entry.sliding = -1;
      this.#rememberEvicted(key);
    });
  }

  #rememberEvicted(key: string): void {
    this.stats.evictions++;
    this.#evicted.add(key);
    if (this.#evicted.size > 10_000) this.#evicted.delete(this.#evicted.values().next().value!);
  }

  get blockSize(): number {
    return this.config.blockSize;
  }

  /** Full-group blocks: total, referenced by sequences, held only by the cache, free. */
  usage(): { total: number; used: number; cached: number; free: number } {
    const total = this.#full.size;
    const used = this.#full.used;
    const cached = this.#full.cached;
    return { total, used, cached, free: total - used - cached };
  }

  /** Sliding-group usage. */
  slidingUsage(): { total: number; used: number; cached: number } {
    return { total: this.#sliding.size, used: this.#sliding.used, cached: this.#sliding.cached };
  }

  /** Full blocks a sequence of `tokens` positions needs. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.config.blockSize);
  }

  /** Sliding blocks a chunk needs at most: the window behind it plus the chunk itself. */
  slidingBlocksFor(chunkTokens: number): number {
    if (this.config.window === 0) return 0;
    return Math.ceil((this.config.window - 1 + chunkTokens) / this.config.blockSize) + 1;
  }

  static #key(parent: string, tokens: readonly number[]): string {
    return `${parent}|${tokens.join(",")}`;
  }

  /**
   * Finds the longest cached prefix of `tokens` (whole blocks, leaving at least one token to compute) whose
   * sliding-window tail is still cached, takes references on its blocks and returns the new sequence's tables.
   */
  startSequence(tokens: readonly number[]): { blocks: SequenceBlocks; cachedTokens: number } {
    const bs = this.config.blockSize;
    const candidates: { key: string; entry: CacheEntry }[] = [];
    let parent = "";
    const limit = Math.floor((tokens.length - 1) / bs);
    for (let b = 0; b < limit; b++) {
      const key = KvBlockManager.#key(parent, tokens.slice(b * bs, (b + 1) * bs));
      const entry = this.#cache.get(key);
      if (!entry) {
        this.stats.missBlocks[this.#evicted.has(key) ? "evicted" : "cold"] += limit - b;
        break;
      }
      candidates.push({ key, entry });
      parent = key;
    }
    if (tokens.length % bs !== 0 || limit * bs < tokens.length) this.stats.missBlocks.partial_block++;
    // Back off until the sliding blocks of the reused prefix's last window are all present.
    let reuse = candidates.length;
    while (reuse > 0 && this.config.window > 0) {
      const length = reuse * bs;
      const firstNeeded = Math.floor(Math.max(0, length - (this.config.window - 1)) / bs);
      let ok = true;
      for (let b = firstNeeded; b < reuse; b++) if (candidates[b].entry.sliding < 0) ok = false;
      if (ok) break;
      reuse--;
    }
    if (reuse < candidates.length) this.stats.missBlocks.evicted += candidates.length - reuse;
    const blocks: SequenceBlocks = { full: [], sliding: [], keys: [] };
    const firstSliding = this.config.window > 0
      ? Math.floor(Math.max(0, reuse * bs - (this.config.window - 1)) / bs)
      : reuse;
    for (let b = 0; b < reuse; b++) {
      const { key, entry } = candidates[b];
      this.#full.retain(entry.full);
      blocks.full.push(entry.full);
      blocks.keys.push(key);
      if (this.config.window > 0 && b >= firstSliding) {
        this.#sliding.retain(entry.sliding);
        blocks.sliding.push(entry.sliding);
      } else {
        blocks.sliding.push(-1);
      }
    }
    this.stats.queriedTokens += limit * bs;
    this.stats.hitTokens += reuse * bs;
    return { blocks, cachedTokens: reuse * bs };
  }

  /**
   * Makes sure blocks exist for positions [0, upTo) (sliding: only those a query can still see).
   * Returns false, changing nothing, when there are not enough blocks.
   */
  ensure(blocks: SequenceBlocks, upTo: number, chunkStart: number): boolean {
    const needed = this.blocksFor(upTo);
    const newFull = Math.max(0, needed - blocks.full.length);
    const firstSliding = this.config.window > 0
      ? Math.floor(Math.max(0, chunkStart - (this.config.window - 1)) / this.config.blockSize)
      : needed;
    let newSliding = 0;
    for (let b = firstSliding; b < needed; b++) if ((blocks.sliding[b] ?? -1) < 0) newSliding++;
    if (newFull > this.#full.available || newSliding > this.#sliding.available) return false;
    for (let i = 0; i < newFull; i++) blocks.full.push(this.#full.allocate()!);
    while (blocks.sliding.length < needed) blocks.sliding.push(-1);
    if (this.config.window > 0) {
      for (let b = firstSliding; b < needed; b++) {
        if (blocks.sliding[b] < 0) blocks.sliding[b] = this.#sliding.allocate()!;
      }
    }
    return true;
  }

  /** After a step: registers blocks now complete and releases sliding blocks out of the window. */
  advance(blocks: SequenceBlocks, tokens: readonly number[], computed: number): void {
    const bs = this.config.blockSize;
    const complete = Math.floor(computed / bs);
    for (let b = blocks.keys.length; b < complete; b++) {
      const key = KvBlockManager.#key(b === 0 ? "" : blocks.keys[b - 1], tokens.slice(b * bs, (b + 1) * bs));
      blocks.keys.push(key);
      if (this.#cache.has(key)) continue; // another sequence cached the same prefix first: ours stays private
      const entry = { full: blocks.full[b], sliding: blocks.sliding[b] ?? -1 };
      this.#cache.set(key, entry);
      this.#evicted.delete(key);
      this.#full.keyOf[entry.full] = key;
      if (entry.sliding >= 0) this.#sliding.keyOf[entry.sliding] = key;
    }
    if (this.config.window > 0) {
      // The next query is at position `computed`; it sees keys from computed − window + 1.
      const keepFrom = Math.floor(Math.max(0, computed - (this.config.window - 1)) / bs);
      for (let b = 0; b < keepFrom; b++) {
        if (blocks.sliding[b] >= 0) {
          this.#sliding.release(blocks.sliding[b]);
          blocks.sliding[b] = -1;
        }
      }
    }
  }

  /** Releases every block of a sequence (finished, cancelled or preempted). */
  free(blocks: SequenceBlocks): void {
    for (const b of blocks.full) this.#full.release(b);
    for (const b of blocks.sliding) if (b >= 0) this.#sliding.release(b);
    blocks.full.length = 0;
    blocks.sliding.length = 0;
    blocks.keys.length = 0;
  }

  /** Reference count of a full block (tests). */
  refs(block: number): number {
    return this.#full.refs(block);
  }
}
