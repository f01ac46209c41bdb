/** The reference forward pass against OpenAI's PyTorch logits (../shared/golden). */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { Checkpoint } from "../src/model/checkpoint.ts";
import { createModel, forward, kvCacheSpec, type Model } from "../src/model/gpt_oss.ts";
import { loadWeights } from "../src/model/weights.ts";
import {
  argmax,
  assertLogitsClose,
  GOLDEN_ROOT,
  type GoldenCase,
  goldenCases,
  goldenLogits,
} from "./helpers/golden.ts";

/** Loads a fixture; the sharded copy is memory-mapped, so the forward pass also runs over zero-copy views. */
async function loadModel(fixture: string): Promise<Model> {
  const checkpoint = Checkpoint.open(`${GOLDEN_ROOT}${fixture}`, { mmap: fixture.includes("sharded") });
  const backend = createReferenceBackend();
  try {
    return createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  } finally {
    checkpoint.close();
  }
}

/** Prefills `ids` in chunks of the given sizes and returns the logits of every position ("all") or the last. */
async function prefill(model: Model, ids: number[], chunk: number, want: "all" | "last"): Promise<Float32Array> {
  const kv = model.backend.createKvCache(kvCacheSpec(model.config, 4096));
  const rows: Float32Array[] = [];
  for (let start = 0; start < ids.length; start += chunk) {
    const piece = ids.slice(start, start + chunk);
    const isLast = start + chunk >= ids.length;
    const [logits] = await forward(model, [{
      kv,
      tokenIds: piece,
      logits: want === "all" ? "all" : isLast ? "last" : "none",
    }]);
    rows.push(logits);
  }
  const out = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
  let offset = 0;
  for (const r of rows) {
    out.set(r, offset);
    offset += r.length;
  }
  return out;
}

/** Greedy decoding through the KV cache: prefill, then one token per step. */
async function greedy(model: Model, ids: number[], steps: number): Promise<number[]> {
  const kv = model.backend.createKvCache(kvCacheSpec(model.config, 4096));
  let [logits] = await forward(model, [{ kv, tokenIds: ids, logits: "last" }]);
  const out: number[] = [];
  for (let i = 0; i < steps; i++) {
    const next = argmax(logits);
    out.push(next);
    [logits] = await forward(model, [{ kv, tokenIds: [next], logits: "last" }]);
  }
  return out;
}

function expectedRows(fixture: string, c: GoldenCase): Float32Array {
  return goldenLogits(fixture, c);
}

for (const fixture of ["tiny", "tiny/sharded", "tiny-fullvocab"]) {
  const casesFixture = fixture === "tiny/sharded" ? "tiny" : fixture;
  Deno.test(`golden ${fixture}: whole-prompt prefill matches every stored logit and all greedy ids`, async () => {
    const model = await loadModel(fixture);
    for (const c of goldenCases(casesFixture)) {
      const logits = await prefill(model, c.input_ids, c.input_ids.length, c.logits_positions);
      assertLogitsClose(logits, expectedRows(casesFixture, c), `${c.name} prefill`);
      assertEquals(await greedy(model, c.input_ids, c.greedy_ids.length), c.greedy_ids, `${c.name} greedy ids`);
    }
  });
}

for (const fixture of ["tiny", "tiny-fullvocab"]) {
  Deno.test(`golden ${fixture}: token-by-token and chunked prefill (1, 3, 5) give the same logits`, async () => {
    const model = await loadModel(fixture);
    for (const c of goldenCases(fixture)) {
      for (const chunk of [1, 3, 5]) {
        const logits = await prefill(model, c.input_ids, chunk, c.logits_positions);
        assertLogitsClose(logits, expectedRows(fixture, c), `${c.name} chunk ${chunk}`);
      }
    }
  });

  Deno.test(`golden ${fixture}: a sequence batched beside others gets the same logits and greedy ids`, async () => {
    const model = await loadModel(fixture);
    const cases = goldenCases(fixture);
    const vocab = model.config.vocabSize;
    // All cases in one batch, each beside the others, then decoded together step by step.
    const caches = cases.map(() => model.backend.createKvCache(kvCacheSpec(model.config, 4096)));
    const prefills = await forward(
      model,
      cases.map((c, i) => ({ kv: caches[i], tokenIds: c.input_ids, logits: c.logits_positions })),
    );
    cases.forEach((c, i) => assertLogitsClose(prefills[i], expectedRows(fixture, c), `${c.name} batched prefill`));
    const generated: number[][] = cases.map(() => []);
    let last = prefills.map((l) => l.subarray(l.length - vocab));
    for (let step = 0; step < 24; step++) {
      const next = last.map((l) => argmax(l));
      next.forEach((id, i) => generated[i].push(id));
      last = await forward(model, caches.map((kv, i) => ({ kv, tokenIds: [next[i]], logits: "last" as const })));
    }
    cases.forEach((c, i) => assertEquals(generated[i], c.greedy_ids, `${c.name} batched greedy`));
  });
}
