/** Launcher of rope.wgsl: rotates q and k in place, one thread per pair. */
import type { DeviceTensor } from "../../src/backends/backend.ts";
import { colsOf, gpuTensor, rowsOf } from "../../src/backends/webgpu/buffers.ts";
import { type KernelContext, ShaderSource } from "../../src/backends/webgpu/pipelines.ts";

const SHADER = new ShaderSource(new URL("./rope.wgsl", import.meta.url));

export function rope(
  ctx: KernelContext,
  q: DeviceTensor,
  k: DeviceTensor,
  positions: DeviceTensor,
  invFreq: DeviceTensor,
  concentration: number,
): void {
  const headDim = invFreq.shape[0] * 2;
  ctx.recorder.dispatch(SHADER, "rope_f32", {
    0: ctx.buffers.uniform([rowsOf(q), colsOf(q), colsOf(k), headDim, { f32: concentration }]),
    1: gpuTensor(q, "rope").buffer,
    2: gpuTensor(k, "rope").buffer,
    3: gpuTensor(positions, "rope").buffer,
    4: gpuTensor(invFreq, "rope").buffer,
  }, { invocations: rowsOf(q) * (colsOf(q) + colsOf(k)) / 2 });
}
