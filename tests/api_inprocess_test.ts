/**
 * The API against a fake engine, in process (createApp + app.request): request → engine request mapping, events →
 * OpenAI responses (JSON and SSE), engine refusals → OpenAI errors, /stats and /memory_stats wire shapes. The
 * end-to-end tests on a real server process are in api_test.ts.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { createApp } from "../src/api/app.ts";
import type { ServingState } from "../src/api/serving.ts";
import { loadServerConfig } from "../src/config.ts";
import { ContextOverflowError, OverloadedError } from "../src/errors.ts";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { ASSISTANT_STOP_IDS } from "../src/harmony/tokens.ts";
import { createLogger } from "../src/obs/logger.ts";
import { emptySnapshot, FakeEngine, type Script } from "./helpers/fake_engine.ts";

const PROFILES = Deno.readTextFileSync(new URL("../configs/profiles.json", import.meta.url));
const config = loadServerConfig({
  flags: {},
  env: {},
  readTextFile: (path) => (path === "/p.json" ? PROFILES : undefined),
  defaultConfigPath: "/none.json",
  profilesPath: "/p.json",
});
const tokenizer = new Tokenizer();
const MODEL = "gpt-oss-test";

/** An app serving `engine` as a ready model. */
function appWith(engine: FakeEngine) {
  const state: ServingState = {
    status: "ready",
    modelId: MODEL,
    backend: "fake",
    model: {
      modelId: MODEL,
      backend: "fake",
      engine,
      tokenizer,
      createdAt: 0,
      completionStopIds: [199999],
      demo: false,
    },
  };
  return createApp({
    config,
    logger: createLogger({ level: "error", format: "json", write: () => {} }),
    state,
    startedAtMs: 0,
  });
}

/** The model's answer as harmony text: reasoning, then a final message. */
const ANSWER =
  "<|channel|>analysis<|message|>Think first.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!" +
  "<|return|>";
const answer = (): Script => ({ tokens: tokenizer.encodeWithSpecials(ANSWER) });

function post(app: ReturnType<typeof appWith>, path: string, body: unknown, signal?: AbortSignal) {
  return app.request(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
}

Deno.test("chat: the engine request carries the rendered prompt, sampling and stop ids; the answer is parsed", async () => {
  const engine = new FakeEngine(answer);
  const response = await post(appWith(engine), "/v1/chat/completions", {
    model: MODEL,
    messages: [{ role: "user", content: "hi" }],
    temperature: 0.5,
    top_p: 0.9,
    seed: 11,
    n: 2,
    max_tokens: 50,
  });
  assertEquals(response.status, 200);
  const body = await response.json();
  assertEquals(body.object, "chat.completion");
  assertEquals(body.choices.length, 2);
  assertEquals(body.choices[0].message.content, "Hello there!");
  assertEquals(body.choices[0].message.reasoning_content, "Think first.");
  assertEquals(body.choices[0].finish_reason, "stop");
  const tokens = tokenizer.encodeWithSpecials(ANSWER).length;
  assertEquals(body.usage.completion_tokens, 2 * tokens);

  assertEquals(engine.submitted.length, 2);
  const [first, second] = engine.submitted.map((s) => s.request);
  assertEquals(first.maxTokens, 50);
  assertEquals([first.sampling.temperature, first.sampling.topP], [0.5, 0.9]);
  assertEquals([first.sampling.seed, second.sampling.seed], [11, 12]); // choice i gets seed + i
  assertEquals([...first.stopTokenIds].sort(), [...ASSISTANT_STOP_IDS].sort());
  const prompt = tokenizer.decode(first.promptIds);
  assert(
    prompt.startsWith("<|start|>system<|message|>") &&
      prompt.endsWith("<|start|>user<|message|>hi<|end|><|start|>assistant"),
    prompt,
  );
  assertEquals(body.usage.prompt_tokens, first.promptIds.length);
});

Deno.test("chat streaming: role chunk, reasoning and content deltas, finish reason, usage, [DONE]", async () => {
  const response = await post(appWith(new FakeEngine(answer)), "/v1/chat/completions", {
    model: MODEL,
    messages: [{ role: "user", content: "hi" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  assertEquals(response.headers.get("content-type")?.split(";")[0], "text/event-stream");
  const events = (await response.text()).split("\n\n").filter((e) => e && !e.startsWith(":"))
    .map((e) => e.replace(/^data: /, ""));
  assertEquals(events.pop(), "[DONE]");
  const chunks = events.map((e) => JSON.parse(e));
  assertEquals(chunks[0].choices[0].delta.role, "assistant");
  const text = (field: string) => chunks.map((c) => c.choices[0]?.delta?.[field] ?? "").join("");
  assertEquals(text("reasoning_content"), "Think first.");
  assertEquals(text("content"), "Hello there!");
  assertEquals(chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0].finish_reason), ["stop"]);
  assertEquals(chunks[chunks.length - 1].choices, []);
  assert(chunks[chunks.length - 1].usage.completion_tokens > 0);
});

Deno.test("completions: the prompt's tokens go to the engine as given; stop ids are the model's EOS set", async () => {
  const engine = new FakeEngine(() => ({ tokens: tokenizer.encode(" world and more"), finishReason: "length" }));
  const response = await post(appWith(engine), "/v1/completions", { model: MODEL, prompt: [1, 2, 3], max_tokens: 4 });
  const body = await response.json();
  assertEquals(body.choices[0].text, " world and more");
  assertEquals(body.choices[0].finish_reason, "length");
  assertEquals(engine.submitted[0].request.promptIds, [1, 2, 3]);
  assertEquals([...engine.submitted[0].request.stopTokenIds], [199999]);
});

Deno.test("engine refusals become OpenAI errors: context overflow 400, overload 429 with retry-after", async () => {
  const engine = new FakeEngine(answer);
  engine.validateError = new ContextOverflowError("This model's maximum context length is 4096 tokens");
  const tooLong = await post(appWith(engine), "/v1/chat/completions", {
    model: MODEL,
    messages: [{ role: "user", content: "x" }],
  });
  assertEquals(tooLong.status, 400);
  const error = (await tooLong.json()).error;
  assertEquals([error.type, error.param], ["invalid_request_error", "messages"]);
  assert(/maximum context length/.test(error.message));

  engine.validateError = undefined;
  engine.submitError = new OverloadedError("The server is at capacity", 7);
  const busy = await post(appWith(engine), "/v1/completions", { model: MODEL, prompt: "x" });
  assertEquals(busy.status, 429);
  assertEquals(busy.headers.get("retry-after"), "7");
  assertEquals((await busy.json()).error.code, "server_overloaded");
});

Deno.test("a client that goes away aborts its engine request", async () => {
  const controller = new AbortController();
  let release = () => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  const engine = new FakeEngine(() => ({ tokens: [1, 2, 3, 4], beforeToken: () => gate }));
  const response = await post(
    appWith(engine),
    "/v1/completions",
    { model: MODEL, prompt: "x", stream: true },
    controller.signal,
  );
  const reader = response.body!.getReader();
  while (engine.submitted.length === 0) await new Promise((resolve) => setTimeout(resolve, 1));
  controller.abort();
  release();
  await reader.cancel().catch(() => {});
  for (let i = 0; i < 1000 && !engine.submitted[0].signal?.aborted; i++) await new Promise((r) => setTimeout(r, 5));
  assert(engine.submitted[0].signal?.aborted, "the engine request's signal was aborted");
});

Deno.test("/stats and /memory_stats: snake_case wire shapes built from the engine's snapshot", async () => {
  const engine = new FakeEngine(answer);
  const snapshot = emptySnapshot();
  engine.snapshotValue = {
    stats: {
      ...snapshot.stats,
      running: 2,
      generatedTokens: 40,
      kvCachesHeld: 2,
      finished: { stop: 3, length: 1, abort: 0 },
    },
    memory: {
      ...snapshot.memory,
      blocks: { total: 10, used: 4, cached: 1, free: 5 },
      bytesTotal: 1000,
      bytesUsed: 400,
      prefixCache: { ...snapshot.memory.prefixCache, queriedTokens: 32, hitTokens: 16, hitRate: 0.5 },
    },
  };
  const app = appWith(engine);
  const stats = await (await app.request("/stats")).json();
  assertEquals(stats.engine.running, 2);
  assertEquals(stats.engine.generated_tokens, 40);
  assertEquals(stats.engine.finished, { stop: 3, length: 1, abort: 0 });
  assertEquals(stats.prefix_cache_hit_rate, 0.5);
  assert(Object.keys(stats.engine).every((key) => !/[A-Z]/.test(key)), Object.keys(stats.engine).join());
  const memory = await (await app.request("/memory_stats")).json();
  assertEquals(memory.kv_caches_held, 2);
  assertEquals(memory.kv_cache.blocks, { total: 10, used: 4, cached: 1, free: 5 });
  assertEquals([memory.kv_cache.bytes_total, memory.kv_cache.bytes_used], [1000, 400]);
  assertEquals(memory.kv_cache.prefix_cache.queried_tokens, 32);
  assertEquals(memory.kv_cache.prefix_cache.hit_rate, 0.5);
});

Deno.test("hostile sizes: a 4 MB message and schemas nested 2,000 and 100,000 deep get 400, never 500", async () => {
  const app = appWith(new FakeEngine(answer));
  const huge = await post(app, "/v1/chat/completions", {
    model: MODEL,
    messages: [{ role: "user", content: "word ".repeat(800_000) }],
  });
  assertEquals(huge.status, 400);
  assertEquals((await huge.json()).error.code, "context_length_exceeded");
  const completion = await post(app, "/v1/completions", { model: MODEL, prompt: "x ".repeat(2_000_000) });
  assertEquals(completion.status, 400);
  assertEquals((await completion.json()).error.param, "prompt");
  for (const depth of [2_000, 100_000]) {
    let schema: unknown = { type: "string" };
    for (let i = 0; i < depth; i++) schema = { type: "object", properties: { x: schema } };
    const deep = await post(app, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      tools: [{ type: "function", function: { name: "f", parameters: schema } }],
    });
    assertEquals(deep.status, 400, `depth ${depth}`);
    const error = (await deep.json()).error;
    assert(/nested deeper than 64|not valid JSON/.test(error.message), error.message);
  }
});

Deno.test("a wrong method on a known path is 405 with Allow; an unknown path is 404", async () => {
  const app = appWith(new FakeEngine(answer));
  const get = await app.request("/v1/chat/completions");
  assertEquals(get.status, 405);
  assertEquals(get.headers.get("allow"), "POST");
  assertEquals((await get.json()).error.code, "method_not_allowed");
  const postHealth = await app.request("/health", { method: "POST" });
  assertEquals(postHealth.status, 405);
  assertEquals(postHealth.headers.get("allow"), "GET, HEAD");
  const deleteModel = await app.request("/v1/models/some/model", { method: "DELETE" });
  assertEquals([deleteModel.status, deleteModel.headers.get("allow")], [405, "GET, HEAD"]);
  assertEquals((await app.request("/v2/nothing")).status, 404);
});

Deno.test("a client gone before its prompt was built (signal already aborted) still cancels its engine requests", async () => {
  const engine = new FakeEngine(answer);
  const controller = new AbortController();
  controller.abort();
  const app = appWith(engine);
  const chat = { model: MODEL, messages: [{ role: "user", content: "hi" }], n: 2 };
  await Promise.resolve(post(app, "/v1/chat/completions", chat, controller.signal)).catch(() => undefined);
  await Promise.resolve(post(app, "/v1/completions", { model: MODEL, prompt: "x" }, controller.signal)).catch(() => {});
  assertEquals(engine.submitted.length, 3);
  assert(engine.submitted.every((s) => s.signal?.aborted), "every engine request was cancelled");
});

Deno.test("draining: /health and /ready 503 draining, /live 200; new work 503 with Retry-After; reads still answer", async () => {
  const engine = new FakeEngine(answer);
  const state: ServingState = {
    status: "draining",
    modelId: MODEL,
    backend: "fake",
    model: { modelId: MODEL, backend: "fake", engine, tokenizer, createdAt: 0, completionStopIds: [], demo: false },
  };
  const app = createApp({
    config,
    logger: createLogger({ level: "error", format: "json", write: () => {} }),
    state,
    startedAtMs: 0,
  });
  const health = await app.request("/health");
  assertEquals([health.status, (await health.json()).status], [503, "draining"]);
  assertEquals((await app.request("/ready")).status, 503);
  assertEquals((await app.request("/live")).status, 200);
  assertEquals((await app.request("/v1/models")).status, 200);
  const refused = await post(app, "/v1/chat/completions", {
    model: MODEL,
    messages: [{ role: "user", content: "hi" }],
  });
  assertEquals(refused.status, 503);
  assertEquals(refused.headers.get("retry-after"), "5");
  assertEquals((await refused.json()).error.code, "draining");
  assertEquals(engine.submitted.length, 0);
  state.status = "ready";
  assertEquals((await app.request("/ready")).status, 200);
});
