/**
 * WGSL to dispatches: shader sources (one or more .wgsl files compiled as one module), the pipeline cache, and the
 * recorder that puts a step's compute passes into one command encoder and submits them as one command buffer, with
 * one validation error scope per command buffer.
 */
import { BackendError } from "../../errors.ts";
import type { GpuBuffers } from "./buffers.ts";

/** One shader module: its files, concatenated in order (e.g. a precision prelude, then the kernels that use it). */
export class ShaderSource {
  readonly files: readonly URL[];
  constructor(...files: URL[]) {
    this.files = files;
  }
}

/** How many threads a dispatch runs: `invocations` in workgroups of 64, or explicit workgroups. */
export type DispatchSize = { readonly invocations: number } | { readonly workgroups: number };

/** Compiled modules and pipelines, each built on first use. */
export class Pipelines {
  readonly #device: GPUDevice;
  readonly #modules = new Map<ShaderSource, GPUShaderModule>();
  readonly #pipelines = new Map<ShaderSource, Map<string, GPUComputePipeline>>();

  constructor(device: GPUDevice) {
    this.#device = device;
  }

  get(source: ShaderSource, entry: string): GPUComputePipeline {
    let byEntry = this.#pipelines.get(source);
    if (!byEntry) this.#pipelines.set(source, byEntry = new Map());
    let pipeline = byEntry.get(entry);
    if (!pipeline) {
      let module = this.#modules.get(source);
      if (!module) {
        const code = source.files.map((file) => Deno.readTextFileSync(file)).join("\n");
        this.#modules.set(source, module = this.#device.createShaderModule({ code }));
      }
      pipeline = this.#device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: entry } });
      byEntry.set(entry, pipeline);
    }
    return pipeline;
  }
}

/** Records a step's work into one command encoder. */
export class Recorder {
  readonly #device: GPUDevice;
  readonly #pipelines: Pipelines;
  #encoder: GPUCommandEncoder | undefined;

  constructor(device: GPUDevice, pipelines: Pipelines) {
    this.#device = device;
    this.#pipelines = pipelines;
  }

  /** The open encoder (opened, with its error scope, on first use). */
  encoder(): GPUCommandEncoder {
    if (!this.#encoder) {
      this.#device.pushErrorScope("validation");
      this.#encoder = this.#device.createCommandEncoder();
    }
    return this.#encoder;
  }

  /** Records one dispatch with its bindings by number. */
  dispatch(source: ShaderSource, entry: string, bindings: Record<number, GPUBuffer>, size: DispatchSize): void {
    const pipeline = this.#pipelines.get(source, entry);
    const pass = this.encoder().beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(
      0,
      this.#device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
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
  }

  /** Submits what was recorded; throws what the device's validation rejected. */
  async submit(): Promise<void> {
    if (!this.#encoder) return;
    this.#device.queue.submit([this.#encoder.finish()]);
    this.#encoder = undefined;
    const error = await this.#device.popErrorScope();
    if (error) throw new BackendError(`WebGPU rejected the step: ${error.message}`, "flush");
  }
}

/** What a kernel launcher gets: buffers, the recorder and the backend's arithmetic. */
export interface KernelContext {
  readonly buffers: GpuBuffers;
  readonly recorder: Recorder;
  /** Arithmetic of weight × activation products (see WebGpuOptions.precision). */
  readonly precision: "f16" | "f32";
}
