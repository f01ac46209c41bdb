/**
 * Tracing: application code uses only `@opentelemetry/api` (a Tracer passed in). This module wires the npm SDK for
 * main.ts: OTLP export (otlp.ts: gRPC, HTTP protobuf or JSON) and tail sampling decided when a trace's root span ends — every trace with an error,
 * every request slower than a threshold, and a share of the rest by trace id; a kept trace is exported whole.
 * Without an endpoint no SDK is created and the API's no-op tracer costs next to nothing.
 */
import { SpanStatusCode, trace, type Tracer } from "@opentelemetry/api";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOnSampler,
  BatchSpanProcessor,
  type ReadableSpan,
  type Span,
  type SpanExporter,
  type SpanProcessor,
  TracerProvider,
} from "@opentelemetry/sdk-trace";

/** Tail-sampling settings. */
export interface TailSamplingOptions {
  /** Share of normal traces kept, 0..1 (by trace id, so every span of a trace agrees). */
  readonly sampleRate: number;
  /** Root spans at least this long are kept. */
  readonly slowMs: number;
  /** Traces whose root has not ended after this long are dropped (bounded memory). */
  readonly maxPendingMs?: number;
}

function durationMs(span: ReadableSpan): number {
  return span.duration[0] * 1000 + span.duration[1] / 1e6;
}

/** The share in [0, 1) that a trace id maps to (its low 52 bits), for ratio sampling. */
export function traceIdShare(traceId: string): number {
  return parseInt(traceId.slice(-13), 16) / 2 ** 52;
}

/** Buffers each trace's spans until its root ends, then passes the whole trace on or drops it. */
export class TailSamplingProcessor implements SpanProcessor {
  readonly #pending = new Map<string, { spans: ReadableSpan[]; firstAt: number }>();
  readonly #next: SpanProcessor;
  readonly #options: TailSamplingOptions;
  /** Decisions made, for tests and the debug bundle. */
  readonly decisions = { error: 0, slow: 0, sampled: 0, dropped: 0 };

  constructor(next: SpanProcessor, options: TailSamplingOptions) {
    this.#next = next;
    this.#options = options;
  }

  onStart(_span: Span): void {}

  onEnd(span: ReadableSpan): void {
    const traceId = span.spanContext().traceId;
    let entry = this.#pending.get(traceId);
    if (!entry) this.#pending.set(traceId, entry = { spans: [], firstAt: Date.now() });
    entry.spans.push(span);
    if (span.parentSpanContext !== undefined) {
      this.#expire();
      return;
    }
    this.#pending.delete(traceId);
    const error = entry.spans.some((s) => s.status.code === SpanStatusCode.ERROR);
    const slow = durationMs(span) >= this.#options.slowMs;
    const sampled = traceIdShare(traceId) < this.#options.sampleRate;
    if (error) this.decisions.error++;
    else if (slow) this.decisions.slow++;
    else if (sampled) this.decisions.sampled++;
    else {
      this.decisions.dropped++;
      return;
    }
    for (const s of entry.spans) this.#next.onEnd(s);
  }

  #expire(): void {
    const limit = Date.now() - (this.#options.maxPendingMs ?? 600_000);
    for (const [traceId, entry] of this.#pending) {
      if (entry.firstAt >= limit && this.#pending.size < 10_000) break;
      this.#pending.delete(traceId);
    }
  }

  forceFlush(): Promise<void> {
    return this.#next.forceFlush();
  }

  shutdown(): Promise<void> {
    return this.#next.shutdown();
  }
}

/** What main.ts gets: a tracer for the app, and shutdown to flush spans on exit. */
export interface Tracing {
  readonly tracer: Tracer;
  readonly enabled: boolean;
  readonly sampler?: TailSamplingProcessor;
  shutdown(): Promise<void>;
}

/** Options of {@link createTracing}. */
export interface TracingOptions extends TailSamplingOptions {
  readonly serviceName: string;
  readonly version: string;
  /** Where spans go (otlp.ts makes it from the environment); none = tracing off. */
  readonly exporter?: SpanExporter;
}

/** Creates the tracer: the SDK with tail sampling when an endpoint is set, the API's no-op tracer otherwise. */
export function createTracing(options: TracingOptions): Tracing {
  const exporter = options.exporter;
  if (!exporter) return { tracer: trace.getTracer("gpt-oss-deno"), enabled: false, shutdown: () => Promise.resolve() };
  const sampler = new TailSamplingProcessor(
    new BatchSpanProcessor({ exporter, scheduledDelayMillis: 500 }),
    options,
  );
  const provider = new TracerProvider({
    sampler: new AlwaysOnSampler(), // record everything; the decision is made at the root's end
    resource: resourceFromAttributes({ "service.name": options.serviceName, "service.version": options.version }),
    spanProcessors: [sampler],
  });
  return {
    tracer: provider.getTracer("gpt-oss-deno", options.version),
    enabled: true,
    sampler,
    shutdown: async () => {
      await provider.forceFlush();
      await provider.shutdown();
    },
  };
}
