/**
 * The native backend: the C ABI of ffi/include/gptoss.h through Deno.dlopen (the CPU library, or the CUDA one).
 * Ops enqueue commands (cheap sync calls that validate and record); flush() runs the step on the library's threads
 * without blocking the event loop. Every status is checked and turned into a BackendError naming the op. Weights are
 * used in place (zero copy). Loading never builds anything: `deno task build:native` does (see library.ts).
 */
import { BackendError } from "../../errors.ts";
import type {
  AttentionOptions,
  Backend,
  BackendName,
  DeviceTensor,
  DType,
  HostTensor,
  KvPool,
  KvPoolSpec,
  MoeMlpOptions,
  Ops,
} from "../backend.ts";
import { DTYPE_BYTES } from "../backend.ts";
import { GPTOSS_DTYPE, GPTOSS_FLAG, GPTOSS_STATUS, gptossFlagDevice, type GptossLibrary } from "./ffi.ts";
import { loadNativeLibrary } from "./library.ts";

export { CUDA_LIBRARY_PATH, loadNativeLibrary, NATIVE_LIBRARY_PATH } from "./library.ts";

/** A tensor of the native backend: a handle plus, for borrowed memory, the host bytes it must keep alive. */
class NativeTensor implements DeviceTensor {
  constructor(
    readonly dtype: DType,
    readonly shape: readonly number[],
    readonly handle: Deno.PointerObject,
    /** Host memory the library reads in place (weights): referenced here so it lives as long as the tensor. */
    readonly host: Uint8Array | undefined,
  ) {}

  get bytes(): number {
    return this.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[this.dtype];
  }
}

class NativeKvPool implements KvPool {
  constructor(readonly spec: KvPoolSpec, readonly handle: Deno.PointerObject, readonly sizeBytes: number) {}
}

/** Options of {@link createNativeBackend}. */
export interface NativeBackendOptions {
  /** Threads for the library's OpenMP regions (default: OMP_NUM_THREADS if set, else one per physical core). */
  readonly numThreads?: number;
  readonly library?: GptossLibrary;
  /** "cuda" when `library` is the CUDA build. */
  readonly name?: "native" | "cuda";
  /** CPU: cap on the vector path ("scalar", "avx2", "avx512", "avx512-vnni", "avx512-amx"); fixed per process. */
  readonly isa?: string;
  /** "ops": time per op printed at dispose; "steps" (CUDA): host time per step and graph counts only. */
  readonly profile?: "ops" | "steps";
  /** CUDA: capture repeated steps as CUDA graphs (default true). */
  readonly cudaGraphs?: boolean;
  /**
   * CPU: "q8" stores matmul weights (HostTensor.use) as Q8_0 and quantizes activations to 8 bits per 32-block in
   * every integer dot, as llama.cpp does; "bf16" (default) keeps the checkpoint's weights and the exact dots.
   */
  readonly weights?: "bf16" | "q8";
  /** CUDA: the device this context runs on (default 0). */
  readonly device?: number;
}

/** What the NCCL communicator (./nccl.ts) needs of a backend: its library, its context and its tensors' handles. */
export interface NativeHandles {
  readonly library: GptossLibrary;
  readonly context: Deno.PointerValue;
  handle(tensor: DeviceTensor): Deno.PointerValue;
  /** Throws the BackendError for a failed status of this context. */
  check(status: number, op: string): void;
}

/** The handle of a tensor argument for op `op` (null for an absent optional one). */
type Handles = (tensor: DeviceTensor | undefined) => Deno.PointerValue;

/** The backend over one library context. */
export class NativeBackend implements Backend {
  readonly name: BackendName;
  readonly kvBytesPerElement = 4;
  /** "cpu/<path>" or "cuda". */
  readonly kind: string;
  readonly ops: Ops;
  readonly #lib: GptossLibrary;
  #ctx: Deno.PointerValue = null;
  readonly #out = new BigUint64Array(1);
  /** Freed activations by shape, handed out again: no native allocation per decode step. */
  readonly #spare = new Map<string, NativeTensor[]>();
  // Every layer of a step passes the same batch, and each layer the same experts: their encodings are made once
  // (the batch's until the next flush: a caller may build its next step's batch in the same object).
  #lastBatch: AttentionOptions["batch"] | undefined;
  #lastWords = new Int32Array(0);
  readonly #expertHandles = new WeakMap<MoeMlpOptions["weights"], BigUint64Array>();
  readonly #q8: boolean;

  constructor(options: NativeBackendOptions = {}) {
    this.#lib = options.library ?? loadNativeLibrary();
    this.name = options.name ?? "native";
    const s = this.#lib.symbols;
    this.#q8 = options.weights === "q8";
    if (this.#q8 && this.name === "cuda") throw new BackendError("q8 weights are a CPU-only format", "context_create");
    const flags = (options.profile === "ops" ? GPTOSS_FLAG.profile : 0) |
      (options.profile === "steps" ? GPTOSS_FLAG.profileSteps : 0) |
      (options.cudaGraphs === false ? GPTOSS_FLAG.noGraphs : 0) |
      (this.#q8 ? GPTOSS_FLAG.int8Activations : 0) | gptossFlagDevice(options.device ?? 0);
    const isa = options.isa ? new TextEncoder().encode(`${options.isa}\0`) : null;
    this.#check(s.gptoss_context_create(options.numThreads ?? 0, flags, isa, this.#out), "context_create");
    this.#ctx = Deno.UnsafePointer.create(this.#out[0]);
    this.kind = Deno.UnsafePointerView.getCString(s.gptoss_backend_kind()!);
    this.ops = this.#makeOps();
  }

  /** This context's handles, for collectives across backends of one library (./nccl.ts). */
  get native(): NativeHandles {
    return {
      library: this.#lib,
      context: this.#ctx,
      handle: (tensor) => {
        if (!(tensor instanceof NativeTensor)) throw new BackendError("a tensor of another backend", "collective");
        return tensor.handle;
      },
      check: (status, op) => this.#check(status, op),
    };
  }

  #check(status: number, op: string): void {
    if (status === 0) return;
    const message = Deno.UnsafePointerView.getCString(this.#lib.symbols.gptoss_last_error(this.#ctx)!);
    throw new BackendError(`${message} (${GPTOSS_STATUS[status] ?? `status ${status}`})`, op);
  }

  /** Runs one enqueue call: its tensor arguments become handles (or a clear error), its status is checked. */
  #op(op: string, call: (ctx: Deno.PointerValue, handle: Handles) => number): void {
    const handle: Handles = (tensor) => {
      if (tensor === undefined) return null;
      if (!(tensor instanceof NativeTensor)) {
        throw new BackendError(`${op}: a tensor does not belong to the ${this.name} backend`, op);
      }
      return tensor.handle;
    };
    this.#check(call(this.#ctx, handle), op);
  }

  /** The step's batch as the ABI's words: count, then per segment its rows, positions and both block tables. */
  #batchWords(batch: AttentionOptions["batch"]): Int32Array {
    if (batch === this.#lastBatch) return this.#lastWords;
    const list: number[] = [batch.segments.length];
    for (const seg of batch.segments) {
      const numBlocks = seg.fullBlocks.length;
      list.push(seg.rowOffset, seg.numTokens, seg.startPosition, numBlocks, ...seg.fullBlocks);
      for (let b = 0; b < numBlocks; b++) list.push(b < seg.slidingBlocks.length ? seg.slidingBlocks[b] : -1);
    }
    this.#lastBatch = batch;
    this.#lastWords = Int32Array.from(list);
    return this.#lastWords;
  }

  #experts(w: MoeMlpOptions["weights"]): BigUint64Array {
    let handles = this.#expertHandles.get(w);
    if (handles) return handles;
    const tensors = [w.gateUpBlocks, w.gateUpScales, w.gateUpBias, w.downBlocks, w.downScales, w.downBias];
    handles = BigUint64Array.from(tensors.map((t) => {
      if (!(t instanceof NativeTensor)) throw new BackendError("moeMlp: an expert tensor is not native", "moeMlp");
      return BigInt(Deno.UnsafePointer.value(t.handle));
    }));
    this.#expertHandles.set(w, handles);
    return handles;
  }

  #makeOps(): Ops {
    const s = this.#lib.symbols;
    const attentionArgs = new Int32Array(5);
    const moeArgs = new DataView(new ArrayBuffer(8));
    return {
      embed: (o, table, ids) => this.#op("embed", (c, h) => s.gptoss_embed(c, h(o), h(table), h(ids))),
      rmsnorm: (o, x, w, eps) => this.#op("rmsnorm", (c, h) => s.gptoss_rmsnorm(c, h(o), h(x), h(w), eps)),
      matmul: (o, x, w, bias) => this.#op("matmul", (c, h) => s.gptoss_matmul(c, h(o), h(x), h(w), h(bias))),
      rope: (q, k, pos, inv, conc) => this.#op("rope", (c, h) => s.gptoss_rope(c, h(q), h(k), h(pos), h(inv), conc)),
      attention: (o, q, k, v, opt) => {
        if (!(opt.pool instanceof NativeKvPool)) {
          throw new BackendError(`attention: the pool does not belong to the ${this.name} backend`, "attention");
        }
        const pool = opt.pool.handle;
        attentionArgs.set([opt.layer, opt.numHeads, opt.numKeyValueHeads, opt.headDim, opt.window]);
        const batch = this.#batchWords(opt.batch);
        this.#op("attention", (c, h) =>
          s.gptoss_attention(
            c,
            h(o),
            h(q),
            h(k),
            h(v),
            h(opt.sinks),
            pool,
            attentionArgs,
            batch,
            BigInt(batch.length),
          ));
      },
      moeRoute: (ids, w, logits, topK) =>
        this.#op("moeRoute", (c, h) => s.gptoss_moe_route(c, h(ids), h(w), h(logits), topK)),
      moeMlp: (o, x, ids, w, opt) => {
        const experts = this.#experts(opt.weights);
        moeArgs.setInt32(0, opt.intermediateSize, true);
        moeArgs.setFloat32(4, opt.swigluLimit, true);
        const args = new Uint8Array(moeArgs.buffer);
        this.#op("moeMlp", (c, h) => s.gptoss_moe_mlp(c, h(o), h(x), h(ids), h(w), experts, args));
      },
      add: (o, a, b) => this.#op("add", (c, h) => s.gptoss_add(c, h(o), h(a), h(b))),
      gatherRows: (o, x, rows) => this.#op("gatherRows", (c, h) => s.gptoss_gather_rows(c, h(o), h(x), h(rows))),
    };
  }

  #newTensor(dtype: DType, shape: readonly number[], wrap?: Uint8Array): NativeTensor {
    const s = this.#lib.symbols;
    const dims = BigInt64Array.from(shape.map((d) => BigInt(d)));
    const status = wrap
      ? s.gptoss_tensor_wrap(this.#ctx, GPTOSS_DTYPE[dtype], shape.length, dims, wrap, this.#out)
      : s.gptoss_tensor_alloc(this.#ctx, GPTOSS_DTYPE[dtype], shape.length, dims, this.#out);
    this.#check(status, wrap ? "tensor_wrap" : "tensor_alloc");
    return new NativeTensor(dtype, [...shape], Deno.UnsafePointer.create(this.#out[0])!, wrap);
  }

  upload(tensor: HostTensor): DeviceTensor {
    const size = tensor.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[tensor.dtype];
    if (tensor.data.byteLength !== size) {
      throw new BackendError(
        `upload: ${tensor.data.byteLength} bytes for shape [${tensor.shape}] ${tensor.dtype}`,
        "upload",
      );
    }
    const [rows, cols] = tensor.shape;
    if (
      this.#q8 && tensor.use === "matmul" && tensor.dtype === "bf16" && tensor.shape.length === 2 && cols % 32 === 0
    ) {
      // The q8 mode: an 8-bit copy made now (the library reads the bytes during the call only).
      const data = tensor.data.byteOffset % 2 === 0 ? tensor.data : tensor.data.slice();
      this.#check(
        this.#lib.symbols.gptoss_tensor_quantize(
          this.#ctx,
          data,
          BigInt(rows),
          BigInt(cols),
          GPTOSS_DTYPE.q8_0,
          this.#out,
        ),
        "tensor_quantize",
      );
      return new NativeTensor("bf16", [...tensor.shape], Deno.UnsafePointer.create(this.#out[0])!, undefined);
    }
    if (this.name === "native" && tensor.dtype === "u8" && tensor.data.byteLength >= 1 << 20) {
      // The MXFP4 experts move into anonymous huge-page memory, and the source's pages are released when it is the
      // checkpoint's mapping or a discardable shard: on the VM this was measured on, the MoE streamed 4× slower from
      // page-cache pages than from anonymous ones, while the bf16 GEMV did not care (bench/README.md, "Weights in
      // anonymous memory").
      const dims = BigInt64Array.from(tensor.shape.map((d) => BigInt(d)));
      const release = tensor.external || tensor.discardable ? 1 : 0;
      this.#check(
        this.#lib.symbols.gptoss_tensor_copy(
          this.#ctx,
          GPTOSS_DTYPE.u8,
          tensor.shape.length,
          dims,
          tensor.data,
          release,
          this.#out,
        ),
        "tensor_copy",
      );
      return new NativeTensor("u8", [...tensor.shape], Deno.UnsafePointer.create(this.#out[0])!, undefined);
    }
    if (!tensor.external) {
      // A pointer into a JS-heap buffer is valid only during the call that receives it: copy such weights.
      const copy = this.#newTensor(tensor.dtype, tensor.shape);
      this.write(copy, tensor.data);
      return copy;
    }
    // Zero copy: the library reads the host bytes in place (a view of the checkpoint's mapping, never moved).
    const data = tensor.data.byteOffset % DTYPE_BYTES[tensor.dtype] === 0 ? tensor.data : tensor.data.slice();
    return this.#newTensor(tensor.dtype, tensor.shape, data);
  }

  alloc(shape: readonly number[], dtype: DType): DeviceTensor {
    return this.#spare.get(`${dtype}:${shape.join("x")}`)?.pop() ?? this.#newTensor(dtype, shape);
  }

  write(tensor: DeviceTensor, data: Int32Array | Float32Array | Uint8Array): void {
    this.#op(
      "tensor_write",
      (c, h) => this.#lib.symbols.gptoss_tensor_write(c, h(tensor), data, BigInt(data.byteLength)),
    );
  }

  async flush(): Promise<void> {
    this.#lastBatch = undefined;
    this.#check(await this.#lib.symbols.gptoss_flush(this.#ctx), "flush");
  }

  async read(tensor: DeviceTensor): Promise<Float32Array | Int32Array> {
    if (tensor.dtype !== "f32" && tensor.dtype !== "i32") {
      throw new BackendError(`read: dtype ${tensor.dtype} is not readable`, "read");
    }
    await this.flush();
    const count = tensor.shape.reduce((a, b) => a * b, 1);
    const result = tensor.dtype === "i32" ? new Int32Array(count) : new Float32Array(count);
    this.#op(
      "tensor_read",
      (c, h) => this.#lib.symbols.gptoss_tensor_read(c, h(tensor), result, BigInt(result.byteLength)),
    );
    return result;
  }

  createKvPool(spec: KvPoolSpec): KvPool {
    const s = this.#lib.symbols;
    const words = Int32Array.from([
      spec.numLayers,
      spec.numKeyValueHeads,
      spec.headDim,
      spec.blockSize,
      spec.numFullBlocks,
      spec.numSlidingBlocks,
    ]);
    this.#check(
      s.gptoss_kv_pool_create(this.#ctx, words, Int32Array.from(spec.layerWindows), this.#out),
      "kv_pool_create",
    );
    const handle = Deno.UnsafePointer.create(this.#out[0])!;
    return new NativeKvPool(spec, handle, Number(s.gptoss_kv_pool_bytes(handle)));
  }

  free(tensor: DeviceTensor): void {
    if (!(tensor instanceof NativeTensor)) throw new BackendError(`free: not a ${this.name} tensor`, "free");
    const list = this.#spare.get(`${tensor.dtype}:${tensor.shape.join("x")}`) ?? [];
    if (tensor.host !== undefined || list.length >= 8) {
      this.#lib.symbols.gptoss_tensor_free(this.#ctx, tensor.handle);
      return;
    }
    list.push(tensor);
    this.#spare.set(`${tensor.dtype}:${tensor.shape.join("x")}`, list);
  }

  dispose(): void {
    if (this.#ctx === null) return;
    this.#lib.symbols.gptoss_context_destroy(this.#ctx);
    this.#ctx = null;
  }
}

/** Creates the native backend. */
export function createNativeBackend(options: NativeBackendOptions = {}): NativeBackend {
  return new NativeBackend(options);
}
