/**
 * The native backend: the C ABI of ffi/include/gptoss.h through Deno.dlopen. Ops enqueue commands (cheap sync
 * calls that validate and record); flush() runs the step on the library's threads without blocking the event loop.
 * Every status is checked and turned into a BackendError naming the op. Weights are used in place (zero copy).
 */
import { BackendError } from "../../errors.ts";
import type {
  AttentionOptions,
  Backend,
  DeviceTensor,
  DType,
  HostTensor,
  KvPool,
  KvPoolSpec,
  MoeMlpOptions,
  Ops,
} from "../backend.ts";
import { DTYPE_BYTES } from "../backend.ts";
import { GPTOSS_ABI_VERSION, GPTOSS_DTYPE, GPTOSS_STATUS, type GptossLibrary, SYMBOLS } from "./ffi.ts";

/** Where the library is built (deno task build:native). */
export const NATIVE_LIBRARY_PATH = new URL("../../../build/libgptoss_cpu.so", import.meta.url).pathname;
/** The same ABI on NVIDIA GPUs (deno task build:cuda). */
export const CUDA_LIBRARY_PATH = new URL("../../../build/libgptoss_cuda.so", import.meta.url).pathname;
const BUILD_SCRIPT = new URL("../../../ffi/build.sh", import.meta.url).pathname;

/** A tensor of the native backend: a handle plus, for borrowed memory, the host bytes it must keep alive. */
class NativeTensor implements DeviceTensor {
  constructor(
    readonly dtype: DType,
    readonly shape: readonly number[],
    readonly handle: Deno.PointerObject,
    readonly host: Uint8Array | undefined,
  ) {}

  get bytes(): number {
    return this.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[this.dtype];
  }
}

class NativeKvPool implements KvPool {
  constructor(readonly spec: KvPoolSpec, readonly handle: Deno.PointerObject, readonly sizeBytes: number) {}
}

function handleOf(tensor: DeviceTensor | undefined, op: string): Deno.PointerValue {
  if (tensor === undefined) return null;
  if (!(tensor instanceof NativeTensor)) {
    throw new BackendError(`${op}: a tensor does not belong to the native backend`, op);
  }
  return tensor.handle;
}

/** Loads the library, building it first when it is missing and a compiler is there; checks the ABI version. */
export function loadNativeLibrary(options: { path?: string; build?: boolean } = {}): GptossLibrary {
  const path = options.path ?? NATIVE_LIBRARY_PATH;
  let exists = true;
  try {
    Deno.statSync(path);
  } catch {
    exists = false;
  }
  if (!exists && (options.build ?? true) && path === NATIVE_LIBRARY_PATH) {
    const result = new Deno.Command("bash", { args: [BUILD_SCRIPT], stdout: "piped", stderr: "piped" }).outputSync();
    if (!result.success) {
      throw new BackendError(
        `Cannot build the native library: ${new TextDecoder().decode(result.stderr).split("\n")[0]}`,
        "load",
      );
    }
  }
  let library: GptossLibrary;
  try {
    library = Deno.dlopen(path, SYMBOLS);
  } catch (err) {
    throw new BackendError(`Cannot load the native library "${path}": ${(err as Error).message}`, "load", {
      cause: err,
    });
  }
  const version = library.symbols.gptoss_abi_version();
  if (version !== GPTOSS_ABI_VERSION) {
    library.close();
    throw new BackendError(
      `The native library "${path}" speaks ABI version ${version}; these bindings need version ${GPTOSS_ABI_VERSION}`,
      "load",
    );
  }
  return library;
}

/** Options of {@link createNativeBackend}. */
export interface NativeBackendOptions {
  /** Threads for the library's OpenMP regions (default: all cores). */
  readonly numThreads?: number;
  readonly library?: GptossLibrary;
  /** "cuda" when `library` is the CUDA build. */
  readonly name?: "native" | "cuda";
}

/** Creates the native backend. */
export function createNativeBackend(options: NativeBackendOptions = {}): Backend & { readonly kind: string } {
  const lib = options.library ?? loadNativeLibrary();
  const s = lib.symbols;
  const out = new BigUint64Array(1);
  let ctx: Deno.PointerValue = null;
  const check = (status: number, op: string) => {
    if (status === 0) return;
    const message = Deno.UnsafePointerView.getCString(s.gptoss_last_error(ctx)!);
    throw new BackendError(`${message} (${GPTOSS_STATUS[status] ?? `status ${status}`})`, op);
  };
  check(s.gptoss_context_create(options.numThreads ?? 0, out), "context_create");
  ctx = Deno.UnsafePointer.create(out[0]);
  const kind = Deno.UnsafePointerView.getCString(s.gptoss_backend_kind()!);
  // Freed activation tensors are kept by shape and handed out again: no native allocation per decode step.
  const spare = new Map<string, NativeTensor[]>();
  // Host memory the library reads in place (weights): held here until freed, so that the garbage collector can never
  // release it while an enqueued command still points at it.
  const borrowed = new Set<NativeTensor>();
  const keyOf = (shape: readonly number[], dtype: DType) => `${dtype}:${shape.join("x")}`;

  const attentionArgs = new Int32Array(5);
  const moeArgs = new DataView(new ArrayBuffer(8));
  // Every layer of a step passes the same batch, and each layer the same experts: their encodings are made once (the
  // batch's until the next flush: a caller may build its next step's batch in the same object).
  let lastBatch: AttentionOptions["batch"] | undefined;
  let lastWords = new Int32Array(0);
  const batchWords = (batch: AttentionOptions["batch"]): Int32Array => {
    if (batch === lastBatch) return lastWords;
    const list: number[] = [batch.segments.length];
    for (const seg of batch.segments) {
      const numBlocks = seg.fullBlocks.length;
      list.push(seg.rowOffset, seg.numTokens, seg.startPosition, numBlocks, ...seg.fullBlocks);
      for (let b = 0; b < numBlocks; b++) list.push(b < seg.slidingBlocks.length ? seg.slidingBlocks[b] : -1);
    }
    lastBatch = batch;
    lastWords = Int32Array.from(list);
    return lastWords;
  };
  const expertCache = new WeakMap<MoeMlpOptions["weights"], BigUint64Array>();
  const expertHandles = (w: MoeMlpOptions["weights"]): BigUint64Array => {
    let handles = expertCache.get(w);
    if (handles) return handles;
    const tensors = [w.gateUpBlocks, w.gateUpScales, w.gateUpBias, w.downBlocks, w.downScales, w.downBias];
    handles = BigUint64Array.from(tensors.map((t) => BigInt(Deno.UnsafePointer.value(handleOf(t, "moeMlp")))));
    expertCache.set(w, handles);
    return handles;
  };

  const ops: Ops = {
    embed(o, table, ids) {
      check(
        s.gptoss_embed(ctx, handleOf(o, "embed"), handleOf(table, "embed"), handleOf(ids, "embed")),
        "embed_f32_bf16w",
      );
    },
    rmsnorm(o, x, weight, eps) {
      check(
        s.gptoss_rmsnorm(ctx, handleOf(o, "rmsnorm"), handleOf(x, "rmsnorm"), handleOf(weight, "rmsnorm"), eps),
        "rmsnorm_f32_bf16w",
      );
    },
    matmul(o, x, weight, bias) {
      check(
        s.gptoss_matmul(
          ctx,
          handleOf(o, "matmul"),
          handleOf(x, "matmul"),
          handleOf(weight, "matmul"),
          handleOf(bias, "matmul"),
        ),
        "matmul_f32_bf16w",
      );
    },
    rope(q, k, positions, invFreq, concentration) {
      check(
        s.gptoss_rope(
          ctx,
          handleOf(q, "rope"),
          handleOf(k, "rope"),
          handleOf(positions, "rope"),
          handleOf(invFreq, "rope"),
          concentration,
        ),
        "rope_f32",
      );
    },
    attention(o, q, k, v, opt: AttentionOptions) {
      const pool = opt.pool;
      if (!(pool instanceof NativeKvPool)) {
        throw new BackendError("attention: the pool does not belong to the native backend", "attention");
      }
      attentionArgs.set([opt.layer, opt.numHeads, opt.numKeyValueHeads, opt.headDim, opt.window]);
      const batch = batchWords(opt.batch);
      check(
        s.gptoss_attention(
          ctx,
          handleOf(o, "attention"),
          handleOf(q, "attention"),
          handleOf(k, "attention"),
          handleOf(v, "attention"),
          handleOf(opt.sinks, "attention"),
          pool.handle,
          attentionArgs,
          batch,
          BigInt(batch.length),
        ),
        "attention_f32",
      );
    },
    moeRoute(ids, weights, logits, topK) {
      check(
        s.gptoss_moe_route(
          ctx,
          handleOf(ids, "moeRoute"),
          handleOf(weights, "moeRoute"),
          handleOf(logits, "moeRoute"),
          topK,
        ),
        "moe_route_f32",
      );
    },
    moeMlp(o, x, ids, weights, opt: MoeMlpOptions) {
      const moeWeights = expertHandles(opt.weights);
      moeArgs.setInt32(0, opt.intermediateSize, true);
      moeArgs.setFloat32(4, opt.swigluLimit, true);
      check(
        s.gptoss_moe_mlp(
          ctx,
          handleOf(o, "moeMlp"),
          handleOf(x, "moeMlp"),
          handleOf(ids, "moeMlp"),
          handleOf(weights, "moeMlp"),
          moeWeights,
          new Uint8Array(moeArgs.buffer),
        ),
        "moe_mlp_f32_mxfp4w",
      );
    },
    add(o, a, b) {
      check(s.gptoss_add(ctx, handleOf(o, "add"), handleOf(a, "add"), handleOf(b, "add")), "add_f32");
    },
    gatherRows(o, x, rows) {
      check(
        s.gptoss_gather_rows(ctx, handleOf(o, "gatherRows"), handleOf(x, "gatherRows"), handleOf(rows, "gatherRows")),
        "gather_rows_f32",
      );
    },
  };

  const tensorCall = (
    fn: "gptoss_tensor_wrap" | "gptoss_tensor_alloc",
    dtype: DType,
    shape: readonly number[],
    data?: Uint8Array,
  ): Deno.PointerObject => {
    const dims = BigInt64Array.from(shape.map((d) => BigInt(d)));
    const status = fn === "gptoss_tensor_wrap"
      ? s.gptoss_tensor_wrap(ctx, GPTOSS_DTYPE[dtype], shape.length, dims, data!, out)
      : s.gptoss_tensor_alloc(ctx, GPTOSS_DTYPE[dtype], shape.length, dims, out);
    check(status, fn.slice("gptoss_".length));
    return Deno.UnsafePointer.create(out[0])!;
  };

  return {
    name: options.name ?? "native",
    kvBytesPerElement: 4,
    kind,
    upload(tensor: HostTensor): DeviceTensor {
      const size = tensor.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[tensor.dtype];
      if (tensor.data.byteLength !== size) {
        throw new BackendError(
          `upload: ${tensor.data.byteLength} bytes for shape [${tensor.shape}] ${tensor.dtype}`,
          "upload",
        );
      }
      if (!tensor.external) {
        // A pointer into a JS-heap buffer is valid only during the call that receives it: copy such weights.
        const copy = new NativeTensor(
          tensor.dtype,
          tensor.shape,
          tensorCall("gptoss_tensor_alloc", tensor.dtype, tensor.shape),
          undefined,
        );
        check(s.gptoss_tensor_write(ctx, copy.handle, tensor.data, BigInt(tensor.data.byteLength)), "tensor_write");
        return copy;
      }
      // Zero copy: the library reads the host bytes in place (a view of the checkpoint's mapping, never moved).
      const data = tensor.data.byteOffset % DTYPE_BYTES[tensor.dtype] === 0 ? tensor.data : tensor.data.slice();
      return new NativeTensor(
        tensor.dtype,
        tensor.shape,
        tensorCall("gptoss_tensor_wrap", tensor.dtype, tensor.shape, data),
        data,
      );
    },
    alloc(shape: readonly number[], dtype: DType): DeviceTensor {
      const reused = spare.get(keyOf(shape, dtype))?.pop();
      if (reused) return reused;
      return new NativeTensor(dtype, [...shape], tensorCall("gptoss_tensor_alloc", dtype, shape), undefined);
    },
    write(tensor: DeviceTensor, data: Int32Array | Float32Array): void {
      const t = tensor as NativeTensor;
      check(s.gptoss_tensor_write(ctx, handleOf(t, "write"), data, BigInt(data.byteLength)), "tensor_write");
    },
    ops,
    async flush(): Promise<void> {
      lastBatch = undefined;
      check(await s.gptoss_flush(ctx), "flush");
    },
    async read(tensor: DeviceTensor): Promise<Float32Array | Int32Array> {
      const t = tensor as NativeTensor;
      lastBatch = undefined;
      check(await s.gptoss_flush(ctx), "flush");
      const result = t.dtype === "i32" ? new Int32Array(t.bytes / 4) : new Float32Array(t.bytes / 4);
      if (t.dtype !== "f32" && t.dtype !== "i32") {
        throw new BackendError(`read: dtype ${t.dtype} is not readable`, "read");
      }
      check(s.gptoss_tensor_read(ctx, handleOf(t, "read"), result, BigInt(result.byteLength)), "tensor_read");
      return result;
    },
    createKvPool(spec: KvPoolSpec): KvPool {
      const words = Int32Array.from([
        spec.numLayers,
        spec.numKeyValueHeads,
        spec.headDim,
        spec.blockSize,
        spec.numFullBlocks,
        spec.numSlidingBlocks,
      ]);
      check(s.gptoss_kv_pool_create(ctx, words, Int32Array.from(spec.layerWindows), out), "kv_pool_create");
      const handle = Deno.UnsafePointer.create(out[0])!;
      return new NativeKvPool(spec, handle, Number(s.gptoss_kv_pool_bytes(handle)));
    },
    free(tensor: DeviceTensor): void {
      const t = tensor as NativeTensor;
      if (t.host !== undefined) {
        borrowed.delete(t);
        s.gptoss_tensor_free(ctx, t.handle);
        return;
      }
      const key = keyOf(t.shape, t.dtype);
      const list = spare.get(key) ?? [];
      if (list.length < 8) {
        list.push(t);
        spare.set(key, list);
      } else {
        s.gptoss_tensor_free(ctx, t.handle);
      }
    },
    dispose(): void {
      s.gptoss_context_destroy(ctx);
      ctx = null;
      borrowed.clear();
    },
  };
}
