/** Launcher of embed.wgsl: out[t] = table[ids[t]], once per buffer of the (split) table. */
import type { DeviceTensor } from "../../src/backends/backend.ts";
import { colsOf, gpuTensor, rowsOf } from "../../src/backends/webgpu/buffers.ts";
import { type KernelContext, ShaderSource } from "../../src/backends/webgpu/pipelines.ts";

const SHADER = new ShaderSource(new URL("./embed.wgsl", import.meta.url));

export function embed(ctx: KernelContext, out: DeviceTensor, table: DeviceTensor, ids: DeviceTensor): void {
  const o = gpuTensor(out, "embed"), tab = gpuTensor(table, "embed");
  const hidden = colsOf(tab);
  for (const c of tab.chunks) {
    ctx.recorder.dispatch(SHADER, "embed_f32_bf16w", {
      0: ctx.buffers.uniform([rowsOf(o), hidden, c.rowStart, c.rows]),
      1: o.buffer,
      2: c.buffer,
      3: gpuTensor(ids, "embed").buffer,
    }, { invocations: rowsOf(o) * hidden });
  }
}
