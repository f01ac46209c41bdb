/** Launcher of sample.wgsl: one workgroup per row of logits, one token id per row (semantics: Ops.sample). */
import { BackendError } from "../../src/errors.ts";
import type { DeviceTensor } from "../../src/backends/backend.ts";
import { SAMPLE_PARAMS } from "../../src/backends/backend.ts";
import { colsOf, gpuTensor, rowsOf } from "../../src/backends/webgpu/buffers.ts";
import { type KernelContext, ShaderSource } from "../../src/backends/webgpu/pipelines.ts";

const SHADER = new ShaderSource(new URL("./sample.wgsl", import.meta.url));

export function sample(
  ctx: KernelContext,
  ids: DeviceTensor,
  logits: DeviceTensor,
  params: DeviceTensor,
  masked: readonly [number, number] | undefined,
): void {
  const rows = rowsOf(logits), vocab = colsOf(logits);
  if (rowsOf(ids) * colsOf(ids) !== rows || params.shape.reduce((a, b) => a * b, 1) !== rows * SAMPLE_PARAMS) {
    throw new BackendError(
      `sample: ids [${ids.shape}] and params [${params.shape}] do not match logits [${logits.shape}]`,
      "sample",
    );
  }
  ctx.recorder.dispatch(SHADER, "sample_f32", {
    0: ctx.buffers.uniform([vocab, masked?.[0] ?? 0, masked?.[1] ?? 0, masked ? 1 : 0]),
    1: gpuTensor(ids, "sample").buffer,
    2: gpuTensor(logits, "sample").buffer,
    3: gpuTensor(params, "sample").buffer,
    4: ctx.buffers.scratch(rows * vocab * 4),
  }, { workgroups: rows });
}
