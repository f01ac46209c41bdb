import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { DEFAULT_SAMPLING, logSoftmax, Random, Sampler, type SamplingParams, topIndices } from "./sampling.ts";

const LOGITS = new Float32Array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0]);

function params(overrides: Partial<SamplingParams>): SamplingParams {
  return { ...DEFAULT_SAMPLING, seed: 1234, ...overrides };
}

/** Empirical frequencies of `draws` samples (each from a fresh-state sampler would hide penalties: use one). */
function frequencies(p: SamplingParams, logits = LOGITS, draws = 20_000): number[] {
  const counts = new Array(logits.length).fill(0);
  const random = new Random(99);
  for (let i = 0; i < draws; i++) {
    // A new sampler per draw keeps output-count penalties out; seeds vary per draw.
    const sampler = new Sampler({ ...p, seed: random.nextUint32() }, { vocabSize: logits.length });
    counts[sampler.sample(logits).tokenId]++;
  }
  return counts.map((c) => c / draws);
}

function softmax(values: number[]): number[] {
  const max = Math.max(...values);
  const e = values.map((v) => Math.exp(v - max));
  const s = e.reduce((a, b) => a + b);
  return e.map((v) => v / s);
}

/** 4.5 standard errors of a binomial proportion: a false alarm about once in 150,000 checks. */
function assertClose(actual: number[], expected: number[], draws = 20_000): void {
  for (let i = 0; i < expected.length; i++) {
    const se = Math.sqrt(Math.max(expected[i] * (1 - expected[i]), 1e-9) / draws);
    assert(Math.abs(actual[i] - expected[i]) <= 4.5 * se + 1e-9, `token ${i}: ${actual[i]} vs ${expected[i]}`);
  }
}

Deno.test("temperature 0 is argmax with the lowest id on ties", () => {
  const sampler = new Sampler(params({ temperature: 0 }), { vocabSize: 4 });
  assertEquals(sampler.sample(new Float32Array([1, 3, 3, 2])).tokenId, 1);
});

Deno.test("temperature 1 and 0.5 sample from softmax(logits / T)", () => {
  assertClose(frequencies(params({ temperature: 1 })), softmax([...LOGITS]));
  assertClose(frequencies(params({ temperature: 0.5 })), softmax([...LOGITS].map((x) => x / 0.5)));
});

Deno.test("top_k keeps the k most likely tokens", () => {
  const expected = softmax([2, 1]).concat([0, 0, 0, 0]);
  assertClose(frequencies(params({ topK: 2 })), expected);
});

Deno.test("top_p keeps the smallest set whose mass reaches p", () => {
  const probs = softmax([...LOGITS]); // 0.574, 0.211, 0.128, 0.078, ...
  // p = 0.8 needs the first three tokens (0.574 + 0.211 = 0.785 < 0.8).
  const kept = softmax([2, 1, 0.5]).concat([0, 0, 0]);
  assertClose(frequencies(params({ topP: 0.8 })), kept);
  assert(probs[0] + probs[1] < 0.8);
});

Deno.test("min_p drops tokens below min_p × the top probability", () => {
  // e^(0.5 − 2) = 0.223 ≥ 0.2 is kept, e^(0 − 2) = 0.135 < 0.2 is dropped.
  assertClose(frequencies(params({ minP: 0.2 })), softmax([2, 1, 0.5]).concat([0, 0, 0]));
});

Deno.test("presence and frequency penalties lower the logits of tokens already generated", () => {
  const logits = new Float32Array([1, 1, 1]);
  const sampler = new Sampler(params({ temperature: 0, frequencyPenalty: 0.4, presencePenalty: 0.1 }), {
    vocabSize: 3,
  });
  const picks = [0, 1, 2, 3, 4, 5].map(() => sampler.sample(logits).tokenId);
  // Each pick lowers its own logit: greedy cycles through the tied tokens.
  assertEquals(picks, [0, 1, 2, 0, 1, 2]);
});

Deno.test("repetition penalty divides positive and multiplies negative logits of seen tokens", () => {
  const sampler = new Sampler(params({ temperature: 0, repetitionPenalty: 2 }), { vocabSize: 3, promptIds: [0] });
  assertEquals(sampler.sample(new Float32Array([3, 1.6, 0])).tokenId, 1); // 3/2 = 1.5 < 1.6
  const negative = new Sampler(params({ temperature: 0, repetitionPenalty: 2 }), { vocabSize: 2, promptIds: [1] });
  assertEquals(negative.sample(new Float32Array([-1.5, -1])).tokenId, 0); // −1 × 2 = −2 < −1.5
});

Deno.test("logit_bias shifts logits; −100 bans and +100 forces", () => {
  const bias = new Map([[0, -100], [4, 100]]);
  assertEquals(frequencies(params({ logitBias: bias }), LOGITS, 2000)[4], 1);
  const banned = frequencies(params({ logitBias: new Map([[0, -100]]) }));
  assertEquals(banned[0], 0);
});

Deno.test("the same seed gives the same tokens; another seed other tokens", () => {
  const logits = new Float32Array(Array.from({ length: 50 }, (_, i) => Math.sin(i)));
  const run = (seed: number) => {
    const s = new Sampler(params({ seed }), { vocabSize: 50 });
    return Array.from({ length: 40 }, () => s.sample(logits).tokenId);
  };
  assertEquals(run(7), run(7));
  assert(run(7).join() !== run(8).join());
});

Deno.test("reserved ids 200013..201087 are never sampled but keep their logprobs", () => {
  const vocab = 201088;
  const logits = new Float32Array(vocab);
  logits[200500] = 50; // the model loves a reserved id
  logits[17] = 1;
  const sampler = new Sampler(params({ temperature: 0, logprobs: 2 }), { vocabSize: vocab });
  const token = sampler.sample(logits);
  assertEquals(token.tokenId, 17);
  assertEquals(token.topLogprobs![0].tokenId, 200500); // logprobs are the raw model distribution
});

Deno.test("logprobs are the raw log-softmax, before temperature and filters", () => {
  const sampler = new Sampler(params({ temperature: 0.3, topK: 1, logprobs: 3 }), { vocabSize: LOGITS.length });
  const token = sampler.sample(LOGITS);
  const expected = logSoftmax(LOGITS);
  assertEquals(token.tokenId, 0);
  assertEquals(token.logprob, expected[0]);
  assertEquals(token.topLogprobs!.map((t) => t.tokenId), [0, 1, 2]);
  assertEquals(topIndices([1, 5, 5, 2], 3), [1, 2, 3]);
});

Deno.test("an allowed set (guided decoding) restricts the choice, greedy or sampled, whatever the logits", () => {
  const allowed = new Set([3, 5]); // two of the least likely tokens
  const greedy = new Sampler(params({ temperature: 0 }), { vocabSize: LOGITS.length });
  assertEquals(greedy.sample(LOGITS, allowed).tokenId, 3);
  const counts = new Map<number, number>();
  const sampler = new Sampler(params({ temperature: 1 }), { vocabSize: LOGITS.length });
  for (let i = 0; i < 2000; i++) {
    const id = sampler.sample(LOGITS, allowed).tokenId;
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  assertEquals([...counts.keys()].sort(), [3, 5]);
  // softmax([0, −3]) = 0.953 / 0.047: 4.5 standard errors over 2000 draws is ±0.021.
  assert(Math.abs(counts.get(3)! / 2000 - 0.953) < 0.021, `token 3 drawn ${counts.get(3)} times`);
});
