/**
 * Per-request observability: the root span and its children, the request's log lines (with trace and span ids)
 * and its metrics. Created by the app's middleware; endpoints add timings as they learn them.
 */
import { type Context, context, type Span, SpanStatusCode, trace, type Tracer } from "@opentelemetry/api";
import type { Logger } from "../obs/logger.ts";
import type { Metrics } from "../obs/metrics.ts";

/** Epoch milliseconds with sub-millisecond precision. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** What one generation reports when it ends. */
export interface GenerationReport {
  readonly startedMs: number;
  readonly queueMs?: number;
  readonly firstTokenMs?: number;
  readonly lastTokenMs?: number;
  readonly tokenTimesMs: readonly number[];
  readonly promptTokens: number;
  readonly outputTokens: number;
  readonly cachedTokens: number;
  readonly finishReason: string;
  readonly tokensByChannel: Record<string, number>;
  readonly recoveries: readonly string[];
}

/** One request's telemetry. */
export class RequestTelemetry {
  readonly span: Span;
  readonly logger: Logger;
  readonly #context: Context;
  #ended = false;
  #deferred: Promise<void> | undefined;
  #status = 0;
  readonly #startedMs = nowMs();

  constructor(
    readonly tracer: Tracer,
    readonly metrics: Metrics | undefined,
    logger: Logger,
    readonly requestId: string,
    name: string,
  ) {
    this.span = tracer.startSpan(name, { attributes: { "request.id": requestId } });
    this.#context = trace.setSpan(context.active(), this.span);
    const ids = this.span.spanContext();
    const traced = trace.isSpanContextValid(ids);
    this.logger = logger.child(
      traced ? { request_id: requestId, trace_id: ids.traceId, span_id: ids.spanId } : { request_id: requestId },
    );
  }

  /** The trace id when tracing is on. */
  get traceId(): string | undefined {
    const ids = this.span.spanContext();
    return trace.isSpanContextValid(ids) ? ids.traceId : undefined;
  }

  /** Runs `fn` inside a child span. */
  child<T>(name: string, fn: () => T): T {
    const span = this.tracer.startSpan(name, {}, this.#context);
    try {
      return fn();
    } catch (err) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      throw err;
    } finally {
      span.end();
    }
  }

  /** Records a child span after the fact (queue wait, prefill, decode, streaming). */
  interval(name: string, startMs: number, endMs: number, attributes: Record<string, number | string> = {}): void {
    if (!(endMs >= startMs)) return;
    this.tracer.startSpan(name, { startTime: startMs, attributes }, this.#context).end(endMs);
  }

  setAttributes(attributes: Record<string, number | string | boolean>): void {
    this.span.setAttributes(attributes);
  }

  /** Records one generation (one choice): child spans, attributes and metrics. */
  generation(report: GenerationReport): void {
    const admittedMs = report.queueMs !== undefined ? report.startedMs + report.queueMs : undefined;
    if (admittedMs !== undefined) this.interval("queue.wait", report.startedMs, admittedMs);
    if (admittedMs !== undefined && report.firstTokenMs !== undefined) {
      this.interval("prefill", admittedMs, report.firstTokenMs, { "gen_ai.usage.input_tokens": report.promptTokens });
    }
    if (report.firstTokenMs !== undefined && report.lastTokenMs !== undefined) {
      this.interval("decode", report.firstTokenMs, report.lastTokenMs, {
        "gen_ai.usage.output_tokens": report.outputTokens,
      });
    }
    this.setAttributes({
      "gen_ai.usage.input_tokens": report.promptTokens,
      "gen_ai.usage.output_tokens": report.outputTokens,
      "gptoss.cached_tokens": report.cachedTokens,
      "gptoss.cache_hit": report.cachedTokens > 0,
      "gen_ai.response.finish_reason": report.finishReason,
    });
    const gaps: number[] = [];
    for (let i = 1; i < report.tokenTimesMs.length; i++) {
      gaps.push((report.tokenTimesMs[i] - report.tokenTimesMs[i - 1]) / 1000);
    }
    this.metrics?.observeRequest({
      ttftSeconds: report.firstTokenMs !== undefined ? (report.firstTokenMs - report.startedMs) / 1000 : undefined,
      e2eSeconds: ((report.lastTokenMs ?? nowMs()) - report.startedMs) / 1000,
      queueSeconds: report.queueMs !== undefined ? report.queueMs / 1000 : undefined,
      interTokenSeconds: gaps,
      outputTokens: report.outputTokens,
      promptTokens: report.promptTokens,
      tokensByChannel: report.tokensByChannel,
      finishReason: report.finishReason,
      traceId: this.traceId,
    });
    for (const kind of report.recoveries) this.metrics?.countRecovery(kind);
  }

  /** The response continues after the handler returns (streaming): end the root span when `done` settles. */
  deferUntil(done: Promise<void>): void {
    this.#deferred = done;
  }

  /** Called by the middleware with the response status. */
  end(status: number, error?: unknown): void {
    this.#status = status;
    if (this.#deferred) {
      const deferred = this.#deferred;
      this.#deferred = undefined;
      deferred.then(() => this.end(status), (err) => this.end(500, err));
      return;
    }
    if (this.#ended) return;
    this.#ended = true;
    this.span.setAttribute("http.response.status_code", this.#status);
    if (error || status >= 400) {
      this.span.setStatus({ code: SpanStatusCode.ERROR, message: error ? (error as Error).message : `HTTP ${status}` });
      if (error instanceof Error) this.span.recordException(error);
    }
    this.span.end();
    this.metrics?.countStatus(status);
    this.logger.info("request.end", { status, ms: Math.round(nowMs() - this.#startedMs) });
  }
}
