/** Launchers of elementwise.wgsl: add (in place when out is a) and gatherRows. */
import type { DeviceTensor } from "../../src/backends/backend.ts";
import { colsOf, gpuTensor } from "../../src/backends/webgpu/buffers.ts";
import { type KernelContext, ShaderSource } from "../../src/backends/webgpu/pipelines.ts";

const SHADER = new ShaderSource(new URL("./elementwise.wgsl", import.meta.url));

const size = (x: DeviceTensor) => x.shape.reduce((a, b) => a * b, 1);

export function add(ctx: KernelContext, out: DeviceTensor, a: DeviceTensor, b: DeviceTensor): void {
  const n = size(a);
  const bindings: Record<number, GPUBuffer> = {
    0: ctx.buffers.uniform([n, 0]),
    1: gpuTensor(out, "add").buffer,
    3: gpuTensor(b, "add").buffer,
  };
  if (out !== a) bindings[2] = gpuTensor(a, "add").buffer;
  ctx.recorder.dispatch(SHADER, out === a ? "add_inplace_f32" : "add_f32", bindings, { invocations: n });
}

export function gatherRows(ctx: KernelContext, out: DeviceTensor, x: DeviceTensor, rows: DeviceTensor): void {
  const n = size(out);
  ctx.recorder.dispatch(SHADER, "gather_rows_f32", {
    0: ctx.buffers.uniform([n, colsOf(x)]),
    1: gpuTensor(out, "gatherRows").buffer,
    2: gpuTensor(x, "gatherRows").buffer,
    4: gpuTensor(rows, "gatherRows").buffer,
  }, { invocations: n });
}
