/**
 * Device sampling's semantics in plain TypeScript (the oracle for {@link Ops.sample}): argmax, or top-k / top-p by
 * f32 weight thresholds found by bisection over float bits, then an inverse-CDF draw in id order. Bisection instead
 * of sorting is what a GPU does well; it keeps every tie at the threshold (a sort would cut ties by id).
 */
import type { DeviceTensor, Ops } from "../backend.ts";
import { SAMPLE_PARAMS } from "../backend.ts";
import { ref } from "./tensor.ts";

/** One row's sampling settings; `u` in [0, 1). */
export interface RowSampling {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly u: number;
}

const F32_ONE_BITS = 0x3f800000;
const bitsView = new DataView(new ArrayBuffer(4));
function floatOfBits(bits: number): number {
  bitsView.setUint32(0, bits);
  return bitsView.getFloat32(0);
}

/** The largest float τ in [floatOfBits(lo), 1] with `valid(τ)`; valid must hold at lo and be monotone. */
function largestThreshold(lo: number, valid: (tau: number) => boolean): number {
  let hi = F32_ONE_BITS + 1; // weights are ≤ 1, so nothing is ≥ the float after 1
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (valid(floatOfBits(mid))) lo = mid;
    else hi = mid;
  }
  return floatOfBits(lo);
}

function argmax(logits: Float32Array, masked?: readonly [number, number]): { best: number; max: number } {
  let max = -Infinity, best = 0;
  for (let i = 0; i < logits.length; i++) {
    if (masked && i >= masked[0] && i <= masked[1]) continue;
    if (logits[i] > max) {
      max = logits[i];
      best = i;
    }
  }
  return { best, max };
}

/**
 * The weights a non-greedy row draws from: exp((z − max) / T) in f32 where kept by top-k / top-p, 0 elsewhere
 * (see {@link Ops.sample}); undefined for a greedy row.
 */
export function keptWeights(
  logits: Float32Array,
  p: RowSampling,
  masked?: readonly [number, number],
): Float32Array | undefined {
  const n = logits.length;
  const { max } = argmax(logits, masked);
  if (p.temperature <= 1e-5 || max === -Infinity) return undefined;
  const w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    w[i] = masked && i >= masked[0] && i <= masked[1] ? 0 : Math.exp((logits[i] - max) / p.temperature);
  }
  const sumFrom = (tau: number) => {
    let s = 0;
    for (let i = 0; i < n; i++) if (w[i] >= tau) s += w[i];
    return s;
  };
  const bitsOf = (x: number) => {
    bitsView.setFloat32(0, x);
    return bitsView.getUint32(0);
  };
  let tauBits = 0;
  if (p.topK > 0 && p.topK < n) {
    tauBits = bitsOf(largestThreshold(0, (t) => {
      let count = 0;
      for (let i = 0; i < n; i++) if (w[i] >= t) count++;
      return count >= p.topK;
    }));
  }
  if (p.topP < 1) {
    const goal = p.topP * sumFrom(floatOfBits(tauBits));
    tauBits = bitsOf(largestThreshold(tauBits, (t) => sumFrom(t) >= goal));
  }
  const tau = floatOfBits(tauBits);
  for (let i = 0; i < n; i++) if (w[i] < tau) w[i] = 0;
  return w;
}

/** Samples one row of logits (see {@link Ops.sample}); returns the token id. */
export function sampleRow(logits: Float32Array, p: RowSampling, masked?: readonly [number, number]): number {
  const w = keptWeights(logits, p, masked);
  if (!w) return argmax(logits, masked).best;
  let total = 0;
  for (let i = 0; i < w.length; i++) total += w[i];
  const target = p.u * total;
  let running = 0, last = 0;
  for (let i = 0; i < w.length; i++) {
    if (w[i] === 0) continue;
    last = i;
    running += w[i];
    if (running > target) return i;
  }
  return last;
}

/** The op: rows of logits and params to ids. */
export const sample: NonNullable<Ops["sample"]> = (
  ids: DeviceTensor,
  logits: DeviceTensor,
  params: DeviceTensor,
  masked,
) => {
  const out = ref(ids).i32, zs = ref(logits).f32, ps = ref(params).f32;
  const vocab = logits.shape[logits.shape.length - 1];
  for (let r = 0; r < out.length; r++) {
    const q = ps.subarray(r * SAMPLE_PARAMS, (r + 1) * SAMPLE_PARAMS);
    out[r] = sampleRow(zs.subarray(r * vocab, (r + 1) * vocab), {
      temperature: q[0],
      topK: q[1],
      topP: q[2],
      u: q[3],
    }, masked);
  }
};
