/** Launcher of rmsnorm.wgsl: one workgroup per row. */
import type { DeviceTensor } from "../../src/backends/backend.ts";
import { colsOf, gpuTensor, rowsOf } from "../../src/backends/webgpu/buffers.ts";
import { type KernelContext, ShaderSource } from "../../src/backends/webgpu/pipelines.ts";

const SHADER = new ShaderSource(new URL("./rmsnorm.wgsl", import.meta.url));

export function rmsnorm(ctx: KernelContext, out: DeviceTensor, x: DeviceTensor, weight: DeviceTensor, eps: number) {
  ctx.recorder.dispatch(SHADER, "rmsnorm_f32_bf16w", {
    0: ctx.buffers.uniform([colsOf(x), { f32: eps }]),
    1: gpuTensor(out, "rmsnorm").buffer,
    2: gpuTensor(x, "rmsnorm").buffer,
    3: gpuTensor(weight, "rmsnorm").buffer,
  }, { workgroups: rowsOf(x) });
}
