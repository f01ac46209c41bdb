/**
 * The sampling rule, written once (the oracle for {@link Ops.sample} on every backend and the host's own sampler):
 * argmax, or top-k / top-p by f32 weight thresholds found by bisection over float bits, then an inverse-CDF draw in
 * id order. Bisection instead of sorting is what a GPU does well; it keeps every tie at the threshold.
 *
 * Speed on the host: a bisection step that raises the threshold to τ also proves that no weight below τ can matter
 * to any later step, so the candidates are compacted (in id order) as τ rises. The sums and counts are the same
 * numbers, in the same order, as a pass over the whole row.
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

/** Rows at or below this temperature are greedy. */
export const GREEDY_TEMPERATURE = 1e-5;

const F32_ONE_BITS = 0x3f800000;
const bitsView = new DataView(new ArrayBuffer(4));
function floatOfBits(bits: number): number {
  bitsView.setUint32(0, bits);
  return bitsView.getFloat32(0);
}

function isMasked(i: number, masked: readonly [number, number] | undefined): boolean {
  return masked !== undefined && i >= masked[0] && i <= masked[1];
}

function argmax(logits: Float32Array, masked?: readonly [number, number]): { best: number; max: number } {
  let max = -Infinity, best = 0;
  for (let i = 0; i < logits.length; i++) {
    if (logits[i] > max && !isMasked(i, masked)) {
      max = logits[i];
      best = i;
    }
  }
  return { best, max };
}

/** Reusable buffers for {@link keptCandidates} (a vocabulary-sized pair per call would be fresh memory each token). */
export class SampleScratch {
  ids = new Int32Array(0);
  weights = new Float32Array(0);

  reserve(n: number): void {
    if (this.ids.length >= n) return;
    this.ids = new Int32Array(n);
    this.weights = new Float32Array(n);
  }
}

/** Candidate ids (ascending) and their f32 weights; shrinks as the threshold rises. */
class Candidates {
  ids: Int32Array;
  weights: Float32Array;
  length: number;

  constructor(ids: Int32Array, weights: Float32Array, length: number) {
    this.ids = ids;
    this.weights = weights;
    this.length = length;
  }

  count(tau: number): number {
    let n = 0;
    for (let i = 0; i < this.length; i++) if (this.weights[i] >= tau) n++;
    return n;
  }

  sum(tau: number): number {
    let s = 0;
    for (let i = 0; i < this.length; i++) if (this.weights[i] >= tau) s += this.weights[i];
    return s;
  }

  /** Drops the candidates below tau (keeps id order). */
  keep(tau: number): void {
    let n = 0;
    for (let i = 0; i < this.length; i++) {
      if (this.weights[i] >= tau) {
        this.ids[n] = this.ids[i];
        this.weights[n++] = this.weights[i];
      }
    }
    this.length = n;
  }
}

/** The bits of the largest float τ in [floatOfBits(lo), 1] with `valid(τ)` (valid holds at lo and is monotone). */
function largestThreshold(lo: number, set: Candidates, valid: (tau: number) => boolean): number {
  let hi = F32_ONE_BITS + 1; // weights are ≤ 1, so nothing is ≥ the float after 1
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (valid(floatOfBits(mid))) {
      lo = mid;
      set.keep(floatOfBits(lo));
    } else hi = mid;
  }
  return lo;
}

/**
 * The candidates a non-greedy row draws from: ids (ascending) with weights exp((z − max) / T) in f32, kept by top-k
 * and top-p (see {@link Ops.sample}); undefined for a greedy row or a row with nothing to draw.
 */
export function keptCandidates(
  logits: Float32Array,
  p: RowSampling,
  masked?: readonly [number, number],
  scratch: SampleScratch = new SampleScratch(),
): { ids: Int32Array; weights: Float32Array } | undefined {
  const n = logits.length;
  const { max } = argmax(logits, masked);
  if (p.temperature <= GREEDY_TEMPERATURE || max === -Infinity) return undefined;
  scratch.reserve(n);
  const { ids, weights } = scratch;
  let length = 0;
  for (let i = 0; i < n; i++) {
    if (isMasked(i, masked)) continue;
    const w = Math.fround(Math.exp((logits[i] - max) / p.temperature));
    if (w > 0) { // a zero weight is never drawn and never changes a count above τ > 0
      ids[length] = i;
      weights[length++] = w;
    }
  }
  const set = new Candidates(ids, weights, length);
  let tauBits = 0;
  if (p.topK > 0 && p.topK < n) tauBits = largestThreshold(0, set, (t) => set.count(t) >= p.topK);
  if (p.topP < 1) {
    const goal = p.topP * set.sum(floatOfBits(tauBits));
    tauBits = largestThreshold(tauBits, set, (t) => set.sum(t) >= goal);
  }
  set.keep(floatOfBits(tauBits));
  return { ids: set.ids.subarray(0, set.length), weights: set.weights.subarray(0, set.length) };
}

/**
 * The kept weights as a dense row (0 where dropped), or undefined for a greedy row. For tests that need each
 * token's share of the kept mass.
 */
export function keptWeights(
  logits: Float32Array,
  p: RowSampling,
  masked?: readonly [number, number],
): Float32Array | undefined {
  const kept = keptCandidates(logits, p, masked);
  if (!kept) return undefined;
  const w = new Float32Array(logits.length);
  kept.ids.forEach((id, j) => (w[id] = kept.weights[j]));
  return w;
}

/** Samples one row of logits (see {@link Ops.sample}); returns the token id. */
export function sampleRow(
  logits: Float32Array,
  p: RowSampling,
  masked?: readonly [number, number],
  scratch?: SampleScratch,
): number {
  const kept = keptCandidates(logits, p, masked, scratch);
  if (!kept || kept.ids.length === 0) return argmax(logits, masked).best;
  let total = 0;
  for (let i = 0; i < kept.weights.length; i++) total += kept.weights[i];
  const target = p.u * total;
  let running = 0;
  for (let i = 0; i < kept.weights.length; i++) {
    running += kept.weights[i];
    if (running > target) return kept.ids[i];
  }
  return kept.ids[kept.ids.length - 1];
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
