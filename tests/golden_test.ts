/** The reference forward pass against OpenAI's PyTorch logits (../shared/golden). */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { Backend } from "../src/backends/backend.ts";
import { createNativeBackend } from "../src/backends/native/native_backend.ts";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { probeBackends, selectBackend } from "../src/backends/select.ts";
import { createWebGpuBackend, requestWebGpu } from "../src/backends/webgpu/webgpu_backend.ts";
import { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { KvSession } from "../src/engine/kv_session.ts";
import { createModel, type Model } from "../src/model/gpt_oss.ts";
import { loadWeights } from "../src/checkpoint/load_weights.ts";
import {
  argmax,
  assertLogitsClose,
  GOLDEN_ROOT,
  type GoldenCase,
  goldenCases,
  goldenLogits,
} from "./helpers/golden.ts";

/** Loads a fixture; the sharded copy is memory-mapped, so the forward pass also runs over zero-copy views. */
async function loadModel(fixture: string, backend: Backend = createReferenceBackend()): Promise<Model> {
  const checkpoint = Checkpoint.open(`${GOLDEN_ROOT}${fixture}`, {
    mmap: fixture.includes("sharded") || backend.name !== "reference",
  });
  try {
    return createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  } finally {
    checkpoint.close();
  }
}

/** Prefills `ids` in chunks of the given sizes and returns the logits of every position ("all") or the last. */
async function prefill(
  model: Model,
  ids: number[],
  chunk: number,
  want: "all" | "last",
  blockSize = 16,
): Promise<Float32Array> {
  const session = new KvSession(model, { blockSize, numBlocks: 64 });
  const seq = session.sequence();
  const rows: Float32Array[] = [];
  for (let start = 0; start < ids.length; start += chunk) {
    const piece = ids.slice(start, start + chunk);
    const isLast = start + chunk >= ids.length;
    const [logits] = await session.step([{
      seq,
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
async function greedy(model: Model, ids: number[], steps: number, blockSize = 16): Promise<number[]> {
  const session = new KvSession(model, { blockSize, numBlocks: 64 });
  const seq = session.sequence();
  let [logits] = await session.step([{ seq, tokenIds: ids, logits: "last" }]);
  const out: number[] = [];
  for (let i = 0; i < steps; i++) {
    const next = argmax(logits);
    out.push(next);
    [logits] = await session.step([{ seq, tokenIds: [next], logits: "last" }]);
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
    const session = new KvSession(model, { blockSize: 4, numBlocks: 128 });
    const seqs = cases.map(() => session.sequence());
    const prefills = await session.step(
      cases.map((c, i) => ({ seq: seqs[i], tokenIds: c.input_ids, logits: c.logits_positions })),
    );
    cases.forEach((c, i) => assertLogitsClose(prefills[i], expectedRows(fixture, c), `${c.name} batched prefill`));
    const generated: number[][] = cases.map(() => []);
    let last = prefills.map((l) => l.subarray(l.length - vocab));
    for (let step = 0; step < 24; step++) {
      const next = last.map((l) => argmax(l));
      next.forEach((id, i) => generated[i].push(id));
      last = await session.step(seqs.map((seq, i) => ({ seq, tokenIds: [next[i]], logits: "last" as const })));
    }
    cases.forEach((c, i) => assertEquals(generated[i], c.greedy_ids, `${c.name} batched greedy`));
  });
}

Deno.test("golden tiny: a prompt served from the prefix cache gives the same logits as computed from scratch", async () => {
  const model = await loadModel("tiny");
  const [c] = goldenCases("tiny").filter((x) => x.name === "len19");
  const session = new KvSession(model, { blockSize: 4, numBlocks: 64 });
  const first = session.sequence();
  await session.step([{ seq: first, tokenIds: c.input_ids, logits: "none" }]);
  session.release(first); // its full blocks stay cached
  const { blocks, cachedTokens } = session.blocks.startSequence(c.input_ids);
  assertEquals(cachedTokens, 16); // 4 whole blocks; the last 3 tokens are recomputed
  const second = { tokens: c.input_ids.slice(0, cachedTokens), computed: cachedTokens, blocks };
  const [tail] = await session.step([{ seq: second, tokenIds: c.input_ids.slice(cachedTokens), logits: "all" }]);
  const vocab = c.logits_shape[1];
  const expected = goldenLogits("tiny", c).subarray(cachedTokens * vocab);
  assertLogitsClose(tail, expected, "cached prefix");
  assert(session.blocks.stats.hitTokens === 16);
});

Deno.test("golden tiny: greedy ids are the same with block sizes 1, 3 and 16 (sliding window 4 across blocks)", async () => {
  const model = await loadModel("tiny");
  const [c] = goldenCases("tiny").filter((x) => x.name === "len19");
  for (const blockSize of [1, 3, 16]) assertEquals(await greedy(model, c.input_ids, 24, blockSize), c.greedy_ids);
});

const probes = await probeBackends();
const gpu = await requestWebGpu();
for (const name of ["native", "cuda", "webgpu"] as const) {
  const probe = probes.find((p) => p.name === name)!;
  if (!probe.available) console.log(`golden ${name}: skipped: ${probe.reason}`);
  for (const fixture of ["tiny", "tiny-fullvocab"]) {
    Deno.test({
      name:
        `golden ${fixture} on the ${name} backend: logits within 1e-3 + 1e-5·|ref| (f32 accumulation), greedy ids equal`,
      ignore: !probe.available,
      fn: async () => {
        const backend = name === "native"
          ? createNativeBackend({ numThreads: 2 })
          : name === "webgpu"
          ? createWebGpuBackend(gpu!.device, gpu!.info, { precision: "f32" })
          : (await selectBackend(name, probes)).backend;
        const model = await loadModel(fixture, backend);
        for (const c of goldenCases(fixture)) {
          for (const chunk of [c.input_ids.length, 3]) {
            assertLogitsClose(
              await prefill(model, c.input_ids, chunk, c.logits_positions),
              expectedRows(fixture, c),
              `${c.name} chunk ${chunk}`,
            );
          }
          assertEquals(await greedy(model, c.input_ids, c.greedy_ids.length, 4), c.greedy_ids, `${c.name} greedy ids`);
        }
      },
    });
  }
}

/**
 * The f16 path (weight × activation products in f16, sums in f32: dense matmuls and MXFP4 experts) where the
 * adapter has shader-f16. Tolerance per case, from the fixture's own diagnostics: golden_info.json measures an all-bf16 run of the reference against the f32 logits
 * (`bf16_reference_max_abs_logit_diff`, 0.43 to 15); f16 rounds with 3 more mantissa bits (8× finer), so a deviation
 * near 1/8 of that is expected, and |Δ| ≤ 1/4 of it is asserted (a 2× margin: the roundings sit in other places than
 * in the bf16 run). Greedy ids must be identical (the bf16 run's are, too).
 */
Deno.test({
  name:
    "golden tiny and tiny-fullvocab on webgpu with f16 products (matmuls, experts): logits within the bf16 run's deviation / 4, greedy ids equal",
  ignore: !gpu?.info.shaderF16,
  fn: async () => {
    for (const fixture of ["tiny", "tiny-fullvocab"]) {
      const info = JSON.parse(Deno.readTextFileSync(`${GOLDEN_ROOT}${fixture}/golden_info.json`)) as {
        cases: { name: string; bf16_reference_max_abs_logit_diff: number }[];
      };
      const model = await loadModel(fixture, createWebGpuBackend(gpu!.device, gpu!.info, { precision: "f16" }));
      for (const c of goldenCases(fixture)) {
        const bound = info.cases.find((x) => x.name === c.name)!.bf16_reference_max_abs_logit_diff / 4;
        const actual = await prefill(model, c.input_ids, c.input_ids.length, c.logits_positions);
        const expected = expectedRows(fixture, c);
        let worst = 0;
        for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
        console.log(
          `golden ${fixture} ${c.name} webgpu f16: worst |Δlogit| ${worst.toExponential(2)} (bound ${
            bound.toFixed(3)
          })`,
        );
        assert(worst <= bound, `${fixture} ${c.name}: worst |Δlogit| ${worst} over ${bound}`);
        assertEquals(await greedy(model, c.input_ids, c.greedy_ids.length, 4), c.greedy_ids, `${c.name} greedy ids`);
      }
    }
  },
});
if (!gpu?.info.shaderF16) console.log("golden webgpu f16: skipped: the adapter has no shader-f16");

/**
 * The native q8 mode (`--weights-dtype q8`: Q8_0 matmul weights and 8-bit activations into every integer dot).
 * Tolerance per case from the fixture's own bf16 run (golden_info.json): Q8_0 rounds a value to a step of m/127 for
 * its 32-block's max |value| m, i.e. |Δ| ≤ m/254 ≈ m·2⁻⁸, which equals bf16's worst rounding of the block's largest
 * value and is about 3× bf16's rounding of a typical value in the block (mean |v| ≈ m/3 for random blocks of 32); the
 * bf16 run rounds weights and activations too (and more intermediates). So a deviation near 3× the bf16 run's is
 * expected and |Δ| ≤ 6× is asserted (a 2× margin, as for the f16 test above). Greedy ids: q8's must equal the
 * reference's at every step whose stored margin (top-1 − top-2) exceeds twice the worst deviation measured on the
 * prefill (no smaller change can swap the two); the agreement over all 24 steps is reported.
 */
Deno.test({
  name: "golden tiny and tiny-fullvocab on native q8: logits within 6× the bf16 run's deviation; greedy agreement",
  ignore: !probes.find((p) => p.name === "native")!.available,
  fn: async () => {
    for (const fixture of ["tiny", "tiny-fullvocab"]) {
      const info = JSON.parse(Deno.readTextFileSync(`${GOLDEN_ROOT}${fixture}/golden_info.json`)) as {
        cases: { name: string; bf16_reference_max_abs_logit_diff: number }[];
      };
      const backend = createNativeBackend({ numThreads: 2, weights: "q8" });
      try {
        const model = await loadModel(fixture, backend);
        for (const c of goldenCases(fixture)) {
          const bf16 = info.cases.find((x) => x.name === c.name)!.bf16_reference_max_abs_logit_diff;
          const actual = await prefill(model, c.input_ids, c.input_ids.length, c.logits_positions);
          const expected = expectedRows(fixture, c);
          let worst = 0;
          for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
          const ids = await greedy(model, c.input_ids, c.greedy_ids.length, 4);
          const agree = ids.findIndex((id, i) => id !== c.greedy_ids[i]);
          const same = agree < 0 ? ids.length : agree;
          console.log(
            `golden ${fixture} ${c.name} native q8: worst |Δlogit| ${worst.toFixed(3)} (${
              (worst / bf16).toFixed(2)
            }× the bf16 run's ${bf16.toFixed(3)}); greedy ids equal for ${same} of ${ids.length} steps`,
          );
          assert(worst <= 6 * bf16, `${fixture} ${c.name}: worst |Δlogit| ${worst} over 6 × ${bf16}`);
          for (let i = 0; i < same + 1 && i < ids.length; i++) {
            if (c.greedy_margins[i] > 2 * worst) {
              assertEquals(ids[i], c.greedy_ids[i], `${c.name} greedy step ${i} (margin ${c.greedy_margins[i]})`);
            }
          }
        }
      } finally {
        backend.dispose();
      }
    }
  },
});
