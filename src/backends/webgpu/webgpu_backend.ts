/**
 * The WebGPU backend: WGSL kernels in kernels/webgpu/ (one .wgsl per op with its launcher beside it), f32 math,
 * bf16 weights read as packed u32 and widened in the shader, MXFP4 experts decoded in the shader. Ops record compute
 * passes into one command encoder; flush() submits the step as one command buffer. Tensors larger than a storage
 * binding (the embedding, lm_head, a layer's expert blocks) are split along their first dimension into buffers that
 * each fit, sized from the adapter's limits (buffers.ts).
 */
import { BackendError } from "../../errors.ts";
import type { Backend, DeviceTensor, DType, HostTensor, KvPool, KvPoolSpec, Ops } from "../backend.ts";
import { attention } from "../../../kernels/webgpu/attention.ts";
import { add, gatherRows } from "../../../kernels/webgpu/elementwise.ts";
import { embed } from "../../../kernels/webgpu/embed.ts";
import { matmul } from "../../../kernels/webgpu/matmul.ts";
import { moeMlp, moeRoute } from "../../../kernels/webgpu/moe.ts";
import { rmsnorm } from "../../../kernels/webgpu/rmsnorm.ts";
import { rope } from "../../../kernels/webgpu/rope.ts";
import { sample } from "../../../kernels/webgpu/sample.ts";
import { GpuBuffers, gpuTensor } from "./buffers.ts";
import type { WebGpuInfo } from "./device.ts";
import { type KernelContext, Pipelines, Recorder } from "./pipelines.ts";

export { requestWebGpu, type WebGpuFitContext, webGpuFitRefusal, type WebGpuInfo } from "./device.ts";

/** Options of {@link createWebGpuBackend}. */
export interface WebGpuOptions {
  /**
   * Arithmetic of the weight × activation products (dense matmuls and the MXFP4 experts): "f16" (products in f16,
   * sums in f32) needs a device created with shader-f16; default "f16" where the adapter has it, else "f32".
   * Attention, norms, rope, routing, SwiGLU and sampling stay f32.
   */
  readonly precision?: "f16" | "f32";
}

/** The backend on one device. */
export class WebGpuBackend implements Backend {
  readonly name = "webgpu" as const;
  readonly kvBytesPerElement = 4;
  readonly samplesOnDevice = true;
  readonly info: WebGpuInfo;
  readonly precision: "f16" | "f32";
  readonly limits: { readonly maxKvLayerBytes: number };
  readonly ops: Ops;
  readonly #device: GPUDevice;
  readonly #buffers: GpuBuffers;
  readonly #recorder: Recorder;

  constructor(device: GPUDevice, info: WebGpuInfo, options: WebGpuOptions = {}) {
    const precision = options.precision ?? (info.shaderF16 ? "f16" : "f32");
    if (precision === "f16" && !device.features.has("shader-f16")) {
      throw new BackendError("precision f16 needs a device with the shader-f16 feature", "create");
    }
    this.#device = device;
    this.info = info;
    this.precision = precision;
    this.limits = { maxKvLayerBytes: info.maxStorageBufferBindingSize };
    this.#buffers = new GpuBuffers(device, info.maxStorageBufferBindingSize);
    this.#recorder = new Recorder(device, new Pipelines(device));
    this.ops = opsOn({ buffers: this.#buffers, recorder: this.#recorder, precision });
  }

  upload(tensor: HostTensor): DeviceTensor {
    return this.#buffers.upload(tensor);
  }

  alloc(shape: readonly number[], dtype: DType): DeviceTensor {
    return this.#buffers.alloc(shape, dtype);
  }

  write(tensor: DeviceTensor, data: Int32Array | Float32Array): void {
    // Queue writes land before the step's command buffer: write inputs before recording the ops that read them.
    this.#device.queue.writeBuffer(gpuTensor(tensor, "write").buffer, 0, data as Int32Array<ArrayBuffer>);
  }

  async flush(): Promise<void> {
    await this.#recorder.submit();
    await this.#device.queue.onSubmittedWorkDone();
    this.#buffers.releaseTemporaries();
  }

  async read(tensor: DeviceTensor): Promise<Float32Array | Int32Array> {
    const g = gpuTensor(tensor, "read");
    const size = Math.max(16, Math.ceil(g.bytes / 4) * 4);
    const staging = this.#device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.#recorder.encoder().copyBufferToBuffer(g.buffer, 0, staging, 0, size);
    await this.#recorder.submit();
    await staging.mapAsync(GPUMapMode.READ);
    this.#buffers.releaseTemporaries();
    const copy = staging.getMappedRange().slice(0, g.bytes);
    staging.unmap();
    staging.destroy();
    return g.dtype === "i32" ? new Int32Array(copy) : new Float32Array(copy);
  }

  createKvPool(spec: KvPoolSpec): KvPool {
    return this.#buffers.kvPool(spec);
  }

  free(tensor: DeviceTensor): void {
    this.#buffers.free(gpuTensor(tensor, "free"));
  }

  dispose(): void {
    this.#device.destroy();
  }
}

/** The ops, each a launcher beside its kernel. */
function opsOn(ctx: KernelContext): Ops {
  return {
    embed: (out, table, ids) => embed(ctx, out, table, ids),
    rmsnorm: (out, x, weight, eps) => rmsnorm(ctx, out, x, weight, eps),
    matmul: (out, x, weight, bias) => matmul(ctx, out, x, weight, bias),
    rope: (q, k, positions, invFreq, concentration) => rope(ctx, q, k, positions, invFreq, concentration),
    attention: (out, q, k, v, options) => attention(ctx, out, q, k, v, options),
    moeRoute: (ids, weights, logits, topK) => moeRoute(ctx, ids, weights, logits, topK),
    moeMlp: (out, x, ids, weights, options) => moeMlp(ctx, out, x, ids, weights, options),
    add: (out, a, b) => add(ctx, out, a, b),
    gatherRows: (out, x, rows) => gatherRows(ctx, out, x, rows),
    sample: (ids, logits, params, masked) => sample(ctx, ids, logits, params, masked),
  };
}

/** Creates the backend on a device. */
export function createWebGpuBackend(device: GPUDevice, info: WebGpuInfo, options: WebGpuOptions = {}): WebGpuBackend {
  return new WebGpuBackend(device, info, options);
}
