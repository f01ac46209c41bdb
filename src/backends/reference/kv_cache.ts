/** The reference backend's per-sequence KV cache: f32 rows; sliding-window layers keep a ring of `window` rows. */
import type { KvCache, KvCacheSpec } from "../backend.ts";

/** One layer's K and V rows of [numKeyValueHeads · headDim]. */
export interface RefKvLayer {
  /** [capacity, nkv·d] f32 */
  keys: Float32Array;
  /** [capacity, nkv·d] f32 */
  values: Float32Array;
  /** Rows held; a ring when window > 0 (position p lives at row p mod window). */
  capacity: number;
  /** Positions written so far. */
  length: number;
  readonly window: number;
}

const INITIAL_FULL_ROWS = 64;

/** A KV cache of the reference backend. */
export class RefKvCache implements KvCache {
  readonly layers: RefKvLayer[];
  readonly rowSize: number;

  constructor(readonly spec: KvCacheSpec) {
    this.rowSize = spec.numKeyValueHeads * spec.headDim;
    this.layers = spec.layerWindows.map((window) => {
      const capacity = window > 0 ? window : Math.min(INITIAL_FULL_ROWS, spec.maxPositions);
      return {
        keys: new Float32Array(capacity * this.rowSize),
        values: new Float32Array(capacity * this.rowSize),
        capacity,
        length: 0,
        window,
      };
    });
  }

  /** Positions stored (layer 0 leads; every layer reaches the same length by the end of a step). */
  get length(): number {
    return this.layers[0]?.length ?? 0;
  }

  /** Bytes held. */
  get sizeBytes(): number {
    return this.layers.reduce((sum, l) => sum + l.keys.byteLength + l.values.byteLength, 0);
  }

  /** Row index of absolute position p in a layer. */
  static row(layer: RefKvLayer, position: number): number {
    return layer.window > 0 ? position % layer.window : position;
  }

  /** Makes room for `extra` more positions in a full-attention layer. */
  reserve(layerIndex: number, extra: number): void {
    const layer = this.layers[layerIndex];
    if (layer.window > 0) return;
    const needed = layer.length + extra;
    if (needed > this.spec.maxPositions) {
      throw new RangeError(`KV cache would hold ${needed} positions, over the limit of ${this.spec.maxPositions}`);
    }
    if (needed <= layer.capacity) return;
    let capacity = layer.capacity;
    while (capacity < needed) capacity *= 2;
    capacity = Math.min(capacity, this.spec.maxPositions);
    const keys = new Float32Array(capacity * this.rowSize);
    const values = new Float32Array(capacity * this.rowSize);
    keys.set(layer.keys.subarray(0, layer.length * this.rowSize));
    values.set(layer.values.subarray(0, layer.length * this.rowSize));
    layer.keys = keys;
    layer.values = values;
    layer.capacity = capacity;
  }
}
