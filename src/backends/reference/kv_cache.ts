/** The reference backend's paged KV pool: f32 K and V per layer, [blocks, blockSize, numKeyValueHeads · headDim]. */
import type { KvPool, KvPoolSpec } from "../backend.ts";

/** One layer's storage. */
export interface RefKvLayer {
  /** [numBlocks, blockSize, nkv·d] f32 */
  readonly keys: Float32Array;
  /** [numBlocks, blockSize, nkv·d] f32 */
  readonly values: Float32Array;
  /** Keys visible to a query (current included); 0 = full attention. */
  readonly window: number;
}

/** The pool: full-attention layers index the full block group, sliding layers the sliding group. */
export class RefKvPool implements KvPool {
  readonly layers: RefKvLayer[];
  readonly rowSize: number;
  readonly sizeBytes: number;

  constructor(readonly spec: KvPoolSpec) {
    this.rowSize = spec.numKeyValueHeads * spec.headDim;
    this.layers = spec.layerWindows.map((window) => {
      const blocks = window > 0 ? spec.numSlidingBlocks : spec.numFullBlocks;
      const size = blocks * spec.blockSize * this.rowSize;
      return { keys: new Float32Array(size), values: new Float32Array(size), window };
    });
    this.sizeBytes = this.layers.reduce((sum, l) => sum + l.keys.byteLength + l.values.byteLength, 0);
  }

  /** Element offset of position p's row in a layer, through the sequence's block table. */
  offset(table: Int32Array, position: number): number {
    const block = table[Math.floor(position / this.spec.blockSize)];
    if (!(block >= 0)) throw new RangeError(`KV position ${position} has no block`);
    return (block * this.spec.blockSize + (position % this.spec.blockSize)) * this.rowSize;
  }
}
