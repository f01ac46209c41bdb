/**
 * The Responses API's costs (a script, not a test):
 *   deno run -A bench/responses_store.ts [--rounds 300] [--turns 5]
 *  1. store write + read per response (a record with a 2,000-token turn) on SQLite (a temp file, WAL) and on
 *     PostgreSQL (a throwaway local cluster, when the server binaries are installed), median and p95;
 *  2. second-turn latency on a real server (the demo model, max_output_tokens 1, so it is prefill + one token): the
 *     turn sent with previous_response_id vs the whole conversation resent as items, median over N turns, and the
 *     ratio. Both reuse the prefix cache for the first prompt; previous_response_id also keeps the generated ids.
 */
import { parseArgs } from "node:util";
import { type ResponseStore, type StoredResponse } from "../src/store/response_store.ts";
import { SqliteResponseStore } from "../src/store/sqlite_store.ts";
import { startPostgres } from "../tests/helpers/postgres.ts";
import { startServer } from "../tests/helpers/server.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { rounds: { type: "string", default: "300" }, turns: { type: "string", default: "5" } },
});
const rounds = Number(values.rounds);

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

function sampleRecord(i: number): StoredResponse {
  const tokens = Array.from({ length: 2000 }, (_, j) => (j * 7919 + i) % 200_000);
  const text = "word ".repeat(1500);
  return {
    id: `resp_bench_${i}`,
    owner: "",
    createdAt: Date.now(),
    expiresAt: Date.now() + 3_600_000,
    previousResponseId: i > 0 ? `resp_bench_${i - 1}` : null,
    status: "completed",
    response: { id: `resp_bench_${i}`, object: "response", output: [{ type: "message", content: [{ text }] }] },
    inputItems: [{ id: `msg_${i}`, type: "message", role: "user", content: text }],
    turn: [{ item: { type: "message", role: "user", text } }, { item: { type: "reasoning", text }, tokens }],
  };
}

async function storeCost(name: string, store: ResponseStore): Promise<void> {
  const ms: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const record = sampleRecord(i);
    const t0 = performance.now();
    await store.put(record);
    await store.get(record.id, "", Date.now());
    ms.push(performance.now() - t0);
  }
  console.log(
    `${name}: write + read of a 2,000-token turn: median ${percentile(ms, 0.5).toFixed(2)} ms, p95 ${
      percentile(ms, 0.95).toFixed(2)
    } ms (${rounds} responses)`,
  );
  await store.close();
}

const dir = await Deno.makeTempDir({ prefix: "gptoss-responses-bench-" });
try {
  await storeCost("SQLite", SqliteResponseStore.open(`${dir}/bench.sqlite`));
  const pg = await startPostgres();
  if (typeof pg === "string") console.log(`PostgreSQL: skipped: ${pg}`);
  else {
    try {
      const { PostgresResponseStore } = await import("../src/store/postgres_store.ts");
      await storeCost("PostgreSQL", await PostgresResponseStore.open(pg.url));
    } finally {
      await pg.stop();
    }
  }
  await secondTurn();
} finally {
  await Deno.remove(dir, { recursive: true });
}

async function secondTurn(): Promise<void> {
  const server = await startServer([
    ...["--port", "0", "--model-cache-dir", dir, "--response-store", `${dir}/server.sqlite`],
    ...["--current-date", "2025-06-28"],
  ]);
  const post = async (body: Record<string, unknown>) => {
    const t0 = performance.now();
    const response = await fetch(`${server.baseUrl}/v1/responses`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-oss-tiny-random", ...body }),
    });
    const json = await response.json();
    return { json, ms: performance.now() - t0 };
  };
  try {
    const viaId: number[] = [], resent: number[] = [];
    for (let t = 0; t < Number(values.turns); t++) {
      const long = Array.from({ length: 400 }, (_, i) => `fact ${t}-${i}.`).join(" ");
      const first = await post({ input: long, max_output_tokens: 64, seed: t });
      const next = { role: "user", content: "Summarize." };
      const a = await post({ input: [next], previous_response_id: first.json.id, max_output_tokens: 1 });
      const items = [{ role: "user", content: long }, ...first.json.output, next];
      const b = await post({ input: items, max_output_tokens: 1 });
      viaId.push(a.ms);
      resent.push(b.ms);
    }
    const [x, y] = [percentile(viaId, 0.5), percentile(resent, 0.5)];
    console.log(
      `second turn (prefill + 1 token): previous_response_id ${x.toFixed(1)} ms, resent as items ${y.toFixed(1)} ms; ` +
        `ratio ${(y / x).toFixed(2)}× (median of ${viaId.length})`,
    );
  } finally {
    await server.stop();
  }
}
