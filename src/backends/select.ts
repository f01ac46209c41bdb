/**
 * The capability probe: which backends can run here, with the evidence, and which one `--backend` picks.
 * Order of preference: cuda → webgpu on a real adapter → native CPU → webgpu on a fallback adapter → reference.
 */
import type { Backend, BackendName } from "./backend.ts";
import { createNativeBackend, CUDA_LIBRARY_PATH, loadNativeLibrary } from "./native/native_backend.ts";
import { createReferenceBackend } from "./reference/reference_backend.ts";

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

/** The candidates in order of preference, each with the evidence for or against it. */
export function probeBackends(): ProbeResult[] {
  return [
    probeCuda(),
    { name: "webgpu", available: false, reason: "The WebGPU backend is not built in this version", dtype: "f32" },
    probeNative(),
    { name: "reference", available: true, reason: "Plain TypeScript: runs everywhere (slow)", dtype: "f32" },
  ];
}

const FACTORIES: Partial<Record<BackendName, () => Backend>> = {
  reference: createReferenceBackend,
  native: () => createNativeBackend(),
  cuda: () =>
    createNativeBackend({ library: loadNativeLibrary({ path: CUDA_LIBRARY_PATH, build: false }), name: "cuda" }),
};

/** The chosen backend, or an Error whose message lists the valid names and why the others are out. */
export function selectBackend(
  choice: "auto" | BackendName,
  probes = probeBackends(),
): { backend: Backend; probe: ProbeResult } {
  const candidates = choice === "auto" ? probes.filter((p) => p.available) : probes.filter((p) => p.name === choice);
  const probe = candidates.find((p) => p.available && FACTORIES[p.name]);
  const factory = probe ? FACTORIES[probe.name] : undefined;
  if (!probe || !factory) {
    const why = probes.map((p) => `${p.name}: ${p.available ? "available" : p.reason}`).join("; ");
    throw new Error(`Backend "${choice}" is not available here (${why})`);
  }
  return { backend: factory(), probe };
}
