/**
 * Cost of observability (a script): requests/s of small completions with tracing exported for every request (share 1,
 * to a local OTLP receiver) plus metrics and logs, against tracing off, in the same run (goal ≥ 0.95).
 *   deno run -A bench/observability_cost.ts [--requests 200]
 */
import { parseArgs } from "node:util";
import { startServer } from "../tests/helpers/server.ts";

const { values } = parseArgs({ args: Deno.args, options: { requests: { type: "string", default: "200" } } });
const requests = Number(values.requests);
const receiver = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
  await request.arrayBuffer();
  return Response.json({});
});
const cache = await Deno.makeTempDir();
const common = ["--port", "0", "--model-cache-dir", cache];
const on = await startServer([...common, "--trace-sample-rate", "1"], {
  env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.addr.port}` },
});
const off = await startServer(common);

async function round(baseUrl: string, count: number): Promise<number> {
  const started = performance.now();
  for (let i = 0; i < count; i++) {
    const response = await fetch(`${baseUrl}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-oss-tiny-random", prompt: [1, 2, 3, 4], max_tokens: 1 }),
    });
    if (response.status !== 200) throw new Error(`status ${response.status}`);
    await response.arrayBuffer();
  }
  return count / ((performance.now() - started) / 1000);
}

try {
  await round(on.baseUrl, 20);
  await round(off.baseUrl, 20);
  const rates = { on: [] as number[], off: [] as number[] };
  for (let r = 0; r < 4; r++) {
    rates.off.push(await round(off.baseUrl, requests / 4));
    rates.on.push(await round(on.baseUrl, requests / 4));
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b) / xs.length;
  console.log(`observability off: ${mean(rates.off).toFixed(1)} requests/s`);
  console.log(`observability on (every trace exported, metrics, logs): ${mean(rates.on).toFixed(1)} requests/s`);
  console.log(`ratio on / off: ${(mean(rates.on) / mean(rates.off)).toFixed(3)} (goal >= 0.95)`);
} finally {
  await on.stop();
  await off.stop();
  await receiver.shutdown();
  await Deno.remove(cache, { recursive: true });
}
