/**
 * The OTLP trace exporter the OpenTelemetry specification's environment asks for: protocol from
 * OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL (`grpc`, `http/protobuf` — the default — or
 * `http/json`), endpoint from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as given) or OTEL_EXPORTER_OTLP_ENDPOINT (HTTP:
 * `/v1/traces` appended; gRPC: as given), headers from OTEL_EXPORTER_OTLP_TRACES_HEADERS or OTEL_EXPORTER_OTLP_HEADERS
 * (`key=value,…`, values URL-decoded). No endpoint: no exporter (tracing off). Each protocol uses its OTel npm exporter.
 */
import type { SpanExporter } from "@opentelemetry/sdk-trace";
import { UsageError } from "../errors.ts";

export const OTLP_PROTOCOLS = ["grpc", "http/protobuf", "http/json"] as const;
export type OtlpProtocol = typeof OTLP_PROTOCOLS[number];

/** Where and how spans go. */
export interface OtlpConfig {
  readonly protocol: OtlpProtocol;
  readonly url: string;
  readonly headers: Record<string, string>;
}

function parseHeaders(text: string | undefined, variable: string): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const pair of (text ?? "").split(",")) {
    if (!pair.trim()) continue;
    const at = pair.indexOf("=");
    if (at <= 0) throw new UsageError(`Invalid ${variable}: expected key=value pairs separated by commas`);
    try {
      headers[pair.slice(0, at).trim()] = decodeURIComponent(pair.slice(at + 1).trim());
    } catch {
      throw new UsageError(`Invalid ${variable}: "${pair}" is not URL-encoded`);
    }
  }
  return headers;
}

/** Reads the OTLP settings from an environment; undefined when no endpoint is set. Throws UsageError on bad values. */
export function otlpConfigFromEnv(env: Readonly<Record<string, string | undefined>>): OtlpConfig | undefined {
  const tracesEndpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  const endpoint = env.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (!tracesEndpoint && !endpoint) return undefined;
  const protocolVariable = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
    ? "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    : "OTEL_EXPORTER_OTLP_PROTOCOL";
  const protocol = env[protocolVariable] ?? "http/protobuf";
  if (!(OTLP_PROTOCOLS as readonly string[]).includes(protocol)) {
    throw new UsageError(
      `Invalid ${protocolVariable} "${protocol}": valid choices are ${OTLP_PROTOCOLS.join(", ")}`,
    );
  }
  const url = tracesEndpoint ??
    (protocol === "grpc" ? endpoint! : `${endpoint!.replace(/\/+$/, "")}/v1/traces`);
  const headersVariable = env.OTEL_EXPORTER_OTLP_TRACES_HEADERS !== undefined
    ? "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
    : "OTEL_EXPORTER_OTLP_HEADERS";
  return { protocol: protocol as OtlpProtocol, url, headers: parseHeaders(env[headersVariable], headersVariable) };
}

/** The exporter for a config (its package loaded only when used: gRPC pulls in @grpc/grpc-js). */
export async function createOtlpExporter(config: OtlpConfig): Promise<SpanExporter> {
  switch (config.protocol) {
    case "http/json": {
      const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-http");
      return new OTLPTraceExporter({ url: config.url, headers: config.headers });
    }
    case "http/protobuf": {
      const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-proto");
      return new OTLPTraceExporter({ url: config.url, headers: config.headers });
    }
    case "grpc": {
      const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-grpc");
      const { Metadata } = await import("@grpc/grpc-js");
      const metadata = new Metadata();
      for (const [key, value] of Object.entries(config.headers)) metadata.set(key, value);
      return new OTLPTraceExporter({ url: config.url, metadata });
    }
  }
}
