/**
 * The devices this machine offers a model: every CUDA device the CUDA library sees (name, memory, compute
 * capability), else the CPU sockets the native backend would run ranks on (cores, threads, memory). The layout
 * planner (engine/layout.ts) builds `--gpu-mode auto` groups from this list; `deno task probe` prints both.
 */
import { CUDA_LIBRARY_PATH, loadNativeLibrary } from "./native/native_backend.ts";
import { listCudaDevices } from "./native/nccl.ts";

/** One device a rank can run on. */
export interface DeviceInfo {
  /** "cuda:0", "cpu:0" (a socket). */
  readonly id: string;
  readonly kind: "cuda" | "cpu";
  readonly index: number;
  readonly name: string;
  readonly memoryBytes: number;
  /** CUDA: compute capability and multiprocessors; CPU: physical cores and hardware threads. */
  readonly detail: Readonly<Record<string, string | number>>;
}

/** What was found, with why CUDA devices are absent when they are. */
export interface DeviceReport {
  readonly devices: readonly DeviceInfo[];
  readonly cuda: { readonly devices: number; readonly reason: string };
}

function cudaDevices(): { devices: DeviceInfo[]; reason: string } {
  let library;
  try {
    library = loadNativeLibrary({ path: CUDA_LIBRARY_PATH });
  } catch (err) {
    return { devices: [], reason: (err as Error).message };
  }
  try {
    const devices = listCudaDevices(library).map((d): DeviceInfo => ({
      id: `cuda:${d.index}`,
      kind: "cuda",
      index: d.index,
      name: d.name,
      memoryBytes: d.totalBytes,
      detail: { compute_capability: d.computeCapability, multiprocessors: d.multiprocessors, free_bytes: d.freeBytes },
    }));
    return { devices, reason: devices.length ? `${devices.length} CUDA device(s)` : "no CUDA device answers" };
  } catch (err) {
    return { devices: [], reason: (err as Error).message };
  } finally {
    library.close();
  }
}

/** Sockets from /proc/cpuinfo ("physical id", "core id"); one socket of every core when the file says nothing. */
export function cpuSockets(cpuinfo: string, memoryBytes: number): DeviceInfo[] {
  const sockets = new Map<string, { cores: Set<string>; threads: number; model: string }>();
  for (const block of cpuinfo.split(/\n\s*\n/)) {
    const field = (name: string) => block.match(new RegExp(`^${name}\\s*:\\s*(.*)$`, "m"))?.[1]?.trim();
    if (field("processor") === undefined) continue;
    const socket = field("physical id") ?? "0";
    const entry = sockets.get(socket) ?? { cores: new Set(), threads: 0, model: field("model name") ?? "CPU" };
    entry.cores.add(field("core id") ?? field("processor")!);
    entry.threads++;
    sockets.set(socket, entry);
  }
  if (sockets.size === 0) {
    const threads = navigator.hardwareConcurrency;
    sockets.set("0", { cores: new Set(Array.from({ length: threads }, (_, i) => `${i}`)), threads, model: "CPU" });
  }
  return [...sockets.values()].map((s, index) => ({
    id: `cpu:${index}`,
    kind: "cpu",
    index,
    name: s.model,
    memoryBytes: Math.floor(memoryBytes / sockets.size),
    detail: { cores: s.cores.size, threads: s.threads },
  }));
}

/** CUDA devices when there are any, else the CPU sockets. */
export function listDevices(): DeviceReport {
  const cuda = cudaDevices();
  if (cuda.devices.length > 0) {
    return { devices: cuda.devices, cuda: { devices: cuda.devices.length, reason: cuda.reason } };
  }
  let cpuinfo = "";
  try {
    cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  } catch { /* not Linux: one socket of hardwareConcurrency threads */ }
  return { devices: cpuSockets(cpuinfo, Deno.systemMemoryInfo().total), cuda: { devices: 0, reason: cuda.reason } };
}
