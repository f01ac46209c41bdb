import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import http2 from "node:http2";
import { UsageError } from "../errors.ts";
import { createOtlpExporter, type OtlpConfig, otlpConfigFromEnv } from "./otlp.ts";
import { createTracing } from "./tracing.ts";

Deno.test("otlpConfigFromEnv follows the spec: default http/protobuf, traces-specific variables first, headers decoded", () => {
  assertEquals(otlpConfigFromEnv({}), undefined);
  assertEquals(otlpConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318/" }), {
    protocol: "http/protobuf",
    url: "http://c:4318/v1/traces",
    headers: {},
  });
  assertEquals(
    otlpConfigFromEnv({
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4317",
      OTEL_EXPORTER_OTLP_PROTOCOL: "grpc",
      OTEL_EXPORTER_OTLP_HEADERS: "api-key=s%20k,x=1",
    }),
    { protocol: "grpc", url: "http://c:4317", headers: { "api-key": "s k", x: "1" } },
  );
  assertEquals(
    otlpConfigFromEnv({
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4317",
      OTEL_EXPORTER_OTLP_PROTOCOL: "grpc",
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://t:9/custom",
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json",
      OTEL_EXPORTER_OTLP_HEADERS: "a=1",
      OTEL_EXPORTER_OTLP_TRACES_HEADERS: "b=2",
    }),
    { protocol: "http/json", url: "http://t:9/custom", headers: { b: "2" } },
  );
  assertThrows(
    () => otlpConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c", OTEL_EXPORTER_OTLP_PROTOCOL: "thrift" }),
    (e: Error) => e instanceof UsageError && /valid choices are grpc, http\/protobuf, http\/json/.test(e.message),
  );
  assertThrows(
    () => otlpConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c", OTEL_EXPORTER_OTLP_HEADERS: "novalue" }),
    UsageError,
  );
});

interface Received {
  readonly path: string;
  readonly contentType: string;
  readonly headers: Record<string, unknown>;
  readonly body: Uint8Array;
}

/** Sends one span with attributes through the exporter the environment describes; returns what the receiver got. */
async function exportOneSpan(config: OtlpConfig): Promise<void> {
  const tracing = createTracing({
    exporter: await createOtlpExporter(config),
    serviceName: "otlp-test",
    version: "0",
    sampleRate: 1,
    slowMs: 1e9,
  });
  const span = tracing.tracer.startSpan("POST /v1/chat/completions");
  span.setAttributes({ "gen_ai.request.model": "model-under-test", "gen_ai.usage.output_tokens": 7 });
  span.end();
  await tracing.shutdown();
}

const contains = (bytes: Uint8Array, text: string) => new TextDecoder("latin1").decode(bytes).includes(text);

Deno.test("spans reach an OTLP/HTTP JSON receiver and an OTLP/HTTP protobuf receiver with their attributes", async () => {
  const received: Received[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    received.push({
      path: new URL(request.url).pathname,
      contentType: request.headers.get("content-type") ?? "",
      headers: Object.fromEntries(request.headers),
      body: new Uint8Array(await request.arrayBuffer()),
    });
    return request.headers.get("content-type")?.includes("json")
      ? Response.json({})
      : new Response(new Uint8Array(), { headers: { "content-type": "application/x-protobuf" } });
  });
  try {
    const base = `http://127.0.0.1:${server.addr.port}`;
    for (const protocol of ["http/json", "http/protobuf"]) {
      const config = otlpConfigFromEnv({
        OTEL_EXPORTER_OTLP_ENDPOINT: base,
        OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
        OTEL_EXPORTER_OTLP_HEADERS: "x-team=inference%20team",
      })!;
      await exportOneSpan(config);
    }
    assertEquals(received.map((r) => [r.path, r.contentType.split(";")[0]]), [
      ["/v1/traces", "application/json"],
      ["/v1/traces", "application/x-protobuf"],
    ]);
    const json = JSON.parse(new TextDecoder().decode(received[0].body));
    const span = json.resourceSpans[0].scopeSpans[0].spans[0];
    assertEquals(span.name, "POST /v1/chat/completions");
    const attributes = Object.fromEntries(
      span.attributes.map((a: { key: string; value: Record<string, unknown> }) => [a.key, Object.values(a.value)[0]]),
    );
    assertEquals(attributes["gen_ai.request.model"], "model-under-test");
    for (const text of ["POST /v1/chat/completions", "gen_ai.request.model", "model-under-test", "otlp-test"]) {
      assert(contains(received[1].body, text), `the protobuf body carries "${text}"`);
    }
    for (const r of received) assertEquals(r.headers["x-team"], "inference team");
  } finally {
    await server.shutdown();
  }
});

Deno.test("spans reach an OTLP/gRPC receiver (HTTP/2, TraceService/Export) with their attributes and metadata", async () => {
  const received: Received[] = [];
  const server = http2.createServer();
  server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    const chunks: Uint8Array[] = [];
    stream.on("data", (chunk: Uint8Array) => chunks.push(chunk));
    stream.on("end", () => {
      received.push({
        path: String(headers[":path"]),
        contentType: String(headers["content-type"]),
        headers,
        body: new Uint8Array(chunks.flatMap((c) => [...c])),
      });
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(new Uint8Array(5)); // an empty ExportTraceServiceResponse, framed: no compression, length 0
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const { port } = server.address() as { port: number };
    await exportOneSpan(
      otlpConfigFromEnv({
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
        OTEL_EXPORTER_OTLP_PROTOCOL: "grpc",
        OTEL_EXPORTER_OTLP_HEADERS: "x-team=inference%20team",
      })!,
    );
    assertEquals(received.length, 1);
    assertEquals(received[0].path, "/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    assert(received[0].contentType.startsWith("application/grpc"));
    assertEquals(received[0].headers["x-team"], "inference team");
    for (const text of ["POST /v1/chat/completions", "gen_ai.request.model", "model-under-test"]) {
      assert(contains(received[0].body, text), `the gRPC message carries "${text}"`);
    }
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});
