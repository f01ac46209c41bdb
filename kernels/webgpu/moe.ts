/**
 * Launchers of moe.wgsl: routing (top-k + softmax per row) and the MXFP4 expert MLP: gate/up + SwiGLU into a
 * scratch activation, then down, weighted and summed into `out`, once per range of experts that one blocks buffer
 * and one scales buffer hold together (the two are split independently).
 */
import type { DeviceTensor, MoeMlpOptions } from "../../src/backends/backend.ts";
import { type Chunk, colsOf, type GpuTensor, gpuTensor, rowsOf } from "../../src/backends/webgpu/buffers.ts";
import type { KernelContext } from "../../src/backends/webgpu/pipelines.ts";
import { withPrecision } from "./precision.ts";

const SHADER = withPrecision(new URL("./moe.wgsl", import.meta.url));

export function moeRoute(
  ctx: KernelContext,
  expertIds: DeviceTensor,
  expertWeights: DeviceTensor,
  logits: DeviceTensor,
  topK: number,
): void {
  ctx.recorder.dispatch(SHADER[ctx.precision], "moe_route_f32", {
    0: ctx.buffers.uniform([rowsOf(logits), topK, 0, 0, 0, 0, colsOf(logits), { f32: 0 }, 0, 0]),
    1: gpuTensor(expertWeights, "moeRoute").buffer,
    2: gpuTensor(logits, "moeRoute").buffer,
    3: gpuTensor(expertIds, "moeRoute").buffer,
  }, { invocations: rowsOf(logits) });
}

interface ExpertRange {
  readonly start: number;
  readonly count: number;
  readonly blocks: Chunk;
  readonly scales: Chunk;
}

/** Expert ranges held by one blocks buffer and one scales buffer. */
function expertRanges(blocks: GpuTensor, scales: GpuTensor): ExpertRange[] {
  return blocks.chunks.flatMap((bc) =>
    scales.chunks.flatMap((sc) => {
      const start = Math.max(bc.rowStart, sc.rowStart);
      const end = Math.min(bc.rowStart + bc.rows, sc.rowStart + sc.rows);
      return start < end ? [{ start, count: end - start, blocks: bc, scales: sc }] : [];
    })
  );
}

export function moeMlp(
  ctx: KernelContext,
  out: DeviceTensor,
  x: DeviceTensor,
  expertIds: DeviceTensor,
  expertWeights: DeviceTensor,
  opt: MoeMlpOptions,
): void {
  const w = opt.weights;
  const gub = gpuTensor(w.gateUpBlocks, "moeMlp"), gus = gpuTensor(w.gateUpScales, "moeMlp");
  const db = gpuTensor(w.downBlocks, "moeMlp"), ds = gpuTensor(w.downScales, "moeMlp");
  const tokens = rowsOf(x), topK = colsOf(expertIds), hidden = colsOf(x), inter = opt.intermediateSize;
  const shader = SHADER[ctx.precision];
  const act = ctx.buffers.scratch(tokens * topK * inter * 4);
  const o = gpuTensor(out, "moeMlp").buffer;
  ctx.recorder.encoder().clearBuffer(o);
  const params = (r: ExpertRange) =>
    ctx.buffers.uniform([
      tokens,
      topK,
      hidden,
      inter,
      r.start,
      r.count,
      gub.shape[0],
      { f32: opt.swigluLimit },
      r.blocks.rowStart,
      r.scales.rowStart,
    ]);
  const ids = gpuTensor(expertIds, "moeMlp").buffer;
  for (const r of expertRanges(gub, gus)) {
    ctx.recorder.dispatch(shader, "moe_gate_up_f32", {
      0: params(r),
      1: act,
      2: gpuTensor(x, "moeMlp").buffer,
      3: ids,
      5: r.blocks.buffer,
      6: r.scales.buffer,
      7: gpuTensor(w.gateUpBias, "moeMlp").buffer,
    }, { invocations: tokens * topK * inter });
  }
  for (const r of expertRanges(db, ds)) {
    ctx.recorder.dispatch(shader, "moe_down_f32", {
      0: params(r),
      1: o,
      2: act,
      3: ids,
      4: gpuTensor(expertWeights, "moeMlp").buffer,
      5: r.blocks.buffer,
      6: r.scales.buffer,
      7: gpuTensor(w.downBias, "moeMlp").buffer,
    }, { invocations: tokens * hidden });
  }
}
