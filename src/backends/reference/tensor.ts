/** The reference backend's tensor: host bytes with typed views. */
import { type DeviceTensor, type DType, DTYPE_BYTES } from "../backend.ts";

/** A tensor of the reference backend. */
export class RefTensor implements DeviceTensor {
  #f32?: Float32Array;
  #u16?: Uint16Array;
  #i32?: Int32Array;

  constructor(readonly dtype: DType, readonly shape: readonly number[], readonly bytes: Uint8Array) {
    const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (bytes.byteLength !== expected) {
      throw new RangeError(`Tensor of shape [${shape}] ${dtype} needs ${expected} bytes, got ${bytes.byteLength}`);
    }
  }

  /** Number of elements. */
  get size(): number {
    return this.bytes.byteLength / DTYPE_BYTES[this.dtype];
  }

  /** f32 view (dtype f32). */
  get f32(): Float32Array {
    return this.#f32 ??= new Float32Array(this.bytes.buffer, this.bytes.byteOffset, this.size);
  }

  /** Raw bf16 bits (dtype bf16). */
  get u16(): Uint16Array {
    return this.#u16 ??= new Uint16Array(this.bytes.buffer, this.bytes.byteOffset, this.size);
  }

  /** i32 view (dtype i32). */
  get i32(): Int32Array {
    return this.#i32 ??= new Int32Array(this.bytes.buffer, this.bytes.byteOffset, this.size);
  }

  /** u8 view (dtype u8). */
  get u8(): Uint8Array {
    return this.bytes;
  }
}

/** Checks that a handle belongs to the reference backend and narrows it. */
export function ref(tensor: DeviceTensor): RefTensor {
  if (!(tensor instanceof RefTensor)) throw new TypeError("Tensor does not belong to the reference backend");
  return tensor;
}
