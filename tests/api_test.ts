/** End-to-end API tests against real server processes on 127.0.0.1, driven by the official openai client. */
import { deepStrictEqual as assertEquals, match as assertMatch, ok as assert } from "node:assert/strict";
import OpenAI from "openai";
import { argmax, GOLDEN_ROOT, goldenCases, goldenLogits } from "./helpers/golden.ts";
import { startServer } from "./helpers/server.ts";
import { probeBackends } from "../src/backends/select.ts";

const cudaProbe = (await probeBackends()).find((p) => p.name === "cuda")!;

const DEMO = "gpt-oss-tiny-random";
const CACHE = await Deno.makeTempDir({ prefix: "gptoss-api-test-" });
const common = ["--port", "0", "--model-cache-dir", CACHE, "--current-date", "2025-06-28"];

async function postJson(url: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: response.status, headers: response.headers, json: await response.json() };
}

/** Parses an SSE body into its data payloads; asserts the framing. */
function parseSse(text: string): unknown[] {
  const events = text.split("\n\n").filter((e) => e.length > 0 && !e.startsWith(": ")); // ": keep-alive" heartbeats
  const payloads = events.map((e) => {
    assert(e.startsWith("data: "), `bad event ${JSON.stringify(e)}`);
    return e.slice(6);
  });
  assertEquals(payloads[payloads.length - 1], "[DONE]");
  return payloads.slice(0, -1).map((p) => JSON.parse(p));
}

Deno.test("openai client: chat non-streaming, streaming with usage, tools, n=2, logprobs", async () => {
  const server = await startServer(common);
  try {
    const client = new OpenAI({ baseURL: `${server.baseUrl}/v1`, apiKey: "unused" });
    const models = await client.models.list();
    assertEquals(models.data.map((m) => m.id), [DEMO]);

    const plain = await client.chat.completions.create({
      model: DEMO,
      messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello!" }],
      max_tokens: 12,
      seed: 1,
    });
    assertEquals(plain.object, "chat.completion");
    assertEquals(plain.choices.length, 1);
    assertEquals(plain.usage!.completion_tokens, 12);
    assert(plain.usage!.prompt_tokens > 20);
    assert(["stop", "length", "tool_calls"].includes(plain.choices[0].finish_reason));
    assert(!(plain.choices[0].message.content ?? "").includes("<|"), "no harmony markup in content");

    const stream = await client.chat.completions.create({
      model: DEMO,
      messages: [{ role: "user", content: "Count to three." }],
      max_tokens: 10,
      stream: true,
      stream_options: { include_usage: true },
    });
    let roleSeen = false, finish: string | null = null, usage = null;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta.role === "assistant") roleSeen = true;
      if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    assert(roleSeen);
    assertEquals(finish, "length");
    assertEquals(usage!.completion_tokens, 10);

    const withTools = await client.chat.completions.create({
      model: DEMO,
      messages: [{ role: "user", content: "Weather in Paris?" }],
      tools: [{
        type: "function",
        function: {
          name: "get_weather",
          description: "Weather.",
          parameters: { type: "object", properties: { city: { type: "string" } } },
        },
      }],
      max_tokens: 8,
      n: 2,
      logprobs: true,
      top_logprobs: 3,
      seed: 5,
    });
    assertEquals(withTools.choices.map((c) => c.index), [0, 1]);
    for (const choice of withTools.choices) {
      assertEquals(choice.logprobs!.content!.length, 8);
      for (const entry of choice.logprobs!.content!) {
        assert(entry.logprob <= 0);
        assertEquals(entry.top_logprobs.length, 3);
        assert(
          entry.top_logprobs[0].logprob >= entry.logprob - 1e-9 ||
            entry.top_logprobs.some((t) => t.token === entry.token),
        );
      }
    }
    assertEquals(withTools.usage!.completion_tokens, 16);

    // The same seed gives the same completion.
    const again = await client.chat.completions.create({
      model: DEMO,
      messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello!" }],
      max_tokens: 12,
      seed: 1,
    });
    assertEquals(again.choices[0].message, plain.choices[0].message);
  } finally {
    await server.stop();
  }
});

Deno.test("errors are OpenAI-shaped: 400 malformed/schema/context, 404 model, 413 body, 401 key, and the server lives on", async () => {
  const server = await startServer([...common, "--api-key", "sk-test", "--max-body-bytes", "20000"]);
  const auth = { authorization: "Bearer sk-test" };
  const url = `${server.baseUrl}/v1/chat/completions`;
  try {
    const malformed = await postJson(url, "{not json", auth);
    assertEquals(malformed.status, 400);
    assertEquals(malformed.json.error.type, "invalid_request_error");

    const schema = await postJson(
      url,
      { model: DEMO, messages: [{ role: "user", content: "x" }], temperature: 5 },
      auth,
    );
    assertEquals(schema.status, 400);
    assertEquals(schema.json.error.param, "temperature");

    const role = await postJson(url, { model: DEMO, messages: [{ role: "wizard", content: "x" }] }, auth);
    assertEquals(role.status, 400);
    assertMatch(role.json.error.param, /^messages\[0\]/);

    const model = await postJson(url, { model: "gpt-5", messages: [{ role: "user", content: "x" }] }, auth);
    assertEquals(model.status, 404);
    assertEquals(model.json.error.code, "model_not_found");

    const context = await postJson(url, {
      model: DEMO,
      messages: [{ role: "user", content: "x" }],
      max_tokens: 200_000,
    }, auth);
    assertEquals(context.status, 400);
    assertEquals(context.json.error.code, "context_length_exceeded");

    const big = await postJson(url, { model: DEMO, messages: [{ role: "user", content: "x".repeat(30_000) }] }, auth);
    assertEquals(big.status, 413);

    const unsupported = await postJson(
      `${server.baseUrl}/v1/completions`,
      { model: DEMO, prompt: "a", suffix: "b" },
      auth,
    );
    assertEquals(unsupported.status, 400);
    assertEquals(unsupported.json.error.param, "suffix");

    const noKey = await postJson(url, { model: DEMO, messages: [{ role: "user", content: "x" }] });
    assertEquals(noKey.status, 401);
    const wrongKey = await postJson(url, { model: DEMO, messages: [{ role: "user", content: "x" }] }, {
      authorization: "Bearer nope",
    });
    assertEquals(wrongKey.status, 401);
    assertEquals((await fetch(`${server.baseUrl}/health`)).status, 200); // /health needs no key

    const unknownCall = await postJson(url, {
      model: DEMO,
      messages: [{ role: "tool", tool_call_id: "x", content: "1" }],
    }, auth);
    assertEquals(unknownCall.status, 400);

    const ok = await postJson(url, {
      model: DEMO,
      messages: [{ role: "user", content: "still alive?" }],
      max_tokens: 3,
    }, auth);
    assertEquals(ok.status, 200);
    assert(ok.headers.get("x-request-id"));
    const echoed = await fetch(`${server.baseUrl}/v1/models`, { headers: { ...auth, "x-request-id": "my-id-1" } });
    assertEquals(echoed.headers.get("x-request-id"), "my-id-1");
    await echoed.body?.cancel();
  } finally {
    await server.stop();
  }
});

for (
  const [fixture, backend] of [
    ["tiny", "reference"],
    ["tiny-fullvocab", "reference"],
    ["tiny", "native"],
    ["tiny-fullvocab", "native"],
    ["tiny", "webgpu"],
    ["tiny-fullvocab", "webgpu"],
    ["tiny", "cuda"],
    ["tiny-fullvocab", "cuda"],
  ]
) {
  const unavailable = backend === "cuda" && !cudaProbe.available;
  if (unavailable && fixture === "tiny") console.log(`golden replay on cuda: skipped: ${cudaProbe.reason}`);
  Deno.test({
    name: `golden ${fixture} replayed through /v1/completions on --backend ${backend}: greedy ids and echo logprobs`,
    ignore: unavailable,
    fn: async () => {
      // f32 arithmetic everywhere, so the f32 tolerance applies (the f16 path has its own golden test).
      const server = await startServer([
        ...common,
        "--model",
        `${GOLDEN_ROOT}${fixture}`,
        "--backend",
        backend,
        "--dtype",
        "f32",
      ]);
      try {
        const modelId = fixture;
        for (const c of goldenCases(fixture)) {
          const greedy = await postJson(`${server.baseUrl}/v1/completions`, {
            model: modelId,
            prompt: c.input_ids,
            temperature: 0,
            ignore_eos: true,
            max_tokens: 24,
            return_token_ids: true,
            logprobs: 1,
            echo: true,
          });
          assertEquals(greedy.status, 200, JSON.stringify(greedy.json));
          const choice = greedy.json.choices[0];
          assertEquals(choice.token_ids, c.greedy_ids, `${c.name} greedy ids`);
          const logits = goldenLogits(fixture, c);
          const vocab = c.logits_shape[1];
          const logSoftmax = (row: Float32Array, id: number) => {
            const max = row[argmax(row)];
            let sum = 0;
            for (const x of row) sum += Math.exp(x - max);
            return row[id] - max - Math.log(sum);
          };
          const tokenLogprobs: (number | null)[] = choice.logprobs.token_logprobs;
          assertEquals(tokenLogprobs.length, c.input_ids.length + 24);
          assertEquals(tokenLogprobs[0], null);
          const check = (position: number, id: number, actual: number) => {
            const expected = logSoftmax(logits.subarray(position * vocab, (position + 1) * vocab), id);
            assert(
              Math.abs(actual - expected) <= 1e-3 + 1e-5 * Math.abs(expected),
              `${c.name} pos ${position}: ${actual} vs ${expected}`,
            );
          };
          if (c.logits_positions === "all") {
            for (let i = 1; i < c.input_ids.length; i++) check(i - 1, c.input_ids[i], tokenLogprobs[i]!);
          }
          // The first generated token is predicted by the last prompt position, stored in both fixtures.
          const lastRow = c.logits_positions === "all" ? c.input_ids.length - 1 : 0;
          check(lastRow, c.greedy_ids[0], tokenLogprobs[c.input_ids.length]!);
        }
      } finally {
        await server.stop();
      }
    },
  });
}

Deno.test("/tokenize returns each harmony vector's token ids; /detokenize inverts it", async () => {
  const vectors = JSON.parse(
    await Deno.readTextFile(new URL("../../shared/harmony-vectors/vectors.json", import.meta.url)),
  );
  const server = await startServer(common);
  try {
    const { Tokenizer } = await import("../src/harmony/tokenizer.ts");
    const tokenizer = new Tokenizer();
    let checked = 0;
    for (const v of vectors.vectors) {
      if (v.operation !== "renderForCompletion" && v.operation !== "renderConversation") continue;
      const expectedText = (await Deno.readTextFile(new URL(`../../shared/harmony-vectors/${v.file}`, import.meta.url)))
        .trimEnd();
      const response = await postJson(`${server.baseUrl}/tokenize`, {
        harmony_messages: v.messages,
        add_generation_prompt: v.operation === "renderForCompletion",
        next_role: v.nextRole,
        drop_analysis: v.autoDropAnalysis ? "harmony-lib" : "none",
      });
      assertEquals(response.status, 200);
      assertEquals(response.json.tokens, tokenizer.encodeWithSpecials(expectedText), v.file);
      assertEquals(response.json.count, response.json.tokens.length);
      const back = await postJson(`${server.baseUrl}/detokenize`, { tokens: response.json.tokens });
      assertEquals(back.json.prompt, expectedText);
      checked++;
    }
    assert(checked >= 19);
    const chat = await postJson(`${server.baseUrl}/tokenize`, { messages: [{ role: "user", content: "hi" }] });
    assert(chat.json.tokens.length > 20 && chat.json.max_model_len === 131072);
  } finally {
    await server.stop();
  }
});

Deno.test("32 concurrent streams complete well-formed; a client that disconnects leaves no work running", async () => {
  const server = await startServer([...common, "--max-num-seqs", "8"]);
  try {
    const bodies = await Promise.all(Array.from({ length: 32 }, async (_, i) => {
      const response = await fetch(`${server.baseUrl}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: DEMO,
          messages: [{ role: "user", content: `Request ${i}` }],
          max_tokens: 6,
          stream: true,
        }),
      });
      assertEquals(response.status, 200);
      return parseSse(await response.text());
    }));
    for (const chunks of bodies) {
      const finishes = chunks.filter((c) =>
        (c as { choices: { finish_reason: string | null }[] }).choices[0]?.finish_reason
      );
      assertEquals(finishes.length, 1);
    }

    const controller = new AbortController();
    const response = await fetch(`${server.baseUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: DEMO,
        messages: [{ role: "user", content: "long" }],
        max_tokens: 5000,
        stream: true,
      }),
      signal: controller.signal,
    });
    const reader = response.body!.getReader();
    await reader.read();
    const during = await (await fetch(`${server.baseUrl}/stats`)).json();
    assertEquals(during.engine.running + during.engine.waiting, 1);
    controller.abort();
    let stats;
    for (let i = 0; i < 600; i++) { // polls every 50 ms; the bound only ends a hang
      stats = await (await fetch(`${server.baseUrl}/stats`)).json();
      if (stats.engine.running + stats.engine.waiting === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assertEquals(stats.engine.running, 0);
    assertEquals(stats.engine.kv_caches_held, 0);
    assert(stats.engine.finished.abort >= 1);
    assert(stats.engine.generated_tokens < 5000);
  } finally {
    await server.stop();
  }
});

Deno.test("a flood beyond the queue gets fast 429s with Retry-After while admitted requests complete", async () => {
  const dir = await Deno.makeTempDir();
  const configPath = `${dir}/server.json`;
  await Deno.writeTextFile(configPath, JSON.stringify({ scheduler: { maxNumSeqs: 2, maxQueuedRequests: 2 } }));
  const server = await startServer([...common, "--config", configPath]);
  try {
    const results = await Promise.all(
      Array.from({ length: 12 }, () =>
        postJson(`${server.baseUrl}/v1/completions`, {
          model: DEMO,
          prompt: "flood",
          max_tokens: 40,
          ignore_eos: true,
        })),
    );
    const rejected = results.filter((r) => r.status === 429);
    const accepted = results.filter((r) => r.status === 200);
    assert(rejected.length >= 1, "some requests were refused");
    assert(accepted.length >= 2, "admitted requests completed");
    for (const r of rejected) {
      assert(Number(r.headers.get("retry-after")) >= 1);
      assertEquals(r.json.error.type, "rate_limit_error");
    }
    for (const r of accepted) assertEquals(r.json.usage.completion_tokens, 40);
    assert(server.logLines.some((line) => line.includes('"event":"admission.reject"') && line.includes("queue_full")));
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a non-streaming client that leaves mid-prefill is cancelled: running back to 0, KV blocks freed", async () => {
  const server = await startServer([...common, "--prefill-chunk-size", "64"]);
  try {
    const controller = new AbortController();
    const prompt = Array.from({ length: 3000 }, (_, i) => 1000 + (i % 5000)); // ~47 prefill steps
    const pending = fetch(`${server.baseUrl}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: DEMO, prompt, max_tokens: 500, ignore_eos: true }),
      signal: controller.signal,
    }).catch((err) => err);
    const stats = async () => (await (await fetch(`${server.baseUrl}/stats`)).json()).engine;
    let engine = await stats();
    for (let i = 0; i < 6000 && engine.running === 0; i++) engine = await stats(); // bound: a hang, not a threshold
    assertEquals(engine.running, 1);
    controller.abort(); // the headers may be out already (the body waits for the answer): this ends the body read
    const outcome = await pending;
    if (outcome instanceof Response) await outcome.body?.cancel().catch(() => {});
    for (let i = 0; i < 6000 && engine.running + engine.waiting > 0; i++) engine = await stats();
    assertEquals([engine.running, engine.waiting, engine.finished.abort, engine.kv_caches_held], [0, 0, 1, 0]);
    const memory = (await (await fetch(`${server.baseUrl}/memory_stats`)).json()).kv_cache;
    assertEquals(memory.blocks.used, 0);
    assert(engine.generated_tokens < 500, `${engine.generated_tokens} tokens generated for a client that left`);
  } finally {
    await server.stop();
  }
});

Deno.test("SIGTERM during a slow in-flight request lets it finish, then the process exits 0", async () => {
  const server = await startServer(common);
  try {
    const pending = postJson(`${server.baseUrl}/v1/completions`, {
      model: DEMO,
      prompt: "a slow request",
      max_tokens: 150,
      ignore_eos: true,
    }, { "x-request-id": "req-in-flight" });
    // SIGTERM once the server has the request (an event, not a sleep: a busy machine may take any time to get there).
    for (
      let i = 0;
      i < 600 && !server.logLines.some((l) => /"request.start".*req-in-flight|req-in-flight.*"request.start"/.test(l));
      i++
    ) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const status = server.stop();
    const result = await pending;
    assertEquals(result.status, 200);
    assertEquals(result.json.usage.completion_tokens, 150);
    assertEquals((await status).code, 0);
    assert(server.logLines.some((line) => line.includes('"event":"server.drain"')));
  } finally {
    await server.stop();
  }
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(CACHE, { recursive: true });
  } catch {
    // already gone
  }
});
