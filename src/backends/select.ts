/**
 * The capability probe: which backends can run here, with the evidence, and which one `--backend` picks.
 * Order of preference: cuda → webgpu on a real adapter → native CPU → webgpu on a fallback adapter → reference.
 */
import type { Backend, BackendName, ModelFootprint } from "./backend.ts";
import {
  createNativeBackend,
  CUDA_LIBRARY_PATH,
  loadNativeLibrary,
  type NativeBackendOptions,
} from "./native/native_backend.ts";
import { createReferenceBackend } from "./reference/reference_backend.ts";
import { createWebGpuBackend, requestWebGpu, webGpuFitRefusal, type WebGpuInfo } from "./webgpu/webgpu_backend.ts";

/** One backend's probe result. */
export interface ProbeResult {
  readonly name: BackendName;
  readonly available: boolean;
  readonly reason: string;
  /** Activation dtype it would use. */
  readonly dtype: "f32" | "bf16" | "f16";
  /** The adapter's evidence (webgpu only). */
  readonly adapter?: WebGpuInfo;
}

/** What the chosen model needs, for the fit check (see {@link selectBackend}). */
export interface FitRequest {
  readonly need: ModelFootprint;
  readonly kvCacheBytes: number;
  /** Defaults to the machine's total memory. */
  readonly hostMemoryBytes?: number;
}

/** Why the model cannot run on a candidate, or undefined. Only WebGPU has limits to check before loading. */
export function fitRefusal(probe: ProbeResult, fit: FitRequest): string | undefined {
  if (probe.name !== "webgpu" || !probe.adapter) return undefined;
  return webGpuFitRefusal(probe.adapter, fit.need, {
    kvCacheBytes: fit.kvCacheBytes,
    hostMemoryBytes: fit.hostMemoryBytes ?? Deno.systemMemoryInfo().total,
  });
}

function probeNative(): ProbeResult {
  try {
    const library = loadNativeLibrary();
    const kind = Deno.UnsafePointerView.getCString(library.symbols.gptoss_backend_kind()!);
    library.close();
    return { name: "native", available: true, reason: `build/libgptoss_cpu.so loaded (${kind})`, dtype: "f32" };
  } catch (err) {
    return { name: "native", available: false, reason: (err as Error).message, dtype: "f32" };
  }
}

function probeCuda(): ProbeResult {
  const result = (available: boolean, reason: string): ProbeResult => ({
    name: "cuda",
    available,
    reason,
    dtype: "f32",
  });
  let library;
  try {
    library = loadNativeLibrary({ path: CUDA_LIBRARY_PATH });
  } catch (err) {
    return result(false, (err as Error).message); // it says how to build the library when that is what is missing
  }
  try {
    const out = new BigUint64Array(1);
    const status = library.symbols.gptoss_context_create(1, 0, null, out);
    if (status !== 0) return result(false, Deno.UnsafePointerView.getCString(library.symbols.gptoss_last_error(null)!));
    library.symbols.gptoss_context_destroy(Deno.UnsafePointer.create(out[0]));
    return result(true, "build/libgptoss_cuda.so loaded and a CUDA device it has code for answered");
  } finally {
    library.close();
  }
}

/** Backend construction settings. */
export interface BackendOptions {
  /** GPU matmul arithmetic: "auto" = f16 where the device has it. */
  readonly dtype?: "auto" | "f32" | "f16";
  /** Native and CUDA context settings (vector path cap, profiling, CUDA graphs). */
  readonly native?: Pick<NativeBackendOptions, "isa" | "profile" | "cudaGraphs" | "numThreads" | "weights">;
}

/**
 * Native context settings from environment variables (the libraries read none; main.ts and the bench scripts pass
 * theirs): GPTOSS_CPU_ISA caps the CPU path, GPTOSS_PROFILE=1 times each op (=steps: CUDA host time per step),
 * GPTOSS_CUDA_GRAPHS=0 turns CUDA graphs off.
 */
export function nativeOptionsFromEnv(env: Readonly<Record<string, string | undefined>>): NonNullable<
  BackendOptions["native"]
> {
  const profile = env.GPTOSS_PROFILE;
  return {
    isa: env.GPTOSS_CPU_ISA || undefined,
    profile: profile === "steps" ? "steps" : profile ? "ops" : undefined,
    cudaGraphs: env.GPTOSS_CUDA_GRAPHS !== "0",
  };
}

/**
 * Probing and construction with one WebGPU device per instance (requested on first use: a process that selects
 * once asks for one device). No side effects beyond that: nothing is built or written.
 */
export class BackendSelector {
  #webGpu: Promise<{ device: GPUDevice; info: WebGpuInfo } | undefined> | undefined;
  #webGpuUsed = false;
  readonly #probeWebGpu: boolean;

  /** `webgpu: false` leaves WebGPU alone (a process that only needs the CPU libraries). */
  constructor(options: { webgpu?: boolean } = {}) {
    this.#probeWebGpu = options.webgpu ?? true;
  }

  #webGpuDevice() {
    if (!this.#probeWebGpu) return Promise.resolve(undefined);
    return this.#webGpu ??= requestWebGpu().catch(() => undefined);
  }

  /** Releases the WebGPU device unless a backend created here uses it. */
  async dispose(): Promise<void> {
    if (this.#webGpuUsed) return;
    (await this.#webGpu)?.device.destroy();
    this.#webGpu = undefined;
  }

  /** The candidates in order of preference (a real GPU before the CPU, a software adapter after it), with evidence. */
  async probe(): Promise<ProbeResult[]> {
    const gpu = await this.#webGpuDevice();
    const webgpu: ProbeResult = gpu
      ? {
        name: "webgpu",
        available: true,
        reason: `${gpu.info.isFallbackAdapter ? "fallback (software) adapter" : "adapter"} ${gpu.info.description}; ` +
          `storage bindings up to ${gpu.info.maxStorageBufferBindingSize} bytes`,
        dtype: gpu.info.shaderF16 ? "f16" : "f32",
        adapter: gpu.info,
      }
      : {
        name: "webgpu",
        available: false,
        reason: this.#probeWebGpu
          ? "no WebGPU adapter (navigator.gpu.requestAdapter() gave none)"
          : "not probed (this process leaves WebGPU alone)",
        dtype: "f32",
      };
    const native = probeNative();
    const realGpu = gpu !== undefined && !gpu.info.isFallbackAdapter;
    return [
      probeCuda(),
      ...(realGpu ? [webgpu, native] : [native, webgpu]),
      { name: "reference", available: true, reason: "Plain TypeScript: runs everywhere (slow)", dtype: "f32" },
    ];
  }

  /** Constructs the named backend. */
  async create(name: BackendName, options: BackendOptions = {}): Promise<Backend> {
    switch (name) {
      case "reference":
        return createReferenceBackend();
      case "native":
        return createNativeBackend({ ...options.native });
      case "cuda":
        return createNativeBackend({
          ...options.native,
          weights: undefined,
          library: loadNativeLibrary({ path: CUDA_LIBRARY_PATH }),
          name: "cuda",
        });
      case "webgpu":
        return await this.#createWebGpu(options);
    }
  }

  async #createWebGpu(options: BackendOptions): Promise<Backend> {
    const gpu = await this.#webGpuDevice();
    if (!gpu) throw new Error("no WebGPU adapter");
    if (options.dtype === "f16" && !gpu.info.shaderF16) {
      throw new Error(
        `--dtype f16 needs the shader-f16 feature, which the WebGPU adapter "${gpu.info.description}" lacks`,
      );
    }
    this.#webGpuUsed = true;
    return createWebGpuBackend(gpu.device, gpu.info, {
      precision: options.dtype === "auto" || options.dtype === undefined ? undefined : options.dtype,
    });
  }

  /**
   * The chosen backend, or an Error whose message lists the valid names and why the others are out. With `fit`, a
   * candidate the model cannot fit on is refused: "auto" moves on to the next one, an explicit choice fails with why.
   */
  async select(
    choice: "auto" | BackendName,
    probes?: ProbeResult[],
    fit?: FitRequest,
    options: BackendOptions = {},
  ): Promise<{ backend: Backend; probe: ProbeResult }> {
    const found = (probes ?? await this.probe()).map((p) => {
      const refusal = p.available && fit ? fitRefusal(p, fit) : undefined;
      return refusal ? { ...p, available: false, reason: refusal } : p;
    });
    if (options.native?.weights === "q8") {
      // 8-bit weights exist on the native CPU backend only: "auto" means it, another explicit choice is an error.
      if (choice !== "auto" && choice !== "native") {
        throw new Error(`--weights-dtype q8 needs the native CPU backend (--backend ${choice} runs bf16 weights)`);
      }
      choice = "native";
    }
    const candidates = choice === "auto" ? found.filter((p) => p.available) : found.filter((p) => p.name === choice);
    const probe = candidates.find((p) => p.available);
    if (!probe) {
      const chosen = found.find((p) => p.name === choice);
      if (chosen && fit && fitRefusal(chosen, fit)) throw new Error(chosen.reason);
      const why = found.map((p) => `${p.name}: ${p.available ? "available" : p.reason}`).join("; ");
      throw new Error(`Backend "${choice}" is not available here (${why})`);
    }
    const backend = await this.create(probe.name, options);
    // The dtype actually used (e.g. f32 on WebGPU when --dtype f32 overrides the adapter's f16).
    const precision = (backend as { precision?: "f16" | "f32" }).precision;
    return { backend, probe: precision ? { ...probe, dtype: precision } : probe };
  }
}

/** {@link BackendSelector.probe} on a fresh selector, whose WebGPU device is released once probed. */
export async function probeBackends(options: { webgpu?: boolean } = {}): Promise<ProbeResult[]> {
  const selector = new BackendSelector(options);
  try {
    return await selector.probe();
  } finally {
    await selector.dispose();
  }
}

/** {@link BackendSelector.select} on a fresh selector (its WebGPU device released unless the choice uses it). */
export async function selectBackend(
  choice: "auto" | BackendName,
  probes?: ProbeResult[],
  fit?: FitRequest,
  options: BackendOptions = {},
): Promise<{ backend: Backend; probe: ProbeResult }> {
  const selector = new BackendSelector();
  try {
    return await selector.select(choice, probes, fit, options);
  } finally {
    await selector.dispose();
  }
}
