/** The WebGPU adapter and device: what the probe asks for, what it learns, and whether a model fits. */
import type { ModelFootprint } from "../backend.ts";

/** What the probe learned about the adapter. */
export interface WebGpuInfo {
  readonly description: string;
  readonly isFallbackAdapter: boolean;
  readonly maxStorageBufferBindingSize: number;
  readonly maxBufferSize: number;
  readonly shaderF16: boolean;
}

/**
 * Requests an adapter and a device with the adapter's full buffer limits; undefined when WebGPU is not there. The
 * device is destroyed when the process unloads. (That does not cure a crash seen at the exit of `deno test`
 * processes that touched WebGPU — heap corruption about once in 200 runs, in Deno's WebGPU teardown; see
 * tests/backend_conformance_test.ts.)
 */
export async function requestWebGpu(): Promise<{ device: GPUDevice; info: WebGpuInfo } | undefined> {
  ensureRuntimeDir();
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
  globalThis.addEventListener("unload", () => device.destroy());
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

/**
 * Mesa's Vulkan loader (WebGPU on lavapipe) writes two lines to stderr when XDG_RUNTIME_DIR is unset, which breaks
 * the one-line errors and the JSON-only log: give this process a private runtime directory before any probe (every WebGPU request does: tests and benches
 * too).
 */
export function ensureRuntimeDir(): void {
  if (Deno.env.get("XDG_RUNTIME_DIR")) return;
  const dir = Deno.makeTempDirSync({ prefix: "gpt-oss-deno-runtime-" }); // mode 0700
  Deno.env.set("XDG_RUNTIME_DIR", dir);
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // already gone
    }
  });
}
