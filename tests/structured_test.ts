/**
 * Structured outputs on a real server (the random-weight demo model, reasoning on with a small max_reasoning_tokens,
 * seeds 1..5): every answer that finishes with `stop` parses and validates against its schema with an independent
 * validator (ajv, draft 2020-12), and at least 90% finish with `stop` on schemas that bound their lengths; the same
 * for json_object; the analysis is not constrained; streamed content deltas concatenate to the validated JSON; the
 * Responses API's text.format uses the same machinery. In-process (a fake engine): the prompt keeps its
 * `# Response Formats` section, and bad schemas are 400s naming the field before anything runs.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { Ajv2020 } from "ajv/dist/2020.js";
import { createApp } from "../src/api/app.ts";
import type { ServingState } from "../src/api/serving.ts";
import { loadServerConfig } from "../src/config.ts";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { createLogger } from "../src/obs/logger.ts";
import { FakeEngine } from "./helpers/fake_engine.ts";
import { CORPUS } from "./fixtures/structured_schemas.ts";
import { type ServerProcess, startServer } from "./helpers/server.ts";

const DEMO = "gpt-oss-tiny-random";
const CACHE = await Deno.makeTempDir({ prefix: "gptoss-structured-" });
// The demo model (~50 MB) is made once per file; the file's process removes it as it ends.
globalThis.addEventListener("unload", () => Deno.removeSync(CACHE, { recursive: true }));
const SEEDS = [1, 2, 3, 4, 5];

async function chat(server: ServerProcess, body: Record<string, unknown>) {
  const response = await fetch(`${server.baseUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: DEMO, max_reasoning_tokens: 4, max_tokens: 400, ...body }),
  });
  return { status: response.status, json: await response.json() };
}

/** Runs `jobs` with at most `width` in flight (the engine batches them). */
async function pool<T>(jobs: (() => Promise<T>)[], width: number): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < jobs.length) {
      const i = next++;
      out[i] = await jobs[i]();
    }
  }));
  return out;
}

const server = await startServer([
  ...["--port", "0", "--model-cache-dir", CACHE, "--current-date", "2025-06-28", "--response-store", "off"],
  ...["--max-num-seqs", "16"],
]);
globalThis.addEventListener("unload", () => void server.stop());

Deno.test("the schema corpus: every `stop` answer validates (ajv); ≥ 90% stop on bounded schemas", async () => {
  assert(CORPUS.length >= 40);
  const ajv = new Ajv2020({ strict: false });
  const jobs = CORPUS.flatMap((entry) =>
    SEEDS.map((seed) => async () => {
      const { status, json } = await chat(server, {
        messages: [{ role: "user", content: `Answer with ${entry.name}.` }],
        seed,
        response_format: { type: "json_schema", json_schema: { name: "answer", schema: entry.schema, strict: true } },
      });
      assertEquals(status, 200, `${entry.name}: ${JSON.stringify(json)}`);
      const choice = json.choices[0];
      if (choice.finish_reason !== "stop") return { entry, stop: false };
      const value = JSON.parse(choice.message.content);
      assert(
        ajv.validate(entry.schema, value),
        `${entry.name} seed ${seed}: ${choice.message.content} fails: ${ajv.errorsText()}`,
      );
      return { entry, stop: true };
    })
  );
  const results = await pool(jobs, 8);
  const bounded = results.filter((r) => r.entry.bounded);
  const stopped = bounded.filter((r) => r.stop).length;
  console.log(
    `structured corpus: ${CORPUS.length} schemas × ${SEEDS.length} seeds; bounded: ${stopped}/${bounded.length} stop ` +
      `(all validate); unbounded: ${results.filter((r) => !r.entry.bounded && r.stop).length}/${
        results.filter((r) => !r.entry.bounded).length
      } stop`,
  );
  assert(stopped >= 0.9 * bounded.length, `only ${stopped} of ${bounded.length} bounded answers finished`);
});

Deno.test("json_object answers parse; the analysis is free (text a boolean schema rejects); streaming deltas join", async () => {
  for (const seed of SEEDS) {
    const { json } = await chat(server, {
      messages: [{ role: "user", content: "An object, please." }],
      seed,
      response_format: { type: "json_object" },
      max_tokens: 600,
    });
    const choice = json.choices[0];
    if (choice.finish_reason === "stop") JSON.parse(choice.message.content);
  }
  const { json } = await chat(server, {
    messages: [{ role: "user", content: "Yes or no?" }],
    seed: 3,
    max_reasoning_tokens: 12,
    response_format: { type: "json_schema", json_schema: { name: "b", schema: { type: "boolean" } } },
  });
  const message = json.choices[0].message;
  assert(["true", "false"].includes(message.content), message.content);
  assert(message.reasoning.length > 0 && !["true", "false"].includes(message.reasoning.trim()));
  assertEquals(json.usage.completion_tokens_details.reasoning_tokens <= 13, true);

  const streamed = await fetch(`${server.baseUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: DEMO,
      messages: [{ role: "user", content: "A person." }],
      seed: 2,
      stream: true,
      max_reasoning_tokens: 4,
      max_tokens: 300,
      response_format: { type: "json_schema", json_schema: { name: "p", schema: CORPUS[10].schema } },
    }),
  });
  let content = "", finish = "";
  for (const event of (await streamed.text()).split("\n\n")) {
    if (!event.startsWith("data: {")) continue;
    const choice = JSON.parse(event.slice(6)).choices[0];
    content += choice?.delta?.content ?? "";
    finish = choice?.finish_reason ?? finish;
  }
  assertEquals(finish, "stop");
  assert(new Ajv2020().validate(CORPUS[10].schema, JSON.parse(content)), content);
});

Deno.test("Responses text.format json_schema gives a validated output_text; guided_choice picks one of the choices", async () => {
  const schema = CORPUS[10].schema;
  const response = await fetch(`${server.baseUrl}/v1/responses`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: DEMO,
      input: "A person.",
      seed: 4,
      max_reasoning_tokens: 4,
      max_output_tokens: 300,
      text: { format: { type: "json_schema", name: "p", schema, strict: true } },
    }),
  });
  const body = await response.json();
  assertEquals(body.status, "completed", JSON.stringify(body));
  assert(new Ajv2020().validate(schema, JSON.parse(body.output_text)), body.output_text);
  const { json } = await chat(server, {
    messages: [{ role: "user", content: "Pick." }],
    seed: 1,
    guided_choice: ["alpha", "beta", "γάμμα"],
  });
  assert(["alpha", "beta", "γάμμα"].includes(JSON.parse(json.choices[0].message.content)));
});

Deno.test("in process: the prompt keeps # Response Formats; bad schemas and guided_regex are 400s before anything runs", async () => {
  const tokenizer = new Tokenizer();
  const engine = new FakeEngine(() => ({ tokens: [] }));
  const config = loadServerConfig({
    flags: {},
    env: {},
    readTextFile: (path) =>
      path === "/p.json" ? Deno.readTextFileSync(new URL("../configs/profiles.json", import.meta.url)) : undefined,
    defaultConfigPath: "/none.json",
    profilesPath: "/p.json",
  });
  const state: ServingState = {
    status: "ready",
    modelId: "m",
    backend: "fake",
    model: { modelId: "m", backend: "fake", engine, tokenizer, createdAt: 0, completionStopIds: [], demo: false },
  };
  const app = createApp({
    config,
    logger: createLogger({ level: "error", format: "json", write: () => {} }),
    state,
    startedAtMs: 0,
  });
  const post = (body: Record<string, unknown>) =>
    app.request("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }], ...body }),
    });
  const ok = await post({
    response_format: { type: "json_schema", json_schema: { name: "shape", schema: { type: "boolean" } } },
  });
  await ok.text();
  const prompt = tokenizer.decode(engine.submitted[0].request.promptIds);
  assert(prompt.includes("# Response Formats") && prompt.includes("## shape"), prompt);
  assert(engine.submitted[0].request.guide, "the request carries the grammar guide");
  for (
    const [body, param] of [
      [
        { response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "nonsense" } } } },
        "response_format",
      ],
      [{ guided_json: "{not json" }, "guided_json"],
      [{ guided_regex: "[a-z]+" }, "guided_regex"],
    ] as const
  ) {
    const r = await post(body);
    const error = (await r.json()).error;
    assertEquals([r.status, error.param], [400, param], JSON.stringify(error));
  }
  assertEquals(engine.submitted.length, 1, "no bad request reached the engine");
});

Deno.test("strict tools: a forced call's arguments validate against its parameters (chat and Responses)", async () => {
  const parameters = {
    type: "object",
    properties: { city: { type: "string", maxLength: 12 }, days: { type: "integer", minimum: 1, maximum: 7 } },
    required: ["city", "days"],
    additionalProperties: false,
  };
  const ajv = new Ajv2020();
  let calls = 0;
  for (const seed of SEEDS) {
    const { json } = await chat(server, {
      messages: [{ role: "user", content: "Weather?" }],
      seed,
      tools: [{ type: "function", function: { name: "get_weather", parameters, strict: true } }],
      tool_choice: { type: "function", function: { name: "get_weather" } },
      max_reasoning_tokens: 4,
      max_tokens: 400,
    });
    for (const call of json.choices[0].message.tool_calls ?? []) {
      calls++;
      const args = JSON.parse(call.function.arguments);
      assert(ajv.validate(parameters, args), `${call.function.arguments}: ${ajv.errorsText()}`);
    }
  }
  console.log(`strict tools: ${calls} complete calls of ${SEEDS.length} requests, all valid`);
  assert(calls >= 1, "at least one forced call completed within the token budget");
  const response = await fetch(`${server.baseUrl}/v1/responses`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: DEMO,
      input: "Weather?",
      seed: 1,
      max_output_tokens: 400,
      max_reasoning_tokens: 4,
      tools: [{ type: "function", name: "get_weather", parameters }], // strict by default on the Responses API
      tool_choice: { type: "function", name: "get_weather" },
    }),
  });
  const body = await response.json();
  const items = body.output.filter((o: { type: string }) => o.type === "function_call");
  assertEquals(items.length, 1, JSON.stringify(body.output));
  assert(ajv.validate(parameters, JSON.parse(items[0].arguments)), items[0].arguments);
});
