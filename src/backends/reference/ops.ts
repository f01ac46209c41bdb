/**
 * Reference ops: plain TypeScript, f32 storage, f64 accumulation, bf16 weights widened one row at a time and
 * MXFP4 experts dequantized one row at a time inside the matmul (never materialized whole).
 */
import type { AttentionOptions, DeviceTensor, MoeMlpOptions, Ops } from "../backend.ts";
import type { RefKvPool } from "./kv_cache.ts";
import { dequantizeMxfp4Row, widenBf16 } from "../../formats/numeric.ts";
import { ref } from "./tensor.ts";
import { sample } from "./sample.ts";

/** Rows of a 2-D (or flattened) activation. */
function rowsOf(t: DeviceTensor): number {
  return t.shape.length === 1 ? 1 : t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
}

function colsOf(t: DeviceTensor): number {
  return t.shape[t.shape.length - 1];
}

function assertShape(op: string, condition: boolean, detail: string): void {
  if (!condition) throw new RangeError(`${op}: ${detail}`);
}

/** Grows a scratch buffer only when needed (no per-call allocation in steady state). */
class Scratch {
  #buffer = new Float32Array(0);
  get(size: number): Float32Array {
    if (this.#buffer.length < size) this.#buffer = new Float32Array(size);
    return this.#buffer;
  }
}

const rowScratch = new Scratch();
const scoreScratch = new Scratch();
const hiddenScratch = new Scratch();

function dot(a: Float32Array, aOffset: number, b: Float32Array, bOffset: number, n: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[aOffset + i] * b[bOffset + i];
    s1 += a[aOffset + i + 1] * b[bOffset + i + 1];
    s2 += a[aOffset + i + 2] * b[bOffset + i + 2];
    s3 += a[aOffset + i + 3] * b[bOffset + i + 3];
  }
  for (; i < n; i++) s0 += a[aOffset + i] * b[bOffset + i];
  return (s0 + s1) + (s2 + s3);
}

function embed(out: DeviceTensor, table: DeviceTensor, tokenIds: DeviceTensor): void {
  const o = ref(out).f32, ids = ref(tokenIds).i32, w = ref(table).u16;
  const [vocab, hidden] = table.shape;
  assertShape("embed", colsOf(out) === hidden && rowsOf(out) === ids.length, "out must be [numTokens, hiddenSize]");
  const row = rowScratch.get(hidden);
  for (let t = 0; t < ids.length; t++) {
    const id = ids[t];
    if (!(id >= 0 && id < vocab)) throw new RangeError(`embed: token id ${id} is outside the vocabulary of ${vocab}`);
    widenBf16(w, id * hidden, hidden, row);
    o.set(row.subarray(0, hidden), t * hidden);
  }
}

function rmsnorm(out: DeviceTensor, x: DeviceTensor, weight: DeviceTensor, eps: number): void {
  const o = ref(out).f32, xs = ref(x).f32;
  const hidden = colsOf(x);
  assertShape("rmsnorm", weight.shape[0] === hidden, "weight must be [hiddenSize]");
  const g = rowScratch.get(hidden);
  widenBf16(ref(weight).u16, 0, hidden, g);
  for (let r = 0, rows = rowsOf(x); r < rows; r++) {
    const base = r * hidden;
    let sumSquares = 0;
    for (let i = 0; i < hidden; i++) sumSquares += xs[base + i] * xs[base + i];
    const scale = 1 / Math.sqrt(sumSquares / hidden + eps);
    for (let i = 0; i < hidden; i++) o[base + i] = xs[base + i] * scale * g[i];
  }
}

function matmul(out: DeviceTensor, x: DeviceTensor, weight: DeviceTensor, bias?: DeviceTensor): void {
  const [n, k] = weight.shape;
  const rows = rowsOf(x);
  assertShape("matmul", colsOf(x) === k, `x has ${colsOf(x)} columns, weight expects ${k}`);
  assertShape("matmul", colsOf(out) === n && rowsOf(out) === rows, `out must be [${rows}, ${n}]`);
  const o = ref(out).f32, xs = ref(x).f32, w = ref(weight).u16;
  const b = bias ? ref(bias).u16 : undefined;
  const row = rowScratch.get(k);
  const biasRow = hiddenScratch.get(n);
  if (b) widenBf16(b, 0, n, biasRow);
  for (let j = 0; j < n; j++) {
    widenBf16(w, j * k, k, row);
    const add = b ? biasRow[j] : 0;
    for (let t = 0; t < rows; t++) o[t * n + j] = dot(row, 0, xs, t * k, k) + add;
  }
}

function rope(q: DeviceTensor, k: DeviceTensor, positions: DeviceTensor, invFreq: DeviceTensor, c: number): void {
  const freqs = ref(invFreq).f32, pos = ref(positions).i32;
  const half = freqs.length;
  const headDim = half * 2;
  const cos = rowScratch.get(headDim);
  const sin = cos.subarray(half);
  for (const t of [q, k]) {
    const data = ref(t).f32;
    const width = colsOf(t);
    assertShape("rope", width % headDim === 0 && rowsOf(t) === pos.length, "q/k must be [numTokens, heads·headDim]");
    for (let r = 0; r < pos.length; r++) {
      for (let i = 0; i < half; i++) {
        // f32 angle as the reference computes it (positions × inv_freq in f32), then cos/sin scaled by c.
        const angle = Math.fround(pos[r] * freqs[i]);
        cos[i] = Math.cos(angle) * c;
        sin[i] = Math.sin(angle) * c;
      }
      for (let base = r * width; base < (r + 1) * width; base += headDim) {
        for (let i = 0; i < half; i++) {
          const x1 = data[base + i], x2 = data[base + half + i];
          data[base + i] = x1 * cos[i] - x2 * sin[i];
          data[base + half + i] = x2 * cos[i] + x1 * sin[i];
        }
      }
    }
  }
}

function attention(out: DeviceTensor, q: DeviceTensor, k: DeviceTensor, v: DeviceTensor, opt: AttentionOptions): void {
  const { numHeads, numKeyValueHeads, headDim, window, layer } = opt;
  const pool = opt.pool as RefKvPool;
  const kvLayer = pool.layers[layer];
  const qs = ref(q).f32, ks = ref(k).f32, vs = ref(v).f32, o = ref(out).f32;
  const sinks = new Float32Array(numHeads); // [numHeads]
  widenBf16(ref(opt.sinks).u16, 0, numHeads, sinks);
  const groupSize = numHeads / numKeyValueHeads;
  const qWidth = numHeads * headDim, kvWidth = numKeyValueHeads * headDim;
  const scale = 1 / Math.sqrt(headDim);
  for (const seg of opt.batch.segments) {
    const table = window > 0 ? seg.slidingBlocks : seg.fullBlocks;
    // Store this chunk's keys and values first: every position then reads from the cache alike.
    for (let i = 0; i < seg.numTokens; i++) {
      const dst = pool.offset(table, seg.startPosition + i);
      const src = (seg.rowOffset + i) * kvWidth;
      kvLayer.keys.set(ks.subarray(src, src + kvWidth), dst);
      kvLayer.values.set(vs.subarray(src, src + kvWidth), dst);
    }
    const scores = scoreScratch.get(seg.startPosition + seg.numTokens);
    const end = seg.startPosition + seg.numTokens;
    const keyOffsets = new Int32Array(end); // element offset of each visible position's K/V row
    for (let j = window > 0 ? Math.max(0, seg.startPosition - window + 1) : 0; j < end; j++) {
      keyOffsets[j] = pool.offset(table, j);
    }
    for (let i = 0; i < seg.numTokens; i++) {
      const p = seg.startPosition + i;
      const row = seg.rowOffset + i;
      const first = window > 0 ? Math.max(0, p - window + 1) : 0;
      for (let h = 0; h < numHeads; h++) {
        const kvOffset = Math.floor(h / groupSize) * headDim;
        const qBase = row * qWidth + h * headDim;
        let max = sinks[h];
        for (let j = first; j <= p; j++) {
          const s = dot(qs, qBase, kvLayer.keys, keyOffsets[j] + kvOffset, headDim) * scale;
          scores[j] = s;
          if (s > max) max = s;
        }
        let denominator = Math.exp(sinks[h] - max); // the sink's mass joins the denominator, its value is dropped
        const oBase = row * qWidth + h * headDim;
        o.fill(0, oBase, oBase + headDim);
        for (let j = first; j <= p; j++) {
          const weight = Math.exp(scores[j] - max);
          denominator += weight;
          const vBase = keyOffsets[j] + kvOffset;
          for (let d = 0; d < headDim; d++) o[oBase + d] += weight * kvLayer.values[vBase + d];
        }
        for (let d = 0; d < headDim; d++) o[oBase + d] /= denominator;
      }
    }
  }
}

function moeRoute(expertIds: DeviceTensor, expertWeights: DeviceTensor, logits: DeviceTensor, topK: number): void {
  const z = ref(logits).f32, ids = ref(expertIds).i32, weights = ref(expertWeights).f32;
  const numExperts = colsOf(logits);
  for (let t = 0, rows = rowsOf(logits); t < rows; t++) {
    const base = t * numExperts;
    const chosen: number[] = [];
    for (let j = 0; j < topK; j++) {
      let best = -1;
      for (let e = 0; e < numExperts; e++) {
        if (chosen.includes(e)) continue;
        if (best < 0 || z[base + e] > z[base + best]) best = e; // strict >: ties keep the lowest index
      }
      chosen.push(best);
    }
    const max = z[base + chosen[0]];
    let sum = 0;
    for (let j = 0; j < topK; j++) sum += Math.exp(z[base + chosen[j]] - max);
    for (let j = 0; j < topK; j++) {
      ids[t * topK + j] = chosen[j];
      weights[t * topK + j] = Math.exp(z[base + chosen[j]] - max) / sum;
    }
  }
}

/** Clamped SwiGLU of GPT-OSS (spec §3.4): glu ≤ limit, lin ∈ [−limit, limit], glu·σ(1.702·glu)·(lin + 1). */
export function swiglu(glu: number, lin: number, limit: number): number {
  const g = Math.min(glu, limit);
  const l = Math.max(-limit, Math.min(lin, limit));
  // σ(x) = 1 / (1 + e^−x) overflows to 1/∞ = 0 gracefully for very negative x.
  return g / (1 + Math.exp(-1.702 * g)) * (l + 1);
}

function moeMlp(
  out: DeviceTensor,
  x: DeviceTensor,
  expertIds: DeviceTensor,
  expertWeights: DeviceTensor,
  opt: MoeMlpOptions,
): void {
  const xs = ref(x).f32, o = ref(out).f32, ids = ref(expertIds).i32, ws = ref(expertWeights).f32;
  const w = opt.weights;
  const hidden = colsOf(x), rows = rowsOf(x), inter = opt.intermediateSize;
  const topK = colsOf(expertIds);
  const [numExperts, gateUpRows, hiddenBlocks] = w.gateUpBlocks.shape;
  assertShape("moeMlp", gateUpRows === 2 * inter && hiddenBlocks * 32 === hidden, "gate_up blocks shape mismatch");
  const interBlocks = w.downBlocks.shape[2];
  assertShape("moeMlp", interBlocks * 32 === inter && w.downBlocks.shape[1] === hidden, "down blocks shape mismatch");
  const gub = ref(w.gateUpBlocks).u8, gus = ref(w.gateUpScales).u8, gubias = ref(w.gateUpBias).u16;
  const db = ref(w.downBlocks).u8, ds = ref(w.downScales).u8, dbias = ref(w.downBias).u16;
  o.fill(0, 0, rows * hidden);

  // Group the (token, slot) pairs by expert so each dequantized row serves every token routed to it.
  const byExpert: number[][] = Array.from({ length: numExperts }, () => []);
  for (let t = 0; t < rows; t++) for (let j = 0; j < topK; j++) byExpert[ids[t * topK + j]].push(t * topK + j);

  const row = rowScratch.get(Math.max(hidden, inter));
  const biasRow = new Float32Array(Math.max(2 * inter, hidden));
  for (let e = 0; e < numExperts; e++) {
    const slots = byExpert[e];
    if (slots.length === 0) continue;
    const hiddenAct = hiddenScratch.get(slots.length * 2 * inter);
    widenBf16(gubias, e * 2 * inter, 2 * inter, biasRow);
    for (let r = 0; r < 2 * inter; r++) {
      const rowIndex = e * 2 * inter + r;
      dequantizeMxfp4Row(gub, rowIndex * hiddenBlocks * 16, gus, rowIndex * hiddenBlocks, hiddenBlocks, row);
      for (let s = 0; s < slots.length; s++) {
        const t = Math.floor(slots[s] / topK);
        hiddenAct[s * 2 * inter + r] = dot(row, 0, xs, t * hidden, hidden) + biasRow[r];
      }
    }
    // Interleaved rows: even = glu, odd = linear. Write the activation into the first half of each slot's rows.
    for (let s = 0; s < slots.length; s++) {
      const base = s * 2 * inter;
      for (let i = 0; i < inter; i++) {
        hiddenAct[base + i] = swiglu(hiddenAct[base + 2 * i], hiddenAct[base + 2 * i + 1], opt.swigluLimit);
      }
    }
    widenBf16(dbias, e * hidden, hidden, biasRow);
    for (let r = 0; r < hidden; r++) {
      const rowIndex = e * hidden + r;
      dequantizeMxfp4Row(db, rowIndex * interBlocks * 16, ds, rowIndex * interBlocks, interBlocks, row);
      for (let s = 0; s < slots.length; s++) {
        const t = Math.floor(slots[s] / topK);
        const y = dot(row, 0, hiddenAct, s * 2 * inter, inter) + biasRow[r];
        o[t * hidden + r] += ws[slots[s]] * y;
      }
    }
  }
}

function add(out: DeviceTensor, a: DeviceTensor, b: DeviceTensor): void {
  const o = ref(out).f32, as = ref(a).f32, bs = ref(b).f32;
  assertShape("add", as.length === bs.length && o.length === as.length, "operands differ in size");
  for (let i = 0; i < o.length; i++) o[i] = as[i] + bs[i];
}

function gatherRows(out: DeviceTensor, x: DeviceTensor, rows: DeviceTensor): void {
  const o = ref(out).f32, xs = ref(x).f32, idx = ref(rows).i32;
  const width = colsOf(x);
  for (let r = 0; r < idx.length; r++) o.set(xs.subarray(idx[r] * width, (idx[r] + 1) * width), r * width);
}

/** The reference op table. */
export const REFERENCE_OPS: Ops = {
  embed,
  rmsnorm,
  matmul,
  rope,
  attention,
  moeRoute,
  moeMlp,
  add,
  gatherRows,
  sample,
};
