/**
 * The Responses API with the official openai client over HTTP, against the app served on a free port with a scripted
 * engine (so the model's output is known: reasoning, answers, tool calls) and a SQLite store in a temp dir: items,
 * streaming events, the function-calling loop with previous_response_id (the prompt continues token for token),
 * retrieve / delete / input items, background + cancel, key scoping, and bad input. A real server process on the demo
 * model (restart between turns, the prefix cache) is tested in responses_server_test.ts.
 */
import { deepStrictEqual as assertEquals, ok as assert, rejects as assertRejects } from "node:assert/strict";
import OpenAI from "openai";
import { createApp } from "../src/api/app.ts";
import type { ServingState } from "../src/api/serving.ts";
import { loadServerConfig } from "../src/config.ts";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { END, RETURN } from "../src/harmony/tokens.ts";
import { createLogger } from "../src/obs/logger.ts";
import { SqliteResponseStore } from "../src/store/sqlite_store.ts";
import { FakeEngine, type Script } from "./helpers/fake_engine.ts";

type ApiError = { status?: number; param?: string | null };

const PROFILES = Deno.readTextFileSync(new URL("../configs/profiles.json", import.meta.url));
const tokenizer = new Tokenizer();
const MODEL = "gpt-oss-test";
const TOOLS = [{
  type: "function" as const,
  name: "get_weather",
  description: "Weather in a city.",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  strict: false,
}];

const REASON_AND_ANSWER = "<|channel|>analysis<|message|>Think first.<|end|>" +
  "<|start|>assistant<|channel|>final<|message|>Hello there, friend!<|return|>";
const REASON_AND_CALL = "<|channel|>analysis<|message|>Need the weather.<|end|>" +
  '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}' +
  "<|call|>";
const ANSWER_AFTER_TOOL = "<|channel|>final<|message|>It is sunny in Paris.<|return|>";

interface Harness {
  readonly client: OpenAI;
  readonly baseUrl: string;
  readonly engine: FakeEngine;
  /** Scripts taken in order by the engine's requests (the last one repeats). */
  readonly scripts: Script[];
  stop(): Promise<void>;
}

async function start(options: { apiKey?: string; storePath?: string } = {}): Promise<Harness> {
  const dir = await Deno.makeTempDir({ prefix: "gptoss-responses-" });
  const flags: Record<string, string> = { "current-date": "2025-06-28" };
  if (options.apiKey) flags["api-key"] = options.apiKey;
  const config = loadServerConfig({
    flags,
    env: {},
    readTextFile: (path) => (path === "/p.json" ? PROFILES : undefined),
    defaultConfigPath: "/none.json",
    profilesPath: "/p.json",
  });
  const scripts: Script[] = [];
  let taken = 0;
  const engine = new FakeEngine(() => scripts[Math.min(taken++, scripts.length - 1)]);
  const state: ServingState = {
    status: "ready",
    modelId: MODEL,
    backend: "fake",
    model: { modelId: MODEL, backend: "fake", engine, tokenizer, createdAt: 0, completionStopIds: [], demo: false },
  };
  const store = SqliteResponseStore.open(options.storePath ?? `${dir}/responses.sqlite`);
  const app = createApp({
    config,
    logger: createLogger({ level: "error", format: "json", write: () => {} }),
    state,
    startedAtMs: 0,
    responseStore: store,
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const baseUrl = `http://127.0.0.1:${server.addr.port}`;
  return {
    client: new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: options.apiKey?.split(",")[0] ?? "unused" }),
    baseUrl,
    engine,
    scripts,
    stop: async () => {
      await server.shutdown();
      await store.close();
      await Deno.remove(dir, { recursive: true }); // a given storePath lives elsewhere (its owner removes it)
    },
  };
}

const script = (text: string): Script => ({ tokens: tokenizer.encodeWithSpecials(text) });

/** What history holds of generated ids: a closing <|return|> becomes <|end|>. */
const asHistory = (ids: readonly number[]) => ids.map((id) => (id === RETURN ? END : id));

function startsWith(ids: readonly number[], prefix: readonly number[]): boolean {
  return prefix.length <= ids.length && prefix.every((id, i) => ids[i] === id);
}

Deno.test("responses.create: string input, items and instructions; output items, output_text, usage; rendering equals chat's", async () => {
  const h = await start();
  try {
    h.scripts.push(script(REASON_AND_ANSWER));
    const plain = await h.client.responses.create({ model: MODEL, input: "Say hello.", max_output_tokens: 50 });
    assertEquals(plain.object, "response");
    assert(plain.id.startsWith("resp_"));
    assertEquals(plain.status, "completed");
    assertEquals(plain.output.map((o) => o.type), ["reasoning", "message"]);
    const reasoning = plain.output[0] as { content: { type: string; text: string }[] };
    assertEquals(reasoning.content, [{ type: "reasoning_text", text: "Think first." }]);
    assertEquals(plain.output_text, "Hello there, friend!");
    assertEquals(plain.usage!.output_tokens, tokenizer.encodeWithSpecials(REASON_AND_ANSWER).length);
    assert(plain.usage!.output_tokens_details.reasoning_tokens > 0);

    // Items and instructions render exactly as the same conversation through chat completions.
    const conversation = {
      items: [
        { role: "user" as const, content: "What is the weather?" },
        {
          type: "reasoning" as const,
          id: "rs_1",
          summary: [],
          content: [{ type: "reasoning_text" as const, text: "Ask the tool." }],
        },
        { type: "function_call" as const, call_id: "call_1", name: "get_weather", arguments: '{"city":"Paris"}' },
        { type: "function_call_output" as const, call_id: "call_1", output: "sunny" },
        { role: "assistant" as const, content: "Sunny." },
        { role: "user" as const, content: [{ type: "input_text" as const, text: "And tomorrow?" }] },
      ],
      chat: [
        { role: "developer", content: "Answer briefly." },
        { role: "user", content: "What is the weather?" },
        {
          role: "assistant",
          reasoning: "Ask the tool.",
          tool_calls: [{
            id: "call_1",
            type: "function",
            function: { name: "get_weather", arguments: '{"city":"Paris"}' },
          }],
        },
        { role: "tool", tool_call_id: "call_1", content: "sunny" },
        { role: "assistant", content: "Sunny." },
        { role: "user", content: "And tomorrow?" },
      ],
    };
    await h.client.responses.create({
      model: MODEL,
      instructions: "Answer briefly.",
      input: conversation.items as OpenAI.Responses.ResponseInput,
      tools: TOOLS,
      reasoning: { effort: "medium" },
    });
    const chat = await fetch(`${h.baseUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: MODEL,
        messages: conversation.chat,
        tools: TOOLS.map(({ type, ...f }) => ({ type, function: f })),
        reasoning_effort: "medium",
      }),
    });
    await chat.text();
    const [, fromItems, fromChat] = h.engine.submitted.map((s) => s.request.promptIds);
    assertEquals(fromItems, fromChat);
  } finally {
    await h.stop();
  }
});

Deno.test("responses.stream: OpenAI's events in order with sequence numbers; deltas concatenate to the final text", async () => {
  const h = await start();
  try {
    h.scripts.push(script(REASON_AND_ANSWER));
    const stream = h.client.responses.stream({ model: MODEL, input: "Say hello." });
    const types: string[] = [];
    const sequence: number[] = [];
    let text = "", reasoning = "";
    for await (const event of stream) {
      types.push(event.type);
      sequence.push(event.sequence_number);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.reasoning_text.delta") reasoning += event.delta;
    }
    const final = await stream.finalResponse();
    assertEquals(sequence, sequence.map((_, i) => i));
    const item = (kind: string) => [
      "response.output_item.added",
      "response.content_part.added",
      `response.${kind}.delta`,
      `response.${kind}.done`,
      "response.content_part.done",
      "response.output_item.done",
    ];
    // Consecutive deltas collapse to one entry for the comparison.
    const collapsed = types.filter((t, i) => !(t.endsWith(".delta") && types[i - 1] === t));
    assertEquals(collapsed, [
      "response.created",
      "response.in_progress",
      ...item("reasoning_text"),
      ...item("output_text"),
      "response.completed",
    ]);
    assertEquals(text, "Hello there, friend!");
    assertEquals(reasoning, "Think first.");
    assertEquals(final.output_text, text);
    assertEquals(final.status, "completed");
  } finally {
    await h.stop();
  }
});

Deno.test("function calling over two turns: function_call_output + previous_response_id; the prompt continues token for token", async () => {
  const h = await start();
  try {
    h.scripts.push(script(REASON_AND_CALL), script(ANSWER_AFTER_TOOL));
    const first = await h.client.responses.create({ model: MODEL, input: "Weather in Paris?", tools: TOOLS });
    const call = first.output.find((o) => o.type === "function_call") as OpenAI.Responses.ResponseFunctionToolCall;
    assertEquals(call.name, "get_weather");
    assertEquals(call.arguments, '{"city":"Paris"}');
    assert(call.call_id.startsWith("call_"));
    const second = await h.client.responses.create({
      model: MODEL,
      previous_response_id: first.id,
      input: [{ type: "function_call_output", call_id: call.call_id, output: '{"sky":"sunny"}' }],
      tools: TOOLS,
    });
    assertEquals(second.output_text, "It is sunny in Paris.");
    assertEquals(second.previous_response_id, first.id);
    const [p1, p2] = h.engine.submitted.map((s) => s.request.promptIds);
    // Turn 2's prompt = turn 1's prompt + every id the model generated (ending in <|call|>) + the tool's answer.
    const generated = asHistory(tokenizer.encodeWithSpecials(REASON_AND_CALL));
    assert(startsWith(p2, [...p1, ...generated]), "turn 2 must start with turn 1's prompt and output ids");

    // A third turn after a final answer: the earlier reasoning is dropped (harmony §8.2), turn 1's prompt still leads.
    h.scripts.push(script(REASON_AND_ANSWER));
    await h.client.responses.create({ model: MODEL, previous_response_id: second.id, input: "Thanks!", tools: TOOLS });
    const p3 = h.engine.submitted[2].request.promptIds;
    assert(startsWith(p3, p1));
    const text = tokenizer.decode(p3);
    assert(!text.includes("Need the weather."), "reasoning before a final answer is dropped");
    assert(text.includes("It is sunny in Paris."));
  } finally {
    await h.stop();
  }
});

Deno.test("retrieve, inputItems.list (paginated), delete; unknown, deleted and store:false ids are 404", async () => {
  const h = await start();
  try {
    h.scripts.push(script(REASON_AND_ANSWER));
    const input = ["one", "two", "three"].map((text) => ({ role: "user" as const, content: text }));
    const created = await h.client.responses.create({ model: MODEL, input, metadata: { topic: "test" } });
    const got = await h.client.responses.retrieve(created.id);
    assertEquals(got.id, created.id);
    assertEquals(got.output_text, created.output_text);
    assertEquals(got.metadata, { topic: "test" });

    const page1 = await h.client.responses.inputItems.list(created.id, { limit: 2, order: "asc" });
    assertEquals(page1.data.length, 2);
    assertEquals(page1.has_more, true);
    const all: string[] = [];
    for await (const item of h.client.responses.inputItems.list(created.id, { limit: 2, order: "asc" })) {
      all.push((item as unknown as { content: string }).content);
    }
    assertEquals(all, ["one", "two", "three"]);
    const desc = await h.client.responses.inputItems.list(created.id);
    assertEquals(desc.data.map((i) => (i as unknown as { content: string }).content), ["three", "two", "one"]);

    const deleted = await h.client.responses.delete(created.id);
    assertEquals(deleted as unknown, { id: created.id, object: "response.deleted", deleted: true });
    await assertRejects(h.client.responses.retrieve(created.id), (e: ApiError) => e.status === 404);
    await assertRejects(
      h.client.responses.create({ model: MODEL, input: "again", previous_response_id: created.id }),
      (e: ApiError) => e.status === 404 && e.param === "previous_response_id",
    );
    await assertRejects(h.client.responses.retrieve("resp_nope"), (e: ApiError) => e.status === 404);

    const unstored = await h.client.responses.create({ model: MODEL, input: "hi", store: false });
    await assertRejects(h.client.responses.retrieve(unstored.id), (e: ApiError) => e.status === 404);
    await assertRejects(
      h.client.responses.create({ model: MODEL, input: "again", previous_response_id: unstored.id }),
      (e: ApiError) => e.status === 404,
    );
  } finally {
    await h.stop();
  }
});

Deno.test("background: queued at once, polled to completion; cancel stops a running one", async () => {
  const h = await start();
  try {
    const gate = Promise.withResolvers<void>();
    h.scripts.push(script(REASON_AND_ANSWER));
    const done = await h.client.responses.create({ model: MODEL, input: "hi", background: true });
    assertEquals(done.status, "queued");
    let polled = await h.client.responses.retrieve(done.id);
    for (let i = 0; i < 200 && polled.status !== "completed"; i++) {
      await new Promise((r) => setTimeout(r, 10));
      polled = await h.client.responses.retrieve(done.id);
    }
    assertEquals(polled.status, "completed");
    assertEquals(polled.output_text, "Hello there, friend!");

    let emitted = 0;
    h.scripts.push({
      tokens: tokenizer.encodeWithSpecials(REASON_AND_ANSWER),
      beforeToken: () => ++emitted > 3 ? gate.promise : Promise.resolve(),
    });
    const slow = await h.client.responses.create({ model: MODEL, input: "hi", background: true });
    while (emitted <= 3) await new Promise((r) => setTimeout(r, 5));
    const cancelling = h.client.responses.cancel(slow.id);
    // The engine sees the abort, then its next token is released (a real engine checks between steps).
    while (!h.engine.submitted[1].signal?.aborted) await new Promise((r) => setTimeout(r, 5));
    gate.resolve();
    const cancelled = await cancelling;
    assertEquals(cancelled.status, "cancelled");
    assertEquals((await h.client.responses.retrieve(slow.id)).status, "cancelled");
    assertEquals(h.engine.submitted[1].signal?.aborted, true);
    assertEquals((await h.client.responses.cancel(done.id)).status, "completed"); // finished: left as it was
    h.scripts.push(script(REASON_AND_ANSWER));
    const foreground = await h.client.responses.create({ model: MODEL, input: "hi" });
    await assertRejects(h.client.responses.cancel(foreground.id), (e: ApiError) => e.status === 400);
    await assertRejects(h.client.responses.cancel("resp_missing"), (e: ApiError) => e.status === 404);
  } finally {
    await h.stop();
  }
});

Deno.test("responses belong to the key that made them: another key gets 404", async () => {
  const h = await start({ apiKey: "sk-alice,sk-bob" });
  try {
    h.scripts.push(script(REASON_AND_ANSWER));
    const mine = await h.client.responses.create({ model: MODEL, input: "hi" });
    const bob = new OpenAI({ baseURL: `${h.baseUrl}/v1`, apiKey: "sk-bob" });
    await assertRejects(bob.responses.retrieve(mine.id), (e: ApiError) => e.status === 404);
    await assertRejects(
      bob.responses.create({ model: MODEL, input: "hi", previous_response_id: mine.id }),
      (e: ApiError) => e.status === 404,
    );
    await assertRejects(bob.responses.delete(mine.id), (e: ApiError) => e.status === 404);
    assertEquals((await h.client.responses.retrieve(mine.id)).id, mine.id);
    const stranger = new OpenAI({ baseURL: `${h.baseUrl}/v1`, apiKey: "sk-eve" });
    await assertRejects(stranger.responses.retrieve(mine.id), (e: ApiError) => e.status === 401);
  } finally {
    await h.stop();
  }
});

Deno.test("bad input is a 400 naming the field; the server answers the next request", async () => {
  const h = await start();
  try {
    h.scripts.push(script(REASON_AND_ANSWER));
    const post = async (body: Record<string, unknown>) => {
      const r = await fetch(`${h.baseUrl}/v1/responses`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, ...body }),
      });
      return { status: r.status, error: (await r.json()).error };
    };
    const cases: [Record<string, unknown>, string][] = [
      [{ input: [{ type: "image_generation_call", id: "x" }] }, "input[0].type"],
      [{ input: [{ type: "function_call_output", call_id: "call_unknown", output: "x" }] }, "input[0].call_id"],
      [{ input: "hi", include: ["reasoning.encrypted_content"] }, "include"],
      [{ input: "hi", text: { format: { type: "grammar", grammar: "x" } } }, "text.format"],
      [{ input: "hi", text: { format: { type: "json_schema", name: "x" } } }, "text.format"],
      [{ input: "hi", tools: [{ type: "web_search" }] }, "tools[0].type"],
      [{ input: "hi", background: true, store: false }, "background"],
      [{ input: [{ role: "user", content: [{ type: "input_image", image_url: "x" }] }] }, "input[0].content[0].type"],
      [{ input: "hi", tool_choice: { type: "function", name: "nope" } }, "tool_choice"],
      [{ input: [] }, "input"],
    ];
    for (const [body, param] of cases) {
      const { status, error } = await post(body);
      assertEquals([status, error.param], [400, param], JSON.stringify(body));
      assert(error.message.length > 0);
    }
    assertEquals((await post({ input: "hi", previous_response_id: "resp_missing" })).status, 404);
    assertEquals((await post({ input: "still fine" })).status, 200);
  } finally {
    await h.stop();
  }
});

Deno.test("the SQLite store keeps a conversation across a restart (a new app on the same file)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gptoss-responses-restart-" });
  try {
    const path = `${dir}/responses.sqlite`;
    const first = await start({ storePath: path });
    first.scripts.push(script(REASON_AND_CALL));
    const turn1 = await first.client.responses.create({ model: MODEL, input: "Weather?", tools: TOOLS });
    await first.stop();
    const second = await start({ storePath: path });
    try {
      second.scripts.push(script(ANSWER_AFTER_TOOL));
      const call = turn1.output.find((o) => o.type === "function_call") as OpenAI.Responses.ResponseFunctionToolCall;
      const turn2 = await second.client.responses.create({
        model: MODEL,
        previous_response_id: turn1.id,
        input: [{ type: "function_call_output", call_id: call.call_id, output: "sunny" }],
        tools: TOOLS,
      });
      assertEquals(turn2.status, "completed");
      const prompt = second.engine.submitted[0].request.promptIds as readonly number[];
      const generated = asHistory(tokenizer.encodeWithSpecials(REASON_AND_CALL));
      assert(containsRun(prompt, generated), "the first turn's generated ids come back from the store as they were");
    } finally {
      await second.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function containsRun(ids: readonly number[], run: readonly number[]): boolean {
  for (let i = 0; i + run.length <= ids.length; i++) if (run.every((id, j) => ids[i + j] === id)) return true;
  return false;
}
