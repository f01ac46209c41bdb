/** Server-sent events: an async producer → a `text/event-stream` Response; mid-stream errors become one chunk. */
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
}

/** Streams what `produce` sends; ends with `data: [DONE]`. */
export function sseResponse(produce: (send: SendEvent) => Promise<void>, options: SseOptions): Response {
  const encoder = new TextEncoder();
  let closed = false;
  const stream = new ReadableStream<Uint8Array>({
    async start(controller) {
      const send: SendEvent = (data) => {
        if (closed) return;
        const text = typeof data === "string" ? data : JSON.stringify(data);
        controller.enqueue(encoder.encode(`data: ${text}\n\n`));
      };
      try {
        await produce(send);
        send("[DONE]");
      } catch (err) {
        // The status line is gone already: one error chunk, then close (STYLE.md §4).
        options.logger.error("request.stream_error", { error: err });
        send(toOpenAiError(err, options.requestId).body);
      } finally {
        if (!closed) {
          closed = true;
          controller.close();
        }
      }
    },
    cancel() {
      closed = true;
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
