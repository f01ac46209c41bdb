/**
 * The WebGPU backend: WGSL kernels in kernels/webgpu/ (one file per op, entry points named like the ops), f32 math,
 * bf16 weights read as packed u32 and widened in the shader, MXFP4 experts decoded in the shader. Ops record compute
 * passes into one command encoder; flush() submits the step as one command buffer. Tensors larger than a storage
 * binding (the embedding, lm_head, a layer's expert blocks) are split along their first dimension into buffers that
 * each fit, sized from the adapter's limits.
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
  ModelFootprint,
  MoeMlpOptions,
  Ops,
} from "../backend.ts";
import { DTYPE_BYTES, SAMPLE_PARAMS } from "../backend.ts";

const KERNELS = new URL("../../../kernels/webgpu/", import.meta.url);

/** A piece of a tensor: rows [rowStart, rowStart + rows) of its first dimension in one buffer. */
interface Chunk {
  readonly buffer: GPUBuffer;
  readonly rowStart: number;
  readonly rows: number;
}

class GpuTensor implements DeviceTensor {
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

class GpuKvPool implements KvPool {
  constructor(
    readonly spec: KvPoolSpec,
    readonly keys: GPUBuffer[],
    readonly values: GPUBuffer[],
    readonly sizeBytes: number,
  ) {}
}

function t(tensor: DeviceTensor | undefined, op: string): GpuTensor {
  if (!(tensor instanceof GpuTensor)) {
    throw new BackendError(`${op}: a tensor does not belong to the WebGPU backend`, op);
  }
  return tensor;
}

const rowsOf = (x: DeviceTensor) => x.shape.length === 1 ? 1 : x.shape.slice(0, -1).reduce((a, b) => a * b, 1);
const colsOf = (x: DeviceTensor) => x.shape[x.shape.length - 1];

/** What the probe learned about the adapter. */
export interface WebGpuInfo {
  readonly description: string;
  readonly isFallbackAdapter: boolean;
  readonly maxStorageBufferBindingSize: number;
  readonly maxBufferSize: number;
  readonly shaderF16: boolean;
}

/** Requests an adapter and a device with the adapter's full buffer limits; undefined when WebGPU is not there. */
export async function requestWebGpu(): Promise<{ device: GPUDevice; info: WebGpuInfo } | undefined> {
  const gpu = (globalThis.navigator as Navigator & { gpu?: GPU }).gpu;
  const adapter = await gpu?.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) return undefined;
  const limits = adapter.limits;
  const shaderF16 = adapter.features.has("shader-f16");
  const device = await adapter.requestDevice({
    requiredFeatures: shaderF16 ? ["shader-f16"] : [],
    requiredLimits: {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
    },
  });
  return {
    device,
    info: {
      description: adapter.info.description || adapter.info.vendor || "unknown adapter",
      isFallbackAdapter: adapter.info.isFallbackAdapter,
      maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize,
      maxBufferSize: device.limits.maxBufferSize,
      shaderF16,
    },
  };
}

/** What must fit besides the weights: the KV cache budget and the host memory a software adapter allocates from. */
export interface WebGpuFitContext {
  readonly kvCacheBytes: number;
  /** Total host memory; used only for a fallback (software) adapter, whose buffers live in host memory. */
  readonly hostMemoryBytes: number;
}

/**
 * Why a model cannot run on this adapter, or undefined when it can as far as WebGPU lets us know. A tensor is split
 * along its first dimension into buffers no larger than a storage binding, so one row must fit in a binding; a
 * software adapter's buffers are host memory, so weights plus KV cache must fit in it. WebGPU has no query for a real
 * GPU's memory: there the upload itself is the test.
 */
export function webGpuFitRefusal(
  info: WebGpuInfo,
  need: ModelFootprint,
  context: WebGpuFitContext,
): string | undefined {
  const gib = (bytes: number) => `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
  const adapter = `WebGPU adapter "${info.description}"`;
  if (need.largestRow.bytes > info.maxStorageBufferBindingSize) {
    return `The model does not fit on the ${adapter}: one row of tensor "${need.largestRow.tensor}" is ` +
      `${need.largestRow.bytes} bytes but the adapter's maxStorageBufferBindingSize is ` +
      `${info.maxStorageBufferBindingSize} bytes`;
  }
  if (info.isFallbackAdapter && need.weightBytes + context.kvCacheBytes > context.hostMemoryBytes) {
    return `The model does not fit on the ${adapter}: weights ${gib(need.weightBytes)} + KV cache ` +
      `${gib(context.kvCacheBytes)} exceed the ${gib(context.hostMemoryBytes)} of host memory its buffers live in`;
  }
  return undefined;
}

/** Options of {@link createWebGpuBackend}. */
export interface WebGpuOptions {
  /**
   * Arithmetic of the weight × activation products (dense matmuls and the MXFP4 experts): "f16" (products in f16,
   * sums in f32) needs a device created with shader-f16; default "f16" where the adapter has it, else "f32".
   * Attention, norms, rope, routing, SwiGLU and sampling stay f32.
   */
  readonly precision?: "f16" | "f32";
}

/** Creates the backend on a device. */
export function createWebGpuBackend(
  device: GPUDevice,
  info: WebGpuInfo,
  options: WebGpuOptions = {},
): Backend & { readonly info: WebGpuInfo; readonly precision: "f16" | "f32" } {
  const precision = options.precision ?? (info.shaderF16 ? "f16" : "f32");
  if (precision === "f16" && !device.features.has("shader-f16")) {
    throw new BackendError("precision f16 needs a device with the shader-f16 feature", "create");
  }
  const maxBinding = info.maxStorageBufferBindingSize;
  const pipelines = new Map<string, GPUComputePipeline>();
  const modules = new Map<string, GPUShaderModule>();
  let encoder: GPUCommandEncoder | undefined;
  const dummy = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  const spare = new Map<string, GpuTensor[]>();
  // Per-dispatch buffers (parameters, block tables, MoE activations), destroyed once the step has run.
  let temporaries: GPUBuffer[] = [];
  const temporary = (buffer: GPUBuffer) => {
    temporaries.push(buffer);
    return buffer;
  };
  const release = () => {
    for (const b of temporaries) b.destroy();
    temporaries = [];
  };
  // Validation errors surface when the step is submitted: one error scope per command buffer.
  let scoped = false;
  const begin = () => {
    if (!encoder) {
      device.pushErrorScope("validation");
      scoped = true;
      encoder = device.createCommandEncoder();
    }
  };
  const submit = async () => {
    if (encoder) {
      device.queue.submit([encoder.finish()]);
      encoder = undefined;
    }
    if (scoped) {
      scoped = false;
      const error = await device.popErrorScope();
      if (error) throw new BackendError(`WebGPU rejected the step: ${error.message}`, "flush");
    }
  };

  const pipeline = (file: string, entry: string): GPUComputePipeline => {
    const key = `${file}:${entry}`;
    let p = pipelines.get(key);
    if (!p) {
      let module = modules.get(file);
      if (!module) {
        // "a.wgsl+b.wgsl": the files concatenated (a precision prelude, then the kernels that use it).
        const code = file.split("+").map((f) => Deno.readTextFileSync(new URL(f, KERNELS))).join("\n");
        module = device.createShaderModule({ code });
        modules.set(file, module);
      }
      p = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: entry } });
      pipelines.set(key, p);
    }
    return p;
  };

  const uniform = (words: (number | { f32: number })[]): GPUBuffer => {
    const data = new ArrayBuffer(Math.max(16, Math.ceil(words.length * 4 / 16) * 16));
    const view = new DataView(data);
    words.forEach((w, i) =>
      typeof w === "number" ? view.setUint32(i * 4, w, true) : view.setFloat32(i * 4, w.f32, true)
    );
    const buffer = temporary(
      device.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST }),
    );
    device.queue.writeBuffer(buffer, 0, data);
    return buffer;
  };

  const storage = (data: ArrayBufferView): GPUBuffer => {
    const size = Math.max(16, Math.ceil(data.byteLength / 4) * 4);
    const buffer = device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    device.queue.writeBuffer(buffer, 0, (data.byteLength % 4 === 0 ? bytes : padded(bytes)) as Uint8Array<ArrayBuffer>);
    return buffer;
  };

  /** Records one dispatch: bindings by number, `invocations` threads of 64 or explicit workgroups. */
  const dispatch = (
    file: string,
    entry: string,
    bindings: Record<number, GPUBuffer>,
    size: { invocations: number } | { workgroups: number },
  ) => {
    const p = pipeline(file, entry);
    begin();
    const pass = encoder!.beginComputePass();
    pass.setPipeline(p);
    pass.setBindGroup(
      0,
      device.createBindGroup({
        layout: p.getBindGroupLayout(0),
        entries: Object.entries(bindings).map(([binding, buffer]) => ({
          binding: Number(binding),
          resource: { buffer },
        })),
      }),
    );
    const groups = "workgroups" in size ? size.workgroups : Math.ceil(size.invocations / 64);
    if (groups > 0) {
      const x = Math.min(groups, 65535);
      pass.dispatchWorkgroups(x, Math.ceil(groups / x));
    }
    pass.end();
  };

  const ops: Ops = {
    embed(out, table, ids) {
      const o = t(out, "embed"), tab = t(table, "embed");
      const hidden = colsOf(tab);
      for (const c of tab.chunks) {
        dispatch("embed.wgsl", "embed_f32_bf16w", {
          0: uniform([rowsOf(o), hidden, c.rowStart, c.rows]),
          1: o.buffer,
          2: c.buffer,
          3: t(ids, "embed").buffer,
        }, { invocations: rowsOf(o) * hidden });
      }
    },
    rmsnorm(out, x, weight, eps) {
      dispatch("rmsnorm.wgsl", "rmsnorm_f32_bf16w", {
        0: uniform([colsOf(x), { f32: eps }]),
        1: t(out, "rmsnorm").buffer,
        2: t(x, "rmsnorm").buffer,
        3: t(weight, "rmsnorm").buffer,
      }, { workgroups: rowsOf(x) });
    },
    matmul(out, x, weight, bias) {
      const w = t(weight, "matmul");
      const [n, k] = w.shape;
      if (colsOf(x) !== k || colsOf(out) !== n || rowsOf(out) !== rowsOf(x)) {
        throw new BackendError(
          `matmul: x [${x.shape}] and weight [${w.shape}] do not match out [${out.shape}]`,
          "matmul_bf16w",
        );
      }
      // Long rows: a workgroup of 64 lanes per (row, token) with a reduction; short rows: one lane each.
      const short = k <= 256;
      for (const c of w.chunks) {
        dispatch(`precision_${precision}.wgsl+matmul.wgsl`, short ? "matmul_short_bf16w" : "matmul_bf16w", {
          0: uniform([rowsOf(x), n, k, c.rowStart, c.rows, bias ? 1 : 0]),
          1: t(out, "matmul").buffer,
          2: t(x, "matmul").buffer,
          3: c.buffer,
          4: bias ? t(bias, "matmul").buffer : dummy,
        }, short ? { invocations: c.rows * rowsOf(x) } : { workgroups: c.rows * rowsOf(x) });
      }
    },
    rope(q, k, positions, invFreq, concentration) {
      const headDim = invFreq.shape[0] * 2;
      dispatch("rope.wgsl", "rope_f32", {
        0: uniform([rowsOf(q), colsOf(q), colsOf(k), headDim, { f32: concentration }]),
        1: t(q, "rope").buffer,
        2: t(k, "rope").buffer,
        3: t(positions, "rope").buffer,
        4: t(invFreq, "rope").buffer,
      }, { invocations: rowsOf(q) * (colsOf(q) + colsOf(k)) / 2 });
    },
    attention(out, q, k, v, opt: AttentionOptions) {
      const pool = opt.pool;
      if (!(pool instanceof GpuKvPool)) {
        throw new BackendError("attention: the pool is not a WebGPU pool", "attention_f32");
      }
      // Per row: its absolute position and where its block table starts in `tables`.
      const rowInfo = new Uint32Array(opt.batch.numTokens * 2);
      const tables: number[] = [];
      for (const seg of opt.batch.segments) {
        const offset = tables.length;
        const table = opt.window > 0 ? seg.slidingBlocks : seg.fullBlocks;
        for (let b = 0; b < seg.fullBlocks.length; b++) tables.push(b < table.length ? table[b] : -1);
        for (let i = 0; i < seg.numTokens; i++) {
          rowInfo[2 * (seg.rowOffset + i)] = seg.startPosition + i;
          rowInfo[2 * (seg.rowOffset + i) + 1] = offset;
        }
      }
      const params = uniform([
        opt.batch.numTokens,
        opt.numHeads,
        opt.numKeyValueHeads,
        opt.headDim,
        opt.window,
        pool.spec.blockSize,
      ]);
      const rows = temporary(storage(rowInfo));
      const tableBuffer = temporary(storage(Int32Array.from(tables.length ? tables : [0])));
      const keys = pool.keys[opt.layer], values = pool.values[opt.layer];
      dispatch("attention.wgsl", "kv_store_f32", {
        0: params,
        3: keys,
        4: values,
        6: rows,
        7: tableBuffer,
        8: t(k, "attention").buffer,
        9: t(v, "attention").buffer,
      }, {
        invocations: opt.batch.numTokens * opt.numKeyValueHeads * opt.headDim,
      });
      dispatch("attention.wgsl", "attention_f32", {
        0: params,
        1: t(out, "attention").buffer,
        2: t(q, "attention").buffer,
        3: keys,
        4: values,
        5: t(opt.sinks, "attention").buffer,
        6: rows,
        7: tableBuffer,
      }, { invocations: opt.batch.numTokens * opt.numHeads });
    },
    moeRoute(expertIds, expertWeights, logits, topK) {
      dispatch(`precision_${precision}.wgsl+moe.wgsl`, "moe_route_f32", {
        0: uniform([rowsOf(logits), topK, 0, 0, 0, 0, colsOf(logits), { f32: 0 }, 0, 0]),
        1: t(expertWeights, "moeRoute").buffer,
        2: t(logits, "moeRoute").buffer,
        3: t(expertIds, "moeRoute").buffer,
      }, { invocations: rowsOf(logits) });
    },
    moeMlp(out, x, expertIds, expertWeights, opt: MoeMlpOptions) {
      const w = opt.weights;
      const gub = t(w.gateUpBlocks, "moeMlp"), gus = t(w.gateUpScales, "moeMlp");
      const db = t(w.downBlocks, "moeMlp"), ds = t(w.downScales, "moeMlp");
      const tokens = rowsOf(x), topK = colsOf(expertIds), hidden = colsOf(x), inter = opt.intermediateSize;
      const numExperts = gub.shape[0];
      const act = temporary(
        device.createBuffer({ size: Math.max(16, tokens * topK * inter * 4), usage: GPUBufferUsage.STORAGE }),
      );
      begin();
      encoder!.clearBuffer(t(out, "moeMlp").buffer);
      // Expert ranges held by one blocks window and one scales window (the two are split independently).
      const ranges = (blocks: GpuTensor, scales: GpuTensor) =>
        blocks.chunks.flatMap((bc) =>
          scales.chunks.flatMap((sc) => {
            const start = Math.max(bc.rowStart, sc.rowStart);
            const end = Math.min(bc.rowStart + bc.rows, sc.rowStart + sc.rows);
            return start < end ? [{ start, count: end - start, blocks: bc, scales: sc }] : [];
          })
        );
      const params = (r: { start: number; count: number; blocks: Chunk; scales: Chunk }) =>
        uniform([
          tokens,
          topK,
          hidden,
          inter,
          r.start,
          r.count,
          numExperts,
          { f32: opt.swigluLimit },
          r.blocks.rowStart,
          r.scales.rowStart,
        ]);
      for (const r of ranges(gub, gus)) {
        dispatch(`precision_${precision}.wgsl+moe.wgsl`, "moe_gate_up_f32", {
          0: params(r),
          1: act,
          2: t(x, "moeMlp").buffer,
          3: t(expertIds, "moeMlp").buffer,
          5: r.blocks.buffer,
          6: r.scales.buffer,
          7: t(w.gateUpBias, "moeMlp").buffer,
        }, { invocations: tokens * topK * inter });
      }
      for (const r of ranges(db, ds)) {
        dispatch(`precision_${precision}.wgsl+moe.wgsl`, "moe_down_f32", {
          0: params(r),
          1: t(out, "moeMlp").buffer,
          2: act,
          3: t(expertIds, "moeMlp").buffer,
          4: t(expertWeights, "moeMlp").buffer,
          5: r.blocks.buffer,
          6: r.scales.buffer,
          7: t(w.downBias, "moeMlp").buffer,
        }, { invocations: tokens * hidden });
      }
    },
    add(out, a, b) {
      const n = a.shape.reduce((x, y) => x * y, 1);
      if (out === a) {
        dispatch("elementwise.wgsl", "add_inplace_f32", {
          0: uniform([n, 0]),
          1: t(out, "add").buffer,
          3: t(b, "add").buffer,
        }, {
          invocations: n,
        });
        return;
      }
      dispatch("elementwise.wgsl", "add_f32", {
        0: uniform([n, 0]),
        1: t(out, "add").buffer,
        2: t(a, "add").buffer,
        3: t(b, "add").buffer,
      }, {
        invocations: n,
      });
    },
    gatherRows(out, x, rows) {
      const n = out.shape.reduce((a, b) => a * b, 1);
      dispatch("elementwise.wgsl", "gather_rows_f32", {
        0: uniform([n, colsOf(x)]),
        1: t(out, "gatherRows").buffer,
        2: t(x, "gatherRows").buffer,
        4: t(rows, "gatherRows").buffer,
      }, { invocations: n });
    },
    sample(ids, logits, params, masked) {
      const rows = rowsOf(logits), vocab = colsOf(logits);
      if (rowsOf(ids) * colsOf(ids) !== rows || params.shape.reduce((a, b) => a * b, 1) !== rows * SAMPLE_PARAMS) {
        throw new BackendError(
          `sample: ids [${ids.shape}] and params [${params.shape}] do not match logits [${logits.shape}]`,
          "sample_f32",
        );
      }
      const scratch = temporary(
        device.createBuffer({ size: Math.max(16, rows * vocab * 4), usage: GPUBufferUsage.STORAGE }),
      );
      dispatch("sample.wgsl", "sample_f32", {
        0: uniform([vocab, masked?.[0] ?? 0, masked?.[1] ?? 0, masked ? 1 : 0]),
        1: t(ids, "sample").buffer,
        2: t(logits, "sample").buffer,
        3: t(params, "sample").buffer,
        4: scratch,
      }, { workgroups: rows });
    },
  };

  /** Splits a host tensor along its first dimension into buffers no larger than a binding. */
  const uploadChunks = (tensor: HostTensor): Chunk[] => {
    const rows = tensor.shape[0] ?? 1;
    const rowBytes = tensor.data.byteLength / Math.max(1, rows);
    const rowsPerChunk = Math.max(1, Math.floor(maxBinding / rowBytes));
    if (rowBytes > maxBinding) {
      throw new BackendError(`upload: one row of ${rowBytes} bytes exceeds a binding`, "upload");
    }
    const chunks: Chunk[] = [];
    for (let start = 0; start < rows || chunks.length === 0; start += rowsPerChunk) {
      const count = Math.min(rowsPerChunk, rows - start);
      chunks.push({
        buffer: storage(tensor.data.subarray(start * rowBytes, (start + count) * rowBytes)),
        rowStart: start,
        rows: count,
      });
      if (rows === 0) break;
    }
    return chunks;
  };

  return {
    name: "webgpu",
    kvBytesPerElement: 4,
    info,
    upload(tensor: HostTensor): DeviceTensor {
      return new GpuTensor(tensor.dtype, tensor.shape, uploadChunks(tensor));
    },
    alloc(shape: readonly number[], dtype: DType): DeviceTensor {
      const key = `${dtype}:${shape.join("x")}`;
      const reused = spare.get(key)?.pop();
      if (reused) return reused;
      const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
      if (bytes > maxBinding) {
        throw new BackendError(`alloc: [${shape}] ${dtype} exceeds a binding (${maxBinding} bytes)`, "alloc");
      }
      const buffer = device.createBuffer({
        size: Math.max(16, Math.ceil(bytes / 4) * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      return new GpuTensor(dtype, [...shape], [{ buffer, rowStart: 0, rows: shape[0] ?? 1 }]);
    },
    write(tensor: DeviceTensor, data: Int32Array | Float32Array): void {
      // Queue writes land before the step's command buffer: write inputs before recording the ops that read them.
      device.queue.writeBuffer(t(tensor, "write").buffer, 0, data as Int32Array<ArrayBuffer>);
    },
    ops,
    async flush(): Promise<void> {
      await submit();
      await device.queue.onSubmittedWorkDone();
      release();
    },
    async read(tensor: DeviceTensor): Promise<Float32Array | Int32Array> {
      const g = t(tensor, "read");
      const size = Math.max(16, Math.ceil(g.bytes / 4) * 4);
      const staging = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      begin();
      encoder!.copyBufferToBuffer(g.buffer, 0, staging, 0, size);
      await submit();
      await staging.mapAsync(GPUMapMode.READ);
      release();
      const copy = staging.getMappedRange().slice(0, g.bytes);
      staging.unmap();
      staging.destroy();
      return g.dtype === "i32" ? new Int32Array(copy) : new Float32Array(copy);
    },
    createKvPool(spec: KvPoolSpec): KvPool {
      const row = spec.numKeyValueHeads * spec.headDim * 4;
      const keys: GPUBuffer[] = [], values: GPUBuffer[] = [];
      let total = 0;
      for (const window of spec.layerWindows) {
        const size = Math.max(16, (window > 0 ? spec.numSlidingBlocks : spec.numFullBlocks) * spec.blockSize * row);
        if (size > maxBinding) {
          throw new BackendError(`KV layer of ${size} bytes exceeds a binding (${maxBinding})`, "kv_pool");
        }
        keys.push(device.createBuffer({ size, usage: GPUBufferUsage.STORAGE }));
        values.push(device.createBuffer({ size, usage: GPUBufferUsage.STORAGE }));
        total += 2 * size;
      }
      return new GpuKvPool(spec, keys, values, total);
    },
    free(tensor: DeviceTensor): void {
      const g = t(tensor, "free");
      if (g.chunks.length !== 1) return;
      const key = `${g.dtype}:${g.shape.join("x")}`;
      const list = spare.get(key) ?? [];
      if (list.length < 8) list.push(g);
      spare.set(key, list);
    },
    dispose(): void {
      device.destroy();
    },
    samplesOnDevice: true,
    precision,
    limits: { maxKvLayerBytes: maxBinding },
  };
}

function padded(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
  out.set(bytes);
  return out;
}
