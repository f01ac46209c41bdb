/**
 * Prefill fairness over HTTP (a script, not a test): a stream decodes while another request prefills a long prompt;
 * prints how many tokens the stream received during that prefill (one per engine step is the most it can get), and
 * the Retry-After values a full queue answers with.
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
  await Deno.remove(cache, { recursive: true });
}
