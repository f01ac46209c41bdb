/**
 * Load benchmark over HTTP (a script, not a test):
 *   deno run -A bench/load.ts [--model DIR] [--requests 48] [--max-tokens 32] [--backend reference|native]
 * Starts a server on 127.0.0.1 (reference backend; by default a generated `tiny` preset), then:
 *  1. concurrency 1 and 8: N streaming requests with mixed prompt lengths, 10% cancelled after 3 tokens. Reports
 *     TTFT, end-to-end and inter-token latency p50/p95/p99, output tokens/s and errors; the c=8 / c=1 throughput
 *     ratio (goal ≥ 3×); KV blocks held by requests after the run (must be 0).
 *  2. prefix caching: 20 requests sharing a 1,000-token system prompt: hit rate after the first (goal ≥ 90%) and
 *     their mean TTFT relative to the first's (goal ≤ 0.3×).
 * All traffic goes to 127.0.0.1 and every loop is bounded.
 */
import { parseArgs } from "node:util";
import { generateCheckpoint } from "../src/tools/synthetic.ts";
import { startServer } from "../tests/helpers/server.ts";

interface RequestResult {
  ok: boolean;
  status: number;
  cancelled: boolean;
  ttftMs: number | undefined;
  e2eMs: number;
  itlMs: number[];
  tokens: number;
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summarize(values: number[]): string {
  return `p50 ${percentile(values, 50).toFixed(1)} p95 ${percentile(values, 95).toFixed(1)} p99 ${
    percentile(values, 99).toFixed(1)
  } ms`;
}

async function streamOnce(
  baseUrl: string,
  model: string,
  prompt: number[],
  maxTokens: number,
  cancelAfter: number | undefined,
): Promise<RequestResult> {
  const started = performance.now();
  const controller = new AbortController();
  const response = await fetch(`${baseUrl}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model,
      prompt,
      max_tokens: maxTokens,
      stream: true,
      ignore_eos: true,
      return_token_ids: true,
    }),
    signal: controller.signal,
  });
  if (response.status !== 200) {
    await response.body?.cancel();
    return { ok: false, status: response.status, cancelled: false, ttftMs: undefined, e2eMs: 0, itlMs: [], tokens: 0 };
  }
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let tokens = 0;
  let ttftMs: number | undefined;
  let last = started;
  const itlMs: number[] = [];
  let cancelled = false;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += value;
      let split;
      while ((split = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, split);
        buffer = buffer.slice(split + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
        const ids = JSON.parse(event.slice(6)).choices?.[0]?.token_ids as number[] | undefined;
        if (!ids || ids.length === 0) continue;
        const now = performance.now();
        if (ttftMs === undefined) ttftMs = now - started;
        else itlMs.push(now - last);
        last = now;
        tokens += ids.length;
      }
      if (cancelAfter !== undefined && tokens >= cancelAfter) {
        cancelled = true;
        controller.abort();
        break;
      }
    }
  } catch (err) {
    if (!cancelled) throw err;
  }
  return { ok: true, status: 200, cancelled, ttftMs, e2eMs: performance.now() - started, itlMs, tokens };
}

async function runLoad(baseUrl: string, model: string, concurrency: number, requests: number, maxTokens: number) {
  const results: RequestResult[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < requests) {
      const i = next++;
      const length = [8, 32, 96, 200][i % 4]; // mixed prompt lengths
      const prompt = Array.from({ length }, (_, k) => (i * 131 + k * 7) % 1000);
      results.push(await streamOnce(baseUrl, model, prompt, maxTokens, i % 10 === 9 ? 3 : undefined));
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  const completed = results.filter((r) => r.ok && !r.cancelled);
  const tokens = results.reduce((s, r) => s + r.tokens, 0);
  return {
    concurrency,
    seconds,
    outputTokensPerSecond: tokens / seconds,
    ttft: summarize(completed.map((r) => r.ttftMs!).filter((x) => x !== undefined)),
    e2e: summarize(completed.map((r) => r.e2eMs)),
    itl: summarize(completed.flatMap((r) => r.itlMs)),
    errors: results.filter((r) => !r.ok).length,
    cancelled: results.filter((r) => r.cancelled).length,
  };
}

async function memory(baseUrl: string) {
  return (await (await fetch(`${baseUrl}/memory_stats`)).json()).kv_cache;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      requests: { type: "string", default: "48" },
      "max-tokens": { type: "string", default: "32" },
      backend: { type: "string", default: "reference" },
    },
  });
  let dir = values.model;
  let temporary: string | undefined;
  if (!dir) {
    temporary = await Deno.makeTempDir({ prefix: "load-bench-" });
    dir = `${temporary}/tiny`;
    await generateCheckpoint("tiny", dir, { seed: 3 });
  }
  const server = await startServer([
    "--port",
    "0",
    "--model",
    dir,
    "--max-num-seqs",
    "8",
    "--backend",
    values.backend!,
  ]);
  const model = (await (await fetch(`${server.baseUrl}/v1/models`)).json()).data[0].id;
  try {
    const requests = Number(values.requests), maxTokens = Number(values["max-tokens"]);
    await runLoad(server.baseUrl, model, 2, 4, 4); // warm-up
    const c1 = await runLoad(server.baseUrl, model, 1, requests, maxTokens);
    const c8 = await runLoad(server.baseUrl, model, 8, requests, maxTokens);
    for (const r of [c1, c8]) {
      console.log(
        `concurrency ${r.concurrency}: ${r.outputTokensPerSecond.toFixed(1)} output tokens/s over ${
          r.seconds.toFixed(1)
        } s; ` +
          `errors ${r.errors}, cancelled ${r.cancelled}`,
      );
      console.log(`  TTFT ${r.ttft}; E2E ${r.e2e}; ITL ${r.itl}`);
    }
    console.log(
      `throughput ratio c=8 / c=1: ${(c8.outputTokensPerSecond / c1.outputTokensPerSecond).toFixed(2)}x (goal >= 3x)`,
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    console.log(`KV blocks held by requests after the run: ${(await memory(server.baseUrl)).blocks.used}`);

    // Prefix caching: a shared 1,000-token system prompt.
    const system = Array.from({ length: 1000 }, (_, k) => (k * 13 + 5) % 1000);
    const ttfts: number[] = [];
    let afterFirst: { queried_tokens: number; hit_tokens: number } | undefined;
    for (let i = 0; i < 20; i++) {
      const prompt = [...system, ...Array.from({ length: 20 }, (_, k) => (i * 31 + k) % 1000)];
      const result = await streamOnce(server.baseUrl, model, prompt, 4, undefined);
      ttfts.push(result.ttftMs!);
      if (i === 0) afterFirst = { ...(await memory(server.baseUrl)).prefix_cache };
    }
    const final = (await memory(server.baseUrl)).prefix_cache;
    const hitRate = (final.hit_tokens - afterFirst!.hit_tokens) / (final.queried_tokens - afterFirst!.queried_tokens);
    const rest = ttfts.slice(1).reduce((s, x) => s + x, 0) / 19;
    console.log(
      `prefix cache: hit rate after the first ${(hitRate * 100).toFixed(1)}% (goal >= 90%); ` +
        `TTFT first ${ttfts[0].toFixed(1)} ms, others mean ${rest.toFixed(1)} ms = ${
          (rest / ttfts[0]).toFixed(2)
        }x (goal <= 0.3x)`,
    );
  } finally {
    await server.stop();
    if (temporary) await Deno.remove(temporary, { recursive: true });
  }
}

await main();
