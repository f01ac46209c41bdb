/**
 * The capability probe: which backends can run here, with the evidence, and which one `--backend` picks.
 * Order of preference: cuda → webgpu on a real adapter → native CPU → webgpu on a fallback adapter → reference.
 */
import type { Backend, BackendName } from "./backend.ts";
import { createNativeBackend, CUDA_LIBRARY_PATH, loadNativeLibrary } from "./native/native_backend.ts";
import { createReferenceBackend } from "./reference/reference_backend.ts";
import { createWebGpuBackend, requestWebGpu, type WebGpuInfo } from "./webgpu/webgpu_backend.ts";

/** One backend's probe result. */
export interface ProbeResult {
  readonly name: BackendName;
  readonly available: boolean;
  readonly reason: string;
  /** Activation dtype it would use. */
  readonly dtype: "f32" | "bf16" | "f16";
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
    library = loadNativeLibrary({ path: CUDA_LIBRARY_PATH, build: false });
  } catch (err) {
    return result(false, `${(err as Error).message} (build it with: deno task build:cuda)`);
  }
  try {
    const out = new BigUint64Array(1);
    const status = library.symbols.gptoss_context_create(1, out);
    if (status !== 0) return result(false, Deno.UnsafePointerView.getCString(library.symbols.gptoss_last_error(null)!));
    library.symbols.gptoss_context_destroy(Deno.UnsafePointer.create(out[0]));
    return result(true, "build/libgptoss_cuda.so loaded and a CUDA device of compute capability 8.0 or later answered");
  } finally {
    library.close();
  }
}

/** The WebGPU adapter and device, requested once per process. */
let webGpu: Promise<{ device: GPUDevice; info: WebGpuInfo } | undefined> | undefined;
function webGpuDevice() {
  return webGpu ??= requestWebGpu().catch(() => undefined);
}

/** The candidates in order of preference (a real GPU before the CPU, a software adapter after it), with evidence. */
export async function probeBackends(): Promise<ProbeResult[]> {
  const gpu = await webGpuDevice();
  const webgpu: ProbeResult = gpu
    ? {
      name: "webgpu",
      available: true,
      reason: `${gpu.info.isFallbackAdapter ? "fallback (software) adapter" : "adapter"} ${gpu.info.description}; ` +
        `storage bindings up to ${gpu.info.maxStorageBufferBindingSize} bytes`,
      dtype: "f32",
    }
    : {
      name: "webgpu",
      available: false,
      reason: "no WebGPU adapter (navigator.gpu.requestAdapter() gave none)",
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

const FACTORIES: Record<BackendName, () => Promise<Backend>> = {
  reference: () => Promise.resolve(createReferenceBackend()),
  native: () => Promise.resolve(createNativeBackend()),
  cuda: () =>
    Promise.resolve(
      createNativeBackend({ library: loadNativeLibrary({ path: CUDA_LIBRARY_PATH, build: false }), name: "cuda" }),
    ),
  webgpu: async () => {
    const gpu = await webGpuDevice();
    if (!gpu) throw new Error("no WebGPU adapter");
    return createWebGpuBackend(gpu.device, gpu.info);
  },
};

/** The chosen backend, or an Error whose message lists the valid names and why the others are out. */
export async function selectBackend(
  choice: "auto" | BackendName,
  probes?: ProbeResult[],
): Promise<{ backend: Backend; probe: ProbeResult }> {
  const found = probes ?? await probeBackends();
  const candidates = choice === "auto" ? found.filter((p) => p.available) : found.filter((p) => p.name === choice);
  const probe = candidates.find((p) => p.available);
  if (!probe) {
    const why = found.map((p) => `${p.name}: ${p.available ? "available" : p.reason}`).join("; ");
    throw new Error(`Backend "${choice}" is not available here (${why})`);
  }
  return { backend: await FACTORIES[probe.name](), probe };
}
