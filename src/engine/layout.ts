/**
 * The device layout of `--gpu-mode`: which devices run single-device engines and which form a tensor-parallel group,
 * from the probe's device list and the model's size. Pure arithmetic (tested on fake layouts); main.ts builds the
 * engines it names and `deno task probe` prints it.
 *
 *   single   one engine on the first device (a model that does not fit is noted, not refused: the load says why).
 *   tensor   one group over the most devices whose count divides the model's heads, KV heads, MXFP4 blocks and vocab.
 *   pipeline one group of stages over every device (layers split).
 *   auto     a model that fits one device: single engines on the first devices and a tensor group on the rest for
 *            large requests (with 2 devices the group spans both and shares the first); one that does not fit: the
 *            smallest tensor group it fits on.
 */
import type { DeviceInfo } from "../backends/devices.ts";
import type { GPU_MODES } from "../config.ts";
import type { ModelConfig } from "../model/config.ts";
import { shardConfig } from "../model/tensor_parallel.ts";

export type GpuMode = (typeof GPU_MODES)[number];

/** A plan: device ids per single engine, the group's devices and how it splits the model. */
export interface LayoutPlan {
  readonly mode: GpuMode;
  readonly singles: readonly string[];
  readonly group?: { readonly kind: "tensor" | "pipeline"; readonly devices: readonly string[] };
  readonly notes: readonly string[];
}

/** Bytes a model needs on its devices: weights plus the KV cache it is given. */
export interface ModelNeed {
  readonly weightBytes: number;
  readonly kvCacheBytes: number;
}

/** Usable share of a device's memory (the rest: activations, scratch, the runtime). */
export const USABLE_MEMORY = 0.9;

/** Group sizes 2..n that split the model evenly, ascending. */
export function tensorSizes(config: ModelConfig, n: number): number[] {
  const sizes: number[] = [];
  for (let size = 2; size <= n; size++) {
    try {
      shardConfig(config, size);
      sizes.push(size);
    } catch { /* this size leaves a remainder */ }
  }
  return sizes;
}

/** Whether the model, split `size` ways, fits each of `devices`. */
function fits(devices: readonly DeviceInfo[], need: ModelNeed, size: number): boolean {
  const per = (need.weightBytes + need.kvCacheBytes) / size;
  return devices.every((d) => per <= d.memoryBytes * USABLE_MEMORY);
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

export function planLayout(
  devices: readonly DeviceInfo[],
  config: ModelConfig,
  need: ModelNeed,
  mode: GpuMode,
): LayoutPlan {
  const ids = devices.map((d) => d.id);
  const sizes = tensorSizes(config, devices.length);
  const fitsOne = devices.length > 0 && fits(devices.slice(0, 1), need, 1);
  const total = gib(need.weightBytes + need.kvCacheBytes);
  const notes: string[] = [];
  if (devices.length === 0) return { mode, singles: [], notes: ["no device found"] };
  if (mode === "pipeline") {
    if (devices.length < 2) notes.push("one device: pipeline has one stage");
    return { mode, singles: [], group: { kind: "pipeline", devices: ids }, notes };
  }
  if (mode === "tensor") {
    const size = sizes.at(-1);
    if (size === undefined) return { mode, singles: [ids[0]], notes: ["no device count above 1 splits the model"] };
    return { mode, singles: [], group: { kind: "tensor", devices: ids.slice(0, size) }, notes };
  }
  if (mode === "single" || sizes.length === 0) {
    if (!fitsOne) notes.push(`the model (${total}) does not fit ${ids[0]} (${gib(devices[0].memoryBytes)})`);
    if (mode === "auto") notes.push(`${devices.length} device(s): no tensor-parallel group`);
    return { mode, singles: [ids[0]], notes };
  }
  if (!fitsOne) {
    const size = sizes.find((s) => fits(devices.slice(0, s), need, s)) ?? sizes.at(-1)!;
    notes.push(`the model (${total}) does not fit one device: a tensor group of ${size} serves every request`);
    return { mode, singles: [], group: { kind: "tensor", devices: ids.slice(0, size) }, notes };
  }
  // Fits one device: keep at least one device for single engines; the group takes the rest (the smallest that
  // leaves the most single engines, as long as it fits).
  const spare = sizes.filter((s) => s < devices.length && fits(devices.slice(-s), need, s));
  if (spare.length === 0) {
    notes.push(`${ids[0]} is shared by the single engine and the group`);
    return { mode, singles: [ids[0]], group: { kind: "tensor", devices: ids.slice(0, sizes[0]) }, notes };
  }
  const size = spare[0];
  return {
    mode,
    singles: ids.slice(0, devices.length - size),
    group: { kind: "tensor", devices: ids.slice(-size) },
    notes,
  };
}
