/**
 * WebGPU memory: tensors (split along their first dimension into buffers no larger than a storage binding), the KV
 * pool, reuse of freed activations by shape, and the per-step buffers (uniforms, block tables, scratch) that are
 * destroyed once the step has run.
 */
import { BackendError } from "../../errors.ts";
import type { DeviceTensor, DType, HostTensor, KvPool, KvPoolSpec } from "../backend.ts";
import { DTYPE_BYTES } from "../backend.ts";

/** A piece of a tensor: rows [rowStart, rowStart + rows) of its first dimension in one buffer. */
export interface Chunk {
  readonly buffer: GPUBuffer;
  readonly rowStart: number;
  readonly rows: number;
}

/** A tensor owned by the WebGPU backend. */
export class GpuTensor implements DeviceTensor {
  constructor(readonly dtype: DType, readonly shape: readonly number[], readonly chunks: readonly Chunk[]) {}
  get bytes(): number {
    return this.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[this.dtype];
  }
  /** The single buffer of an unsplit tensor. */
  get buffer(): GPUBuffer {
    if (this.chunks.length !== 1) {
      throw new BackendError("A split tensor was used where one buffer is needed", "webgpu");
    }
    return this.chunks[0].buffer;
  }
}

/** K and V buffers per layer. */
export class GpuKvPool implements KvPool {
  constructor(
    readonly spec: KvPoolSpec,
    readonly keys: readonly GPUBuffer[],
    readonly values: readonly GPUBuffer[],
    readonly sizeBytes: number,
  ) {}
}

/** The WebGPU tensor behind a handle, or a clear error naming the op. */
export function gpuTensor(tensor: DeviceTensor | undefined, op: string): GpuTensor {
  if (!(tensor instanceof GpuTensor)) {
    throw new BackendError(`${op}: a tensor does not belong to the WebGPU backend`, op);
  }
  return tensor;
}

/** Rows of a tensor (all dimensions but the last). */
export const rowsOf = (x: DeviceTensor): number =>
  x.shape.length === 1 ? 1 : x.shape.slice(0, -1).reduce((a, b) => a * b, 1);
/** Length of the last dimension. */
export const colsOf = (x: DeviceTensor): number => x.shape[x.shape.length - 1];

function padded(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
  out.set(bytes);
  return out;
}

/** Buffer creation and reuse on one device. */
export class GpuBuffers {
  readonly #device: GPUDevice;
  readonly #maxBinding: number;
  readonly #spare = new Map<string, GpuTensor[]>();
  #temporaries: GPUBuffer[] = [];
  /** A 16-byte buffer bound where a kernel's optional input is absent. */
  readonly dummy: GPUBuffer;

  constructor(device: GPUDevice, maxBinding: number) {
    this.#device = device;
    this.#maxBinding = maxBinding;
    this.dummy = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  }

  /** A storage buffer holding `data` (padded to 4 bytes). */
  storage(data: ArrayBufferView): GPUBuffer {
    const size = Math.max(16, Math.ceil(data.byteLength / 4) * 4);
    const buffer = this.#device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const aligned = data.byteLength % 4 === 0 ? bytes : padded(bytes);
    this.#device.queue.writeBuffer(buffer, 0, aligned as Uint8Array<ArrayBuffer>);
    return buffer;
  }

  /** A per-step buffer: destroyed by {@link releaseTemporaries}. */
  temporary(buffer: GPUBuffer): GPUBuffer {
    this.#temporaries.push(buffer);
    return buffer;
  }

  /** Per-step scratch storage of `bytes` (contents undefined). */
  scratch(bytes: number): GPUBuffer {
    return this.temporary(this.#device.createBuffer({ size: Math.max(16, bytes), usage: GPUBufferUsage.STORAGE }));
  }

  /** A per-step uniform buffer of u32 words (or f32 where given as `{ f32 }`), padded to 16 bytes. */
  uniform(words: readonly (number | { f32: number })[]): GPUBuffer {
    const data = new ArrayBuffer(Math.max(16, Math.ceil(words.length * 4 / 16) * 16));
    const view = new DataView(data);
    words.forEach((w, i) =>
      typeof w === "number" ? view.setUint32(i * 4, w, true) : view.setFloat32(i * 4, w.f32, true)
    );
    const usage = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
    const buffer = this.temporary(this.#device.createBuffer({ size: data.byteLength, usage }));
    this.#device.queue.writeBuffer(buffer, 0, data);
    return buffer;
  }

  releaseTemporaries(): void {
    for (const b of this.#temporaries) b.destroy();
    this.#temporaries = [];
  }

  /** Weights: split along the first dimension into buffers no larger than a binding. */
  upload(tensor: HostTensor): GpuTensor {
    const rows = tensor.shape[0] ?? 1;
    const rowBytes = tensor.data.byteLength / Math.max(1, rows);
    if (rowBytes > this.#maxBinding) {
      throw new BackendError(`upload: one row of ${rowBytes} bytes exceeds a binding`, "upload");
    }
    const rowsPerChunk = Math.max(1, Math.floor(this.#maxBinding / rowBytes));
    const chunks: Chunk[] = [];
    for (let start = 0; start < rows || chunks.length === 0; start += rowsPerChunk) {
      const count = Math.min(rowsPerChunk, rows - start);
      const buffer = this.storage(tensor.data.subarray(start * rowBytes, (start + count) * rowBytes));
      chunks.push({ buffer, rowStart: start, rows: count });
      if (rows === 0) break;
    }
    return new GpuTensor(tensor.dtype, tensor.shape, chunks);
  }

  /** An activation in one buffer; a freed one of the same shape is reused. */
  alloc(shape: readonly number[], dtype: DType): GpuTensor {
    const reused = this.#spare.get(`${dtype}:${shape.join("x")}`)?.pop();
    if (reused) return reused;
    const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (bytes > this.#maxBinding) {
      throw new BackendError(`alloc: [${shape}] ${dtype} exceeds a binding (${this.#maxBinding} bytes)`, "alloc");
    }
    const buffer = this.#device.createBuffer({
      size: Math.max(16, Math.ceil(bytes / 4) * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    return new GpuTensor(dtype, [...shape], [{ buffer, rowStart: 0, rows: shape[0] ?? 1 }]);
  }

  /** Keeps a freed activation for reuse (up to 8 per shape). */
  free(tensor: GpuTensor): void {
    if (tensor.chunks.length !== 1) return;
    const key = `${tensor.dtype}:${tensor.shape.join("x")}`;
    const list = this.#spare.get(key) ?? [];
    if (list.length < 8) list.push(tensor);
    this.#spare.set(key, list);
  }

  /** K and V buffers per layer, f32, one buffer each (so a layer must fit in a binding). */
  kvPool(spec: KvPoolSpec): GpuKvPool {
    const row = spec.numKeyValueHeads * spec.headDim * 4;
    const keys: GPUBuffer[] = [], values: GPUBuffer[] = [];
    let total = 0;
    for (const window of spec.layerWindows) {
      const size = Math.max(16, (window > 0 ? spec.numSlidingBlocks : spec.numFullBlocks) * spec.blockSize * row);
      if (size > this.#maxBinding) {
        throw new BackendError(`KV layer of ${size} bytes exceeds a binding (${this.#maxBinding})`, "kv_pool");
      }
      keys.push(this.#device.createBuffer({ size, usage: GPUBufferUsage.STORAGE }));
      values.push(this.#device.createBuffer({ size, usage: GPUBufferUsage.STORAGE }));
      total += 2 * size;
    }
    return new GpuKvPool(spec, keys, values, total);
  }
}
