/**
 * Structured outputs' cost (a script, not a test):
 *   deno run -A bench/structured_speed.ts [--model DIR] [--backend native]
 *  1. grammar compile time for every schema of the test corpus (first compile; the cache serves repeats);
 *  2. mask time per token at V = 201,088: xgrammar's bitmask plus applying it to a row of logits;
 *  3. output tokens/s over HTTP with and without a schema, batch 1 and 8, on --model (default: the demo model;
 *     the issue's number is on the mini preset: `deno task make-model --preset mini --out DIR`). The ratio is the goal.
 */
import { parseArgs } from "node:util";
import { DEFAULT_SAMPLING, Sampler } from "../src/engine/sampling.ts";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { VOCAB_SIZE } from "../src/harmony/tokens.ts";
import { RemoteGrammars } from "../src/structured/remote.ts";
import { StructuredOutputs } from "../src/structured/xgrammar.ts";
import { CORPUS } from "../tests/fixtures/structured_schemas.ts";
import { startServer } from "../tests/helpers/server.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { model: { type: "string" }, backend: { type: "string", default: "native" } },
});

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const tokenizer = new Tokenizer();

let t0 = performance.now();
const engine = await StructuredOutputs.create(StructuredOutputs.encodeVocab(tokenizer, VOCAB_SIZE));
console.log(`vocabulary indexed for xgrammar in ${(performance.now() - t0).toFixed(0)} ms`);
const compileMs: number[] = [];
for (const entry of CORPUS) {
  t0 = performance.now();
  await engine.compile(entry.schema, "bench");
  compileMs.push(performance.now() - t0);
}
console.log(
  `compile: ${CORPUS.length} schemas, median ${median(compileMs).toFixed(1)} ms, max ${
    Math.max(...compileMs).toFixed(1)
  } ms, total ${(compileMs.reduce((a, b) => a + b, 0) / 1000).toFixed(2)} s`,
);

// Mask per token: walk a grammar with the first allowed token each time.
const grammar = await engine.compile(CORPUS.find((e) => e.name === "order")!.schema, "bench");
const matcher = await engine.matcher(grammar);
const sampler = new Sampler({ ...DEFAULT_SAMPLING, temperature: 0, seed: 1 }, { vocabSize: VOCAB_SIZE, promptIds: [] });
const logits = new Float32Array(VOCAB_SIZE).map((_, i) => Math.sin(i));
const maskMs: number[] = [], applyMs: number[] = [];
for (let step = 0; step < 200 && !matcher.terminated; step++) {
  t0 = performance.now();
  const mask = matcher.mask();
  const t1 = performance.now();
  const token = sampler.sample(logits, mask).tokenId;
  applyMs.push(performance.now() - t1);
  maskMs.push(t1 - t0);
  if (!matcher.accept(token)) break;
}
console.log(
  `per token at V=${VOCAB_SIZE}: bitmask ${median(maskMs).toFixed(2)} ms, mask applied + sample ${
    median(applyMs).toFixed(2)
  } ms (median of ${maskMs.length})`,
);
matcher.dispose();

// The same through the grammar worker, as the server runs it (one message per token: accept + next mask).
const remote = new RemoteGrammars(tokenizer, VOCAB_SIZE);
const key = await remote.compile(CORPUS.find((e) => e.name === "order")!.schema, "bench");
const far = await remote.matcher(key);
const roundTripMs: number[] = [];
let next = await far.advance([]);
for (let step = 0; step < 200 && !next.terminated; step++) {
  let token = 0;
  while (((next.mask[token >> 5] >>> (token & 31)) & 1) === 0) token++;
  t0 = performance.now();
  next = await far.advance([token]);
  roundTripMs.push(performance.now() - t0);
}
console.log(
  `through the worker: ${
    median(roundTripMs).toFixed(2)
  } ms per token (accept + mask + transfer), overlapped with the model's step in the server`,
);
far.dispose();
remote.close();

// Tokens/s over HTTP.
const cache = await Deno.makeTempDir({ prefix: "gptoss-structured-bench-" });
const server = await startServer([
  ...["--port", "0", "--model-cache-dir", cache, "--response-store", "off", "--backend", values.backend!],
  ...(values.model ? ["--model", values.model] : []),
]);
try {
  const model = (await (await fetch(`${server.baseUrl}/v1/models`)).json()).data[0].id;
  const schema = CORPUS.find((e) => e.name === "order")!.schema;
  const run = async (batch: number, constrained: boolean) => {
    const started = performance.now();
    const bodies = await Promise.all(
      Array.from({ length: batch }, (_, i) =>
        fetch(`${server.baseUrl}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            model,
            messages: [{ role: "user", content: "An order." }],
            seed: i + 1,
            max_tokens: 64,
            ignore_eos: !constrained, // unconstrained: exactly 64 tokens; constrained: until the JSON is complete
            max_reasoning_tokens: 8,
            ...(constrained ? { response_format: { type: "json_schema", json_schema: { name: "o", schema } } } : {}),
          }),
        }).then((r) => r.json())),
    );
    const tokens = bodies.reduce((s, b) => s + b.usage.completion_tokens, 0);
    return tokens / ((performance.now() - started) / 1000);
  };
  for (const batch of [1, 8]) {
    await run(batch, true); // warm: the grammar is compiled once
    const free = await run(batch, false), constrained = await run(batch, true);
    console.log(
      `${model} ${values.backend} batch ${batch}: ${free.toFixed(1)} tok/s free, ${
        constrained.toFixed(1)
      } with a schema: ${(constrained / free).toFixed(2)}× (goal ≥ 0.9)`,
    );
  }
} finally {
  await server.stop();
  await Deno.remove(cache, { recursive: true });
}
