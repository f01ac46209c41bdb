/** Launcher of matmul.wgsl: out = x · weightᵀ + bias, once per buffer of the (split) weight. */
import { BackendError } from "../../src/errors.ts";
import type { DeviceTensor } from "../../src/backends/backend.ts";
import { colsOf, gpuTensor, rowsOf } from "../../src/backends/webgpu/buffers.ts";
import type { KernelContext } from "../../src/backends/webgpu/pipelines.ts";
import { withPrecision } from "./precision.ts";

const SHADER = withPrecision(new URL("./matmul.wgsl", import.meta.url));

export function matmul(
  ctx: KernelContext,
  out: DeviceTensor,
  x: DeviceTensor,
  weight: DeviceTensor,
  bias?: DeviceTensor,
): void {
  const w = gpuTensor(weight, "matmul");
  const [n, k] = w.shape;
  if (colsOf(x) !== k || colsOf(out) !== n || rowsOf(out) !== rowsOf(x)) {
    throw new BackendError(`matmul: x [${x.shape}] and weight [${w.shape}] do not match out [${out.shape}]`, "matmul");
  }
  // Long rows: a workgroup of 64 lanes per (row, token) with a reduction; short rows: one lane each.
  const short = k <= 256;
  for (const c of w.chunks) {
    ctx.recorder.dispatch(SHADER[ctx.precision], short ? "matmul_short_bf16w" : "matmul_bf16w", {
      0: ctx.buffers.uniform([rowsOf(x), n, k, c.rowStart, c.rows, bias ? 1 : 0]),
      1: gpuTensor(out, "matmul").buffer,
      2: gpuTensor(x, "matmul").buffer,
      3: c.buffer,
      4: bias ? gpuTensor(bias, "matmul").buffer : ctx.buffers.dummy,
    }, short ? { invocations: c.rows * rowsOf(x) } : { workgroups: c.rows * rowsOf(x) });
  }
}
