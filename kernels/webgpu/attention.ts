/**
 * Launcher of attention.wgsl: kv_store_f32 writes the step's k/v into each sequence's blocks, then attention_f32
 * runs one thread per (row, head) over the block table. Per row, `rows` holds its absolute position and where its
 * block table starts in `tables`.
 */
import { BackendError } from "../../src/errors.ts";
import type { AttentionOptions, DeviceTensor } from "../../src/backends/backend.ts";
import { GpuKvPool, gpuTensor } from "../../src/backends/webgpu/buffers.ts";
import { type KernelContext, ShaderSource } from "../../src/backends/webgpu/pipelines.ts";

const SHADER = new ShaderSource(new URL("./attention.wgsl", import.meta.url));

function describeBatch(opt: AttentionOptions): { rowInfo: Uint32Array; tables: Int32Array } {
  const rowInfo = new Uint32Array(opt.batch.numTokens * 2);
  const tables: number[] = [];
  for (const seg of opt.batch.segments) {
    const offset = tables.length;
    const table = opt.window > 0 ? seg.slidingBlocks : seg.fullBlocks;
    for (let b = 0; b < seg.fullBlocks.length; b++) tables.push(b < table.length ? table[b] : -1);
    for (let i = 0; i < seg.numTokens; i++) {
      rowInfo[2 * (seg.rowOffset + i)] = seg.startPosition + i;
      rowInfo[2 * (seg.rowOffset + i) + 1] = offset;
    }
  }
  return { rowInfo, tables: Int32Array.from(tables.length ? tables : [0]) };
}

export function attention(
  ctx: KernelContext,
  out: DeviceTensor,
  q: DeviceTensor,
  k: DeviceTensor,
  v: DeviceTensor,
  opt: AttentionOptions,
): void {
  const pool = opt.pool;
  if (!(pool instanceof GpuKvPool)) throw new BackendError("attention: the pool is not a WebGPU pool", "attention");
  const { rowInfo, tables } = describeBatch(opt);
  const { numTokens } = opt.batch;
  const params = ctx.buffers.uniform([
    numTokens,
    opt.numHeads,
    opt.numKeyValueHeads,
    opt.headDim,
    opt.window,
    pool.spec.blockSize,
  ]);
  const rows = ctx.buffers.temporary(ctx.buffers.storage(rowInfo));
  const tableBuffer = ctx.buffers.temporary(ctx.buffers.storage(tables));
  const keys = pool.keys[opt.layer], values = pool.values[opt.layer];
  ctx.recorder.dispatch(SHADER, "kv_store_f32", {
    0: params,
    3: keys,
    4: values,
    6: rows,
    7: tableBuffer,
    8: gpuTensor(k, "attention").buffer,
    9: gpuTensor(v, "attention").buffer,
  }, { invocations: numTokens * opt.numKeyValueHeads * opt.headDim });
  ctx.recorder.dispatch(SHADER, "attention_f32", {
    0: params,
    1: gpuTensor(out, "attention").buffer,
    2: gpuTensor(q, "attention").buffer,
    3: keys,
    4: values,
    5: gpuTensor(opt.sinks, "attention").buffer,
    6: rows,
    7: tableBuffer,
  }, { invocations: numTokens * opt.numHeads });
}
