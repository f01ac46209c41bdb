/**
 * Prefill fairness over HTTP (a script, not a test): a stream decodes while another request prefills a long prompt;
 * prints how many tokens the stream received during that prefill (one per engine step is the most it can get), and
 * the Retry-After values a full queue (2 running, 4 waiting) answers with beside the time it really took to drain.
 *   deno run -A bench/prefill_fairness.ts [--prompt 32768] [--chunk 256]
 */
import { parseArgs } from "node:util";
import { startServer } from "../tests/helpers/server.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { prompt: { type: "string", default: "32768" }, chunk: { type: "string", default: "256" } },
});
const cache = await Deno.makeTempDir({ prefix: "gptoss-fairness-" });
const server = await startServer([
  ...["--port", "0", "--model-cache-dir", cache, "--prefill-chunk-size", values.chunk!],
  ...["--max-num-batched-tokens", String(Number(values.chunk) + 64)],
]);
const post = (path: string, body: unknown, signal?: AbortSignal) =>
  fetch(`${server.baseUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
try {
  const controller = new AbortController();
  const stream = await post("/v1/completions", {
    model: "gpt-oss-tiny-random",
    prompt: "go",
    max_tokens: 100_000,
    ignore_eos: true,
    stream: true,
  }, controller.signal);
  const reader = stream.body!.getReader();
  let chunks = 0, during = 0, prefilling = false;
  const reading = (async () => {
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
      if (done) return;
      const events = decoder.decode(value).split("\n\n").filter((e) => e.startsWith("data: {"));
      chunks += events.length;
      if (prefilling) during += events.length;
    }
  })();
  while (chunks < 5) await new Promise((r) => setTimeout(r, 10));
  const prompt = Array.from({ length: Number(values.prompt) }, (_, i) => 1000 + (i % 50_000));
  const stepsBefore = (await (await fetch(`${server.baseUrl}/stats`)).json()).engine.steps;
  prefilling = true;
  const started = performance.now();
  const long = await post("/v1/completions", { model: "gpt-oss-tiny-random", prompt, max_tokens: 1 });
  await long.text();
  prefilling = false;
  const seconds = (performance.now() - started) / 1000;
  const steps = (await (await fetch(`${server.baseUrl}/stats`)).json()).engine.steps - stepsBefore;
  console.log(
    `prefill of ${prompt.length} tokens in chunks of ${values.chunk}: ${steps} engine steps, ${
      seconds.toFixed(1)
    } s; ` +
      `the stream received ${during} tokens meanwhile`,
  );
  controller.abort();
  await reading;
} finally {
  await server.stop();
}
try {
  await retryAfterUnderLoad();
} finally {
  await Deno.remove(cache, { recursive: true });
}

/**
 * A burst against a small queue (2 running, 4 waiting): each 429's Retry-After, and when the queue it was refused
 * from had actually drained (the last accepted request's end), so the two can be compared.
 */
async function retryAfterUnderLoad(): Promise<void> {
  const config = `${cache}/server.json`;
  await Deno.writeTextFile(config, JSON.stringify({ scheduler: { maxNumSeqs: 2, maxQueuedRequests: 4 } }));
  const loaded = await startServer(["--port", "0", "--model-cache-dir", cache, "--config", config]);
  try {
    const body = { model: "gpt-oss-tiny-random", prompt: "go", max_tokens: 256, ignore_eos: true };
    const done: number[] = [];
    const send = () => {
      const at = performance.now();
      return post2(loaded.baseUrl, body).then(async (r) => {
        const retry = r.headers.get("retry-after");
        await r.text();
        if (r.status === 200) done.push(performance.now());
        return { at, status: r.status, retry };
      });
    };
    const t0 = performance.now();
    // Wave 1 on a cold server (no drain rate yet); wave 2 once three accepted requests have finished (a measured rate).
    const first = Promise.all(Array.from({ length: 10 }, send));
    while (done.length < 3) await new Promise((r) => setTimeout(r, 20));
    const second = Promise.all(Array.from({ length: 10 }, send));
    const waves = [["burst on a cold server", await first], ["burst while the queue drains", await second]] as const;
    const drained = Math.max(...done);
    for (const [name, wave] of waves) {
      const refused = wave.filter((r) => r.status === 429);
      const values = refused.map((r) => Number(r.retry));
      console.log(
        `${name}: ${wave.length - refused.length} accepted, ${refused.length} refused with Retry-After ${
          [...new Set(values)].join(", ") || "-"
        } s; the queue drained ${((drained - wave[0].at) / 1000).toFixed(1)} s after the burst`,
      );
    }
    // A client that honours Retry-After: one refused request, retried after the value it got, until accepted.
    const waits: number[] = [];
    const filling: Promise<unknown>[] = [];
    for (;;) {
      // Fill the queue (accepted requests run on in the background) until one is refused; then honour Retry-After.
      const attempt = send();
      const first = await Promise.race([attempt, new Promise<undefined>((r) => setTimeout(r, 200, undefined))]);
      if (first?.status === 429) {
        waits.push(Number(first.retry));
        break;
      }
      filling.push(attempt);
    }
    for (;;) {
      await new Promise((r) => setTimeout(r, waits[waits.length - 1] * 1000));
      const attempt = await send();
      if (attempt.status === 200) break;
      waits.push(Number(attempt.retry));
    }
    await Promise.all(filling);
    console.log(
      `a client honouring Retry-After was refused ${waits.length} times (waits ${waits.join(" + ")} s), then served`,
    );
    console.log(`(all requests done ${((performance.now() - t0) / 1000).toFixed(1)} s after the first burst)`);
  } finally {
    await loaded.stop();
  }
}

function post2(baseUrl: string, body: unknown): Promise<Response> {
  return fetch(`${baseUrl}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}
