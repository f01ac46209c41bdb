/**
 * Token sampling on the host: penalties, logit bias, reserved-id masking, temperature, top-k, top-p, min-p and a
 * per-request seeded generator, so a seeded request gives the same tokens whatever else shares its batch.
 * Logprobs are the model's raw log-softmax (f32 logits, before any filter or mask), as vLLM reports by default.
 */

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

/** Samples tokens for one request; owns the request's random generator and output-token counts. */
export class Sampler {
  readonly #params: SamplingParams;
  readonly #random: Random;
  readonly #outputCounts = new Map<number, number>();
  readonly #seen = new Set<number>();
  readonly #masked: [number, number] | undefined;
  #scratch = new Float32Array(0);
  #weights = new Float64Array(0);

  constructor(params: SamplingParams, options: { vocabSize: number; promptIds?: readonly number[] }) {
    this.#params = params;
    this.#random = new Random(params.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]);
    this.#masked = reservedIdRange(options.vocabSize);
    for (const id of options.promptIds ?? []) this.#seen.add(id);
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

  /**
   * The settings for sampling on the device, or undefined when this request needs the host sampler (logprobs,
   * penalties, logit bias, min-p). Device sampling has the same filters but picks by its own rule (see Ops.sample).
   */
  deviceSampling(): { temperature: number; topK: number; topP: number; u: number } | undefined {
    const p = this.#params;
    if (
      p.logprobs !== undefined || p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0 ||
      p.logitBias.size > 0 || p.minP > 0
    ) return undefined;
    // One draw per sampled token, as on the host, so a seeded request's stream does not depend on its batch.
    const u = p.temperature <= 1e-5 ? 0 : this.#random.next();
    return { temperature: p.temperature, topK: p.topK, topP: p.topP, u };
  }

  /** Records a token the device sampled with {@link deviceSampling}'s settings. */
  acceptDeviceSample(tokenId: number): SampledToken {
    this.observe(tokenId);
    return { tokenId };
  }

  /** Picks the next token from one row of logits (not modified); only among `allowed` when given (guided decoding). */
  sample(logits: Float32Array, allowed?: ReadonlySet<number>): SampledToken {
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
    if (allowed) {
      // Keep only the allowed ids, with their penalties and bias applied.
      const kept = [...allowed].filter((id) => id >= 0 && id < z.length).map((id) => [id, z[id]] as const);
      z.fill(-Infinity);
      for (const [id, logit] of kept) z[id] = logit;
    }

    const tokenId = p.temperature <= 1e-5 ? topIndices(z, 1)[0] : this.#sampleRandom(z);
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

  #sampleRandom(z: Float32Array): number {
    const p = this.#params;
    let max = -Infinity;
    for (let i = 0; i < z.length; i++) if (z[i] > max) max = z[i];
    const weights = this.#weights.length >= z.length ? this.#weights : (this.#weights = new Float64Array(z.length));
    const invT = 1 / p.temperature;
    let total = 0;
    for (let i = 0; i < z.length; i++) {
      const w = Math.exp((z[i] - max) * invT); // 0 for masked (−∞) logits
      weights[i] = w;
      total += w;
    }
    if (p.topK <= 0 && p.topP >= 1 && p.minP <= 0) return this.#draw(weights, total, z.length);

    // Candidates: tokens whose weight is not negligible (below 1e-12 of the top one, all of them together cannot
    // move a draw by more than 2e-7), most likely first.
    let candidates: number[] = [];
    if (p.topK > 0) candidates = topIndices(weights.subarray(0, z.length), p.topK);
    else {
      for (let i = 0; i < z.length; i++) if (weights[i] >= 1e-12) candidates.push(i);
      candidates.sort((a, b) => weights[b] - weights[a] || a - b);
    }
    total = candidates.reduce((s, id) => s + weights[id], 0);
    if (p.topP < 1) {
      let cumulative = 0;
      let keep = 0;
      while (keep < candidates.length) {
        cumulative += weights[candidates[keep]] / total;
        keep++;
        if (cumulative >= p.topP) break;
      }
      candidates = candidates.slice(0, keep);
    }
    if (p.minP > 0) {
      const floor = p.minP * weights[candidates[0]];
      candidates = candidates.filter((id) => weights[id] >= floor);
    }
    total = candidates.reduce((s, id) => s + weights[id], 0);
    let u = this.#random.next() * total;
    for (const id of candidates) {
      u -= weights[id];
      if (u < 0) return id;
    }
    return candidates[candidates.length - 1];
  }

  /** Draws from unnormalized weights[0..n). */
  #draw(weights: Float64Array, total: number, n: number): number {
    let u = this.#random.next() * total;
    let last = 0;
    for (let i = 0; i < n; i++) {
      if (weights[i] === 0) continue;
      last = i;
      u -= weights[i];
      if (u < 0) return i;
    }
    return last;
  }
}
