/**
 * Token sampling of one request: the pre-pass (penalties, logit bias, reserved ids, min-p), the seeded generator and
 * logprobs; the draw itself is the backends' sample op, so a seeded request gives the same tokens on every backend,
 * alone or batched, with or without logprobs. Logprobs are the model's raw log-softmax (f32 logits, before any
 * filter or mask), as vLLM reports by default.
 */
import {
  GREEDY_TEMPERATURE,
  type RowSampling as SampleOpRow,
  sampleRow,
  SampleScratch,
} from "../backends/reference/sample.ts";

/** Sampling settings of one request (OpenAI/vLLM semantics). */
export interface SamplingParams {
  /** 0 = greedy (argmax, lowest id on ties). */
  readonly temperature: number;
  readonly topP: number;
  /** 0 or less = off. */
  readonly topK: number;
  readonly minP: number;
  /** OpenAI: subtract `presencePenalty` once from every token that occurred in the output. */
  readonly presencePenalty: number;
  /** OpenAI: subtract `frequencyPenalty × count` for every token of the output. */
  readonly frequencyPenalty: number;
  /** vLLM/CTRL: divide positive (multiply negative) logits of tokens seen in prompt or output; 1 = off. */
  readonly repetitionPenalty: number;
  /** Token id → added to the logit (−100 bans, +100 forces in practice). */
  readonly logitBias: ReadonlyMap<number, number>;
  readonly seed: number | undefined;
  /** Number of top alternatives to report (0 = only the chosen token's logprob); undefined = no logprobs. */
  readonly logprobs: number | undefined;
}

/** Defaults: OpenAI's recommendation for gpt-oss is temperature 1, top_p 1. */
export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  logitBias: new Map(),
  seed: undefined,
  logprobs: undefined,
};

/** One sampled token with its logprobs. */
export interface SampledToken {
  readonly tokenId: number;
  /** The raw log-softmax of the chosen token; undefined when logprobs were not asked for. */
  readonly logprob?: number;
  /** The `logprobs` most likely tokens by raw log-softmax, most likely first. */
  readonly topLogprobs?: ReadonlyArray<{ tokenId: number; logprob: number }>;
}

/** A small, fast, well-mixed 32-bit generator (sfc32) seeded through splitmix32. */
export class Random {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#a = next();
    this.#b = next();
    this.#c = next();
    this.#d = next();
    for (let i = 0; i < 12; i++) this.nextUint32();
  }

  /** Uniform 32-bit integer. */
  nextUint32(): number {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0;
    this.#d = (this.#d + 1) >>> 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) >>> 0;
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0;
    this.#c = (this.#c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  next(): number {
    return (this.nextUint32() * 2 ** 21 + (this.nextUint32() >>> 11)) / 2 ** 53;
  }
}

/** Ids that are never sampled: the reserved range 200013..201087 of o200k_harmony (spec §8 item 16). */
export function reservedIdRange(vocabSize: number): [number, number] | undefined {
  // Only the real vocabulary has these ids; small test vocabularies have none.
  return vocabSize > 200013 ? [200013, vocabSize - 1] : undefined;
}

/** Raw log-softmax of the logits in f64 (the model's distribution before any sampling filter). */
export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const logSum = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - logSum;
  return out;
}

/** Indices of the k largest values, largest first (ties: lower index first). */
export function topIndices(values: ArrayLike<number>, k: number): number[] {
  const best: number[] = [];
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (best.length === k && !(v > values[best[k - 1]])) continue;
    let pos = best.length === k ? k - 1 : best.length;
    if (best.length < k) best.push(i);
    while (pos > 0 && v > values[best[pos - 1]]) {
      best[pos] = best[pos - 1];
      pos--;
    }
    best[pos] = i;
  }
  return best;
}

/** The settings of the single sample op ({@link sampleRow}) for one draw of a request. */
export type RowSampling = SampleOpRow;

/** The largest f32 below 1: a draw's uniform as the device receives it (f32 params). */
const U_MAX = 0.99999994;

/**
 * Samples tokens for one request; owns the request's random generator and output-token counts.
 *
 * One rule on every backend: penalties, logit bias, reserved ids, a guide's allowed set and min-p are a pre-pass
 * over the logits ({@link Sampler.prepare}); the draw is the sample op ({@link sampleRow}, the reference that every
 * device kernel is tested against) with one f32 uniform from the request's seeded generator per non-greedy token.
 * A row without a pre-pass may be drawn on the device with the same uniform: same tokens either way.
 */
export class Sampler {
  readonly #params: SamplingParams;
  readonly #random: Random;
  readonly #outputCounts = new Map<number, number>();
  readonly #seen = new Set<number>();
  readonly #masked: [number, number] | undefined;
  #scratch = new Float32Array(0);
  readonly #sampleScratch = new SampleScratch();

  constructor(params: SamplingParams, options: { vocabSize: number; promptIds?: readonly number[] }) {
    this.#params = params;
    this.#random = new Random(params.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]);
    this.#masked = reservedIdRange(options.vocabSize);
    for (const id of options.promptIds ?? []) this.#seen.add(id);
  }

  /** Whether the logits need a pre-pass before the sample op (penalties, logit bias, min-p). */
  get needsPrepass(): boolean {
    const p = this.#params;
    return p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0 ||
      p.logitBias.size > 0 || (p.minP > 0 && p.temperature > GREEDY_TEMPERATURE);
  }

  /** Whether the raw logits must come back to the host (logprobs). */
  get wantsLogprobs(): boolean {
    return this.#params.logprobs !== undefined;
  }

  /** Records a token that joined the output without being sampled here (e.g. forced). */
  observe(tokenId: number): void {
    this.#outputCounts.set(tokenId, (this.#outputCounts.get(tokenId) ?? 0) + 1);
    this.#seen.add(tokenId);
  }

  /** Takes a forced token (guided decoding) instead of sampling; logprobs still come from the model's logits. */
  force(tokenId: number, logits: Float32Array): SampledToken {
    this.observe(tokenId);
    return this.#withLogprobs(tokenId, logits);
  }

  /** The next draw's sample-op settings; consumes one uniform from the generator unless the request is greedy. */
  nextDraw(): RowSampling {
    const p = this.#params;
    const u = p.temperature <= GREEDY_TEMPERATURE ? 0 : Math.fround(Math.min(this.#random.next(), U_MAX));
    return { temperature: p.temperature, topK: p.topK, topP: p.topP, u };
  }

  /** Records a token the device sampled with {@link nextDraw}'s settings; `logits` only when logprobs are wanted. */
  acceptDeviceSample(tokenId: number, logits?: Float32Array): SampledToken {
    this.observe(tokenId);
    return logits ? this.#withLogprobs(tokenId, logits) : { tokenId };
  }

  /**
   * The pre-pass: a copy of the logits with repetition, presence and frequency penalties, logit bias, the reserved
   * ids and anything outside `allowed` (guided decoding) applied, then min-p: ids with (z − max) / T < ln(min_p)
   * (probability below min_p × the top one) set to −∞.
   */
  prepare(logits: Float32Array, allowed?: ReadonlySet<number> | Int32Array): Float32Array {
    const p = this.#params;
    if (this.#scratch.length < logits.length) this.#scratch = new Float32Array(logits.length);
    const z = this.#scratch.subarray(0, logits.length);
    z.set(logits);
    if (p.repetitionPenalty !== 1) {
      for (const id of this.#seen) z[id] = z[id] > 0 ? z[id] / p.repetitionPenalty : z[id] * p.repetitionPenalty;
    }
    if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
      for (const [id, count] of this.#outputCounts) z[id] -= p.presencePenalty + p.frequencyPenalty * count;
    }
    for (const [id, bias] of p.logitBias) if (id >= 0 && id < z.length) z[id] += bias;
    if (this.#masked) z.fill(-Infinity, this.#masked[0], this.#masked[1] + 1);
    if (allowed instanceof Int32Array) {
      for (let id = 0; id < z.length; id++) if (((allowed[id >> 5] >>> (id & 31)) & 1) === 0) z[id] = -Infinity;
    } else if (allowed) {
      const kept = [...allowed].filter((id) => id >= 0 && id < z.length).map((id) => [id, z[id]] as const);
      z.fill(-Infinity);
      for (const [id, logit] of kept) z[id] = logit;
    }
    if (p.minP > 0 && p.temperature > GREEDY_TEMPERATURE) {
      let max = -Infinity;
      for (let i = 0; i < z.length; i++) if (z[i] > max) max = z[i];
      const floor = max + p.temperature * Math.log(p.minP);
      for (let i = 0; i < z.length; i++) if (z[i] < floor) z[i] = -Infinity;
    }
    return z;
  }

  /**
   * Picks the next token from one row of logits (not modified); only among `allowed` (a set, or a bitmask:
   * bit id & 31 of word id >> 5) when given (guided decoding).
   */
  sample(logits: Float32Array, allowed?: ReadonlySet<number> | Int32Array): SampledToken {
    const z = this.prepare(logits, allowed);
    const tokenId = sampleRow(z, this.nextDraw(), this.#masked, this.#sampleScratch);
    this.observe(tokenId);
    return this.#withLogprobs(tokenId, logits);
  }

  #withLogprobs(tokenId: number, logits: Float32Array): SampledToken {
    const p = this.#params;
    if (p.logprobs === undefined) return { tokenId };
    const logprobs = logSoftmax(logits);
    return {
      tokenId,
      logprob: logprobs[tokenId],
      topLogprobs: p.logprobs > 0
        ? topIndices(logprobs, p.logprobs).map((id) => ({ tokenId: id, logprob: logprobs[id] }))
        : [],
    };
  }
}
