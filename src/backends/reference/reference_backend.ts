/** The reference backend: plain TypeScript on the host, the correctness oracle for every other backend. */
import type { Backend, DeviceTensor, DType, HostTensor, KvPool, KvPoolSpec } from "../backend.ts";
import { DTYPE_BYTES } from "../backend.ts";
import { RefKvPool } from "./kv_cache.ts";
import { REFERENCE_OPS } from "./ops.ts";
import { ref, RefTensor } from "./tensor.ts";

/** Creates the reference backend. */
export function createReferenceBackend(): Backend {
  return {
    name: "reference",
    kvBytesPerElement: 4,
    upload(tensor: HostTensor): DeviceTensor {
      // Zero copy: the host bytes are the device bytes. Unaligned views are copied once so typed views work.
      const data = tensor.data.byteOffset % DTYPE_BYTES[tensor.dtype] === 0 ? tensor.data : tensor.data.slice();
      return new RefTensor(tensor.dtype, tensor.shape, data);
    },
    alloc(shape: readonly number[], dtype: DType): DeviceTensor {
      const size = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
      return new RefTensor(dtype, shape, new Uint8Array(size));
    },
    write(tensor: DeviceTensor, data: Int32Array | Float32Array): void {
      const t = ref(tensor);
      if (data.byteLength !== t.bytes.byteLength) {
        throw new RangeError(`write: ${data.byteLength} bytes into a tensor of ${t.bytes.byteLength}`);
      }
      t.bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    },
    ops: REFERENCE_OPS,
    flush(): Promise<void> {
      return Promise.resolve();
    },
    read(tensor: DeviceTensor): Promise<Float32Array | Int32Array> {
      const t = ref(tensor);
      if (t.dtype === "f32") return Promise.resolve(t.f32.slice());
      if (t.dtype === "i32") return Promise.resolve(t.i32.slice());
      return Promise.reject(new TypeError(`read: dtype ${t.dtype} is not readable as numbers`));
    },
    createKvPool(spec: KvPoolSpec): KvPool {
      return new RefKvPool(spec);
    },
    free(_tensor: DeviceTensor): void {
      // Garbage-collected.
    },
    dispose(): void {},
  };
}
