/**
 * The Responses API on real server processes (the demo model, the official openai client): a second turn through
 * previous_response_id hits the prefix cache; the SQLite store survives a restart between turns; with PostgreSQL
 * (a throwaway cluster started here), two servers share conversations. Output content is random text here: what is
 * checked is the conversation's plumbing. Scripted model output is tested in responses_test.ts.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import OpenAI from "openai";
import { startPostgres } from "./helpers/postgres.ts";
import { type ServerProcess, startServer } from "./helpers/server.ts";
import { checkStoreContract } from "./helpers/store_contract.ts";
import { PostgresResponseStore } from "../src/store/postgres_store.ts";

const DEMO = "gpt-oss-tiny-random";
const CACHE = await Deno.makeTempDir({ prefix: "gptoss-responses-server-" });
// The demo model (~50 MB) is made once per file; the file's process removes it as it ends.
globalThis.addEventListener("unload", () => Deno.removeSync(CACHE, { recursive: true }));
const common = ["--port", "0", "--model-cache-dir", CACHE, "--current-date", "2025-06-28"];

const clientOf = (server: ServerProcess) => new OpenAI({ baseURL: `${server.baseUrl}/v1`, apiKey: "unused" });

Deno.test("SQLite: the second turn hits the prefix cache; after a restart the conversation continues", async () => {
  const store = `${CACHE}/responses.sqlite`;
  let server = await startServer([...common, "--response-store", store]);
  let first: OpenAI.Responses.Response, second: OpenAI.Responses.Response;
  try {
    const client = clientOf(server);
    first = await client.responses.create({ model: DEMO, input: "Hello there.", max_output_tokens: 8 });
    assertEquals(first.usage!.output_tokens, 8);
    second = await client.responses.create({
      model: DEMO,
      input: "Tell me more.",
      previous_response_id: first.id,
      max_output_tokens: 8,
    });
    // Turn 1's prompt is a prefix of turn 2's: at least its whole blocks come from the cache.
    assert(second.usage!.input_tokens_details.cached_tokens > 0, "the second turn reuses the first's KV blocks");
    assert(second.usage!.input_tokens > first.usage!.input_tokens);
    const stats = await (await fetch(`${server.baseUrl}/stats`)).json();
    assertEquals(stats.responses, { store: "sqlite", stored: 2 });
  } finally {
    await server.stop();
  }
  server = await startServer([...common, "--response-store", store]);
  try {
    const client = clientOf(server);
    assertEquals((await client.responses.retrieve(first.id)).output_text, first.output_text);
    const third = await client.responses.create({
      model: DEMO,
      input: "And then?",
      previous_response_id: second.id,
      max_output_tokens: 4,
    });
    assertEquals(third.previous_response_id, second.id);
    assert(third.usage!.input_tokens > second.usage!.input_tokens, "the third turn's prompt holds both earlier ones");
  } finally {
    await server.stop();
  }
});

const pg = await startPostgres();
if (typeof pg === "string") console.log(`responses on PostgreSQL: skipped: ${pg}`);

Deno.test({
  name: "PostgreSQL: two servers share one store; a conversation started on one continues on the other",
  ignore: typeof pg === "string",
  fn: async () => {
    const cluster = pg as Exclude<typeof pg, string>;
    const direct = await PostgresResponseStore.open(cluster.url);
    try {
      await checkStoreContract(direct);
    } finally {
      await direct.close();
    }
    const a = await startServer([...common, "--response-store", cluster.url]);
    const b = await startServer([...common, "--response-store", cluster.url]);
    try {
      const first = await clientOf(a).responses.create({ model: DEMO, input: "Hi.", max_output_tokens: 6 });
      const fromB = await clientOf(b).responses.retrieve(first.id);
      assertEquals(fromB.output_text, first.output_text);
      const second = await clientOf(b).responses.create({
        model: DEMO,
        input: "Go on.",
        previous_response_id: first.id,
        max_output_tokens: 6,
      });
      assert(second.usage!.input_tokens > first.usage!.input_tokens);
      assertEquals((await clientOf(a).responses.retrieve(second.id)).previous_response_id, first.id);
      const items = await clientOf(a).responses.inputItems.list(second.id);
      assertEquals(items.data.length, 1);
      await clientOf(a).responses.delete(first.id);
      const gone = await fetch(`${b.baseUrl}/v1/responses/${first.id}`);
      assertEquals(gone.status, 404);
      await gone.body?.cancel();
      const stats = await (await fetch(`${b.baseUrl}/stats`)).json();
      assertEquals(stats.responses, { store: "postgres", stored: 1 });
    } finally {
      await Promise.all([a.stop(), b.stop()]);
      await cluster.stop();
    }
  },
});

// When the test above is filtered out, the cluster still stops with the process.
globalThis.addEventListener("unload", () => typeof pg !== "string" && pg.kill());
