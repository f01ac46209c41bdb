/**
 * Response bodies that notice a client who left: server-sent events (an async producer → `text/event-stream`;
 * mid-stream errors become one chunk) and JSON that may take long. Deno.serve does not reliably abort a request's
 * signal when an HTTP/1.1 client disconnects while the handler waits (it notices when a write fails), so both send
 * a harmless heartbeat when they have been silent for {@link HEARTBEAT_MS}: an SSE comment line, or a space before
 * the JSON value (JSON allows leading whitespace). A failed write cancels the body, which aborts the request.
 */
import type { Logger } from "../obs/logger.ts";
import { toOpenAiError } from "./openai_errors.ts";

/** Sends one `data:` event. */
export type SendEvent = (data: unknown) => void;

/** Options of {@link sseResponse}. */
export interface SseOptions {
  readonly requestId: string;
  readonly logger: Logger;
  /** Aborted when the client goes away, so the engine stops work for it. */
  readonly controller: AbortController;
  readonly headers?: Record<string, string>;
  /**
   * Responses API style: each event also gets an `event: <its type>` line, and the stream ends without
   * `data: [DONE]` (its last event says it is over).
   */
  readonly namedEvents?: boolean;
}

/** How long a body may stay silent before a heartbeat probes the connection. */
export const HEARTBEAT_MS = 500;

/** Calls `beat` whenever nothing was written for HEARTBEAT_MS; `wrote` resets the timer; `stop` ends it. */
function heartbeat(beat: () => void): { wrote(): void; stop(): void } {
  let last = Date.now();
  const timer = setInterval(() => {
    if (Date.now() - last >= HEARTBEAT_MS) {
      last = Date.now();
      beat();
    }
  }, HEARTBEAT_MS / 2);
  return { wrote: () => (last = Date.now()), stop: () => clearInterval(timer) };
}

/** Streams what `produce` sends; ends with `data: [DONE]`. */
export function sseResponse(produce: (send: SendEvent) => Promise<void>, options: SseOptions): Response {
  const encoder = new TextEncoder();
  let closed = false;
  let pulse: { wrote(): void; stop(): void } | undefined;
  const stream = new ReadableStream<Uint8Array>({
    async start(controller) {
      pulse = heartbeat(() => !closed && controller.enqueue(encoder.encode(": keep-alive\n\n")));
      const send: SendEvent = (data) => {
        if (closed) return;
        const text = typeof data === "string" ? data : JSON.stringify(data);
        const type = options.namedEvents ? (data as { type?: unknown }).type : undefined;
        const name = typeof type === "string" ? `event: ${type}\n` : "";
        controller.enqueue(encoder.encode(`${name}data: ${text}\n\n`));
        pulse?.wrote();
      };
      try {
        await produce(send);
        if (!options.namedEvents) send("[DONE]");
      } catch (err) {
        // The status line is gone already: one error chunk, then close (STYLE.md §4).
        options.logger.error("request.stream_error", { error: err });
        send(toOpenAiError(err, options.requestId).body);
      } finally {
        pulse?.stop();
        if (!closed) {
          closed = true;
          controller.close();
        }
      }
    },
    cancel() {
      closed = true;
      pulse?.stop();
      options.controller.abort();
    },
  });
  return new Response(stream, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "connection": "keep-alive",
      ...options.headers,
    },
  });
}

/**
 * A JSON response whose value is still being computed: status 200 and headers now, spaces while waiting, then the
 * value. Only for work that has been accepted (validation errors are thrown before, with their own status); if the
 * work fails anyway, the body is the OpenAI error object (the status line is gone already).
 */
export function jsonResponse(value: Promise<unknown>, options: SseOptions): Response {
  const encoder = new TextEncoder();
  let closed = false;
  let pulse: { wrote(): void; stop(): void } | undefined;
  const stream = new ReadableStream<Uint8Array>({
    async start(controller) {
      pulse = heartbeat(() => !closed && controller.enqueue(encoder.encode(" ")));
      let body: unknown;
      try {
        body = await value;
      } catch (err) {
        options.logger.error("request.error", { error: err });
        body = toOpenAiError(err, options.requestId).body;
      }
      pulse.stop();
      if (closed) return;
      closed = true;
      controller.enqueue(encoder.encode(JSON.stringify(body)));
      controller.close();
    },
    cancel() {
      closed = true;
      pulse?.stop();
      options.controller.abort();
    },
  });
  return new Response(stream, { headers: { "content-type": "application/json", ...options.headers } });
}

/** Merges several async iterables, tagging each item with its source index. */
export async function* mergeStreams<T>(streams: readonly AsyncIterable<T>[]): AsyncGenerator<[number, T]> {
  const iterators = streams.map((s) => s[Symbol.asyncIterator]());
  const pending = new Map<number, Promise<[number, IteratorResult<T>]>>();
  const pull = (i: number) => pending.set(i, iterators[i].next().then((r) => [i, r] as [number, IteratorResult<T>]));
  iterators.forEach((_, i) => pull(i));
  while (pending.size > 0) {
    const [i, result] = await Promise.race(pending.values());
    if (result.done) {
      pending.delete(i);
      continue;
    }
    pull(i);
    yield [i, result.value];
  }
}
