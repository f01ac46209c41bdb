/** Metrics, traces (through a real OTLP/HTTP receiver on 127.0.0.1), logs and the debug bundle. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { startServer } from "./helpers/server.ts";

const CACHE = await Deno.makeTempDir({ prefix: "gptoss-obs-test-" });
const DEMO = "gpt-oss-tiny-random";
const common = ["--port", "0", "--model-cache-dir", CACHE, "--current-date", "2025-06-28"];

interface ExportedSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  status?: { code?: number };
  attributes?: { key: string; value: Record<string, unknown> }[];
}

/** A minimal OTLP/HTTP (JSON) trace receiver. */
function startReceiver() {
  const spans: ExportedSpan[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    const body = await request.json();
    for (const rs of body.resourceSpans ?? []) {
      for (const ss of rs.scopeSpans ?? []) for (const span of ss.spans ?? []) spans.push(span);
    }
    return Response.json({});
  });
  return { spans, url: `http://127.0.0.1:${server.addr.port}`, stop: () => server.shutdown() };
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: response.status, headers: response.headers, json: await response.json() };
}

async function waitFor(predicate: () => boolean, timeoutMs = 8000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (predicate()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return predicate();
}

function traceIdOfRequest(logLines: string[], requestId: string): string | undefined {
  for (const line of logLines) {
    try {
      const record = JSON.parse(line);
      if (record.request_id === requestId && record.event === "request.end") return record.trace_id;
    } catch {
      // not JSON
    }
  }
  return undefined;
}

Deno.test("tail sampling: error and slow traces always arrive whole; with share 0 normal ones never do", async () => {
  // Two servers, so that no outcome depends on how long a request takes on this machine: on the first nothing is
  // slow (threshold a day), on the second everything is (threshold 0 ms). Each is stopped (which flushes its spans)
  // before what it exported is checked, so an absent trace is absent for good.
  const receiver = startReceiver();
  const env = {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_SERVICE_NAME: "obs-test",
  };
  const never = await startServer([...common, "--trace-sample-rate", "0", "--trace-slow-ms", "86400000"], { env });
  let failingTrace: string, fastTrace: string;
  try {
    const url = `${never.baseUrl}/v1/chat/completions`;
    const failing = await post(url, { model: DEMO, messages: [{ role: "tool", tool_call_id: "x", content: "1" }] }, {
      "x-request-id": "req-failing",
    });
    assertEquals(failing.status, 400);
    const fast = await post(url, { model: DEMO, messages: [{ role: "user", content: "hi" }], max_tokens: 2 }, {
      "x-request-id": "req-fast",
    });
    assertEquals(fast.status, 200);
    failingTrace = await waitForTrace(never.logLines, "req-failing");
    fastTrace = await waitForTrace(never.logLines, "req-fast");
  } finally {
    assertEquals((await never.stop()).code, 0);
  }
  const always = await startServer([...common, "--trace-sample-rate", "0", "--trace-slow-ms", "0"], { env });
  let slowTrace: string;
  try {
    const slow = await post(`${always.baseUrl}/v1/completions`, {
      model: DEMO,
      prompt: "slow",
      max_tokens: 12,
      ignore_eos: true,
    }, { "x-request-id": "req-slow" });
    assertEquals(slow.status, 200);
    slowTrace = await waitForTrace(always.logLines, "req-slow");
  } finally {
    assertEquals((await always.stop()).code, 0);
    await receiver.stop();
  }

  const failingSpans = receiver.spans.filter((s) => s.traceId === failingTrace);
  assertEquals(failingSpans.map((s) => s.name).sort(), ["POST /v1/chat/completions", "prompt.build"]);
  assert(failingSpans.every((s) => s.status?.code === 2), "both spans carry the error status");
  const root = failingSpans.find((s) => !s.parentSpanId)!;
  assert(failingSpans.filter((s) => s.parentSpanId).every((s) => s.parentSpanId === root.spanId));

  const slowNames = receiver.spans.filter((s) => s.traceId === slowTrace).map((s) => s.name).sort();
  assertEquals(slowNames, ["POST /v1/completions", "decode", "prefill", "prompt.build", "queue.wait"]);
  assertEquals(receiver.spans.filter((s) => s.traceId === fastTrace).length, 0);

  async function waitForTrace(lines: string[], requestId: string): Promise<string> {
    await waitFor(() => traceIdOfRequest(lines, requestId) !== undefined);
    const id = traceIdOfRequest(lines, requestId);
    assert(id && /^[0-9a-f]{32}$/.test(id), `trace id logged for ${requestId}`);
    return id!;
  }
});

Deno.test("share 1 exports every trace; /metrics in both formats matches what was done, with trace-id exemplars", async () => {
  const receiver = startReceiver();
  const server = await startServer([...common, "--trace-sample-rate", "1", "--api-key", "k1", "--admin-key", "adm1"], {
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" },
  });
  const auth = { authorization: "Bearer k1" };
  try {
    let completionTokens = 0, promptTokens = 0;
    for (let i = 0; i < 5; i++) {
      const r = await post(`${server.baseUrl}/v1/chat/completions`, {
        model: DEMO,
        messages: [{ role: "user", content: `Question ${i}` }],
        max_tokens: 3 + i,
      }, { ...auth, "x-request-id": `req-${i}` });
      assertEquals(r.status, 200);
      completionTokens += r.json.usage.completion_tokens;
      promptTokens += r.json.usage.prompt_tokens;
    }
    const traceIds = Array.from({ length: 5 }, (_, i) => traceIdOfRequest(server.logLines, `req-${i}`)!);
    assert(await waitFor(() => traceIds.every((t) => receiver.spans.some((s) => s.traceId === t && !s.parentSpanId))));

    const prom = await fetch(`${server.baseUrl}/metrics`, { headers: auth });
    assert(prom.headers.get("content-type")!.startsWith("text/plain"));
    const text = await prom.text();
    const value = (pattern: RegExp) => {
      const match = pattern.exec(text);
      assert(match, `no line matching ${pattern}`);
      return Number(match[1]);
    };
    const labels = `model="${DEMO}",backend="[a-z]+",profile="latency_first"`;
    assertEquals(
      value(new RegExp(`gptoss_requests_finished(?:_total)?\\{${labels},finish_reason="length"\\} (\\d+)`)),
      5,
    );
    assertEquals(value(new RegExp(`gptoss_e2e_request_latency_seconds_count\\{${labels}\\} (\\d+)`)), 5);
    assertEquals(value(new RegExp(`gptoss_time_to_first_token_seconds_count\\{${labels}\\} (\\d+)`)), 5);
    assertEquals(value(new RegExp(`gptoss_generation_tokens(?:_total)?\\{${labels}\\} (\\d+)`)), completionTokens);
    assertEquals(value(new RegExp(`gptoss_prompt_tokens(?:_total)?\\{${labels}\\} (\\d+)`)), promptTokens);
    assertEquals(value(new RegExp(`gptoss_http_requests(?:_total)?\\{${labels},status="200"\\} (\\d+)`)), 5);
    assert(/gptoss_requests_running\{[^}]*\} 0/.test(text));
    assert(/gptoss_device_memory_used_bytes\{[^}]*device="cpu"\} \d+/.test(text));
    for (const line of text.split("\n")) {
      assert(line === "" || line.startsWith("#") || /^[a-zA-Z_:][\w:]*(\{[^}]*\})? [-+\d.eInfa]+$/.test(line), line);
    }

    const open = await fetch(`${server.baseUrl}/metrics`, {
      headers: { ...auth, accept: "application/openmetrics-text" },
    });
    assert(open.headers.get("content-type")!.startsWith("application/openmetrics-text"));
    const openText = await open.text();
    assert(openText.trimEnd().endsWith("# EOF"));
    const exemplarIds = [...openText.matchAll(/# \{trace_id="([0-9a-f]{32})"\}/g)].map((m) => m[1]);
    assert(exemplarIds.length > 0, "exemplars present");
    for (const id of exemplarIds) assert(traceIds.includes(id), `exemplar ${id} is an exported trace`);

    // The debug bundle: admin key only, and never a key in it.
    assertEquals((await fetch(`${server.baseUrl}/admin/debug/bundle`, { headers: auth })).status, 401);
    const wrong = await fetch(`${server.baseUrl}/admin/debug/bundle`, { headers: { ...auth, "x-admin-key": "nope" } });
    assertEquals(wrong.status, 403);
    await wrong.body?.cancel();
    const bundle = await fetch(`${server.baseUrl}/admin/debug/bundle`, { headers: { ...auth, "x-admin-key": "adm1" } });
    assertEquals(bundle.status, 200);
    const bundleText = await bundle.text();
    assert(!bundleText.includes('k1"') && !bundleText.includes("adm1"), "no key in the bundle");
    const parsed = JSON.parse(bundleText);
    assertEquals(parsed.config.apiKey, "[redacted]");
    assert(Array.isArray(parsed.probe) && parsed.metrics.includes("gptoss_requests_finished"));
  } finally {
    await server.stop();
    await receiver.stop();
  }
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(CACHE, { recursive: true });
  } catch {
    // already gone
  }
});
