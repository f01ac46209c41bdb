/**
 * One Responses API generation: engine events → output items (ResponsesOutputBuilder) → the response object and,
 * when streaming, OpenAI's event sequence with sequence numbers. Knows nothing of the store or of HTTP routes.
 */
import type { TokenEvent } from "../engine/engine_api.ts";
import type { PromptItem } from "../harmony/responses_items.ts";
import { type OutputEvent, type OutputItemState, ResponsesOutputBuilder } from "../harmony/responses_output.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { newId } from "./serving.ts";
import { nowMs, type RequestTelemetry } from "./telemetry.ts";

/** Final states of a response. */
export type ResponseStatus = "queued" | "in_progress" | "completed" | "incomplete" | "failed" | "cancelled";

/** What the response object echoes besides its output. */
export interface ResponseSettings {
  readonly id: string;
  readonly createdAt: number;
  readonly model: string;
  readonly echo: Record<string, unknown>;
}

/** A generation in progress. */
export class ResponseRun {
  readonly builder: ResponsesOutputBuilder;
  readonly itemIds: string[] = [];
  readonly tokenTimesMs: number[] = [];
  status: ResponseStatus = "in_progress";
  usage = { promptTokens: 0, completionTokens: 0, cachedTokens: 0 };
  queueMs: number | undefined;
  finishReason: string | undefined;
  error: { code: string; message: string } | null = null;
  #sequence = 0;

  constructor(
    readonly settings: ResponseSettings,
    tokenizer: Tokenizer,
    functionNames: ReadonlySet<string>,
    readonly controller: AbortController,
  ) {
    this.builder = new ResponsesOutputBuilder(tokenizer, functionNames, () => newId("call_").slice(0, 29));
  }

  /** Feeds one engine event; returns the stream events it causes (without sequence numbers yet). */
  onEngineEvent(event: TokenEvent): Record<string, unknown>[] {
    if (event.type === "prompt_logprobs") return [];
    if (event.type === "done") {
      this.usage = {
        promptTokens: event.promptTokens,
        completionTokens: event.completionTokens,
        cachedTokens: event.cachedTokens,
      };
      this.queueMs = event.queueMs;
      this.finishReason ??= event.finishReason;
      return this.#events(this.builder.end());
    }
    if (this.finishReason !== undefined) return [];
    this.tokenTimesMs.push(nowMs());
    const events = this.#events(this.builder.push(event.tokenId));
    if (this.builder.shouldStop) {
      // A stop token (or output that left the format): stop sampling now.
      this.finishReason = "stop";
      this.controller.abort();
    }
    return events;
  }

  /** Sets the final status from how generation ended (`cancelled`: the cancel endpoint aborted it). */
  finish(cancelled: boolean): void {
    if (cancelled) this.status = "cancelled";
    else if (this.finishReason === "length") this.status = "incomplete";
    else this.status = "completed";
  }

  /** Numbers an event for the stream. */
  sequenced(event: Record<string, unknown>): Record<string, unknown> {
    return { ...event, sequence_number: this.#sequence++ };
  }

  #events(events: OutputEvent[]): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const e of events) {
      if (e.type === "added") this.itemIds[e.index] = newItemId(this.builder.items[e.index]);
      const item = this.builder.items[e.index];
      const id = this.itemIds[e.index];
      const where = { item_id: id, output_index: e.index };
      if (e.type === "added") {
        out.push({ type: "response.output_item.added", output_index: e.index, item: this.itemJson(e.index, true) });
        if (item.kind !== "function_call") {
          out.push({ type: "response.content_part.added", ...where, content_index: 0, part: emptyPart(item) });
        }
      } else if (e.type === "delta") {
        if (item.kind === "message") {
          out.push({ type: "response.output_text.delta", ...where, content_index: 0, delta: e.text, logprobs: [] });
        } else if (item.kind === "reasoning") {
          out.push({ type: "response.reasoning_text.delta", ...where, content_index: 0, delta: e.text });
        } else out.push({ type: "response.function_call_arguments.delta", ...where, delta: e.text });
      } else {
        if (item.kind === "message") {
          out.push({ type: "response.output_text.done", ...where, content_index: 0, text: item.text, logprobs: [] });
        } else if (item.kind === "reasoning") {
          out.push({ type: "response.reasoning_text.done", ...where, content_index: 0, text: item.text });
        } else {
          out.push({ type: "response.function_call_arguments.done", ...where, name: item.name, arguments: item.text });
        }
        const full = this.itemJson(e.index, false);
        if (item.kind !== "function_call") {
          out.push({
            type: "response.content_part.done",
            ...where,
            content_index: 0,
            part: (full.content as unknown[])[0],
          });
        }
        out.push({ type: "response.output_item.done", output_index: e.index, item: full });
      }
    }
    return out;
  }

  /** One output item in the API's shape. */
  itemJson(index: number, opening: boolean): Record<string, unknown> {
    const item = this.builder.items[index];
    const id = this.itemIds[index];
    const status = opening ? "in_progress" : item.complete ? "completed" : "incomplete";
    switch (item.kind) {
      case "reasoning":
        return {
          id,
          type: "reasoning",
          summary: [],
          content: opening ? [] : [{ type: "reasoning_text", text: item.text }],
          status,
        };
      case "message":
        return {
          id,
          type: "message",
          role: "assistant",
          status,
          content: opening ? [] : [{ type: "output_text", text: item.text, annotations: [], logprobs: [] }],
        };
      case "function_call":
        return {
          id,
          type: "function_call",
          call_id: item.callId,
          name: item.name,
          arguments: opening ? "" : item.text,
          status,
        };
    }
  }

  /** The response object as it stands. */
  responseJson(): Record<string, unknown> {
    const output = this.builder.items.map((_, i) => this.itemJson(i, false));
    const text = this.builder.items.filter((i) => i.kind === "message").map((i) => i.text).join("");
    const reasoningTokens = this.builder.reasoningTokens;
    const done = this.status !== "in_progress" && this.status !== "queued";
    return {
      id: this.settings.id,
      object: "response",
      created_at: this.settings.createdAt,
      status: this.status,
      error: this.error,
      incomplete_details: this.status === "incomplete" ? { reason: "max_output_tokens" } : null,
      model: this.settings.model,
      output,
      output_text: text,
      usage: done
        ? {
          input_tokens: this.usage.promptTokens,
          input_tokens_details: { cached_tokens: this.usage.cachedTokens },
          output_tokens: this.usage.completionTokens,
          output_tokens_details: { reasoning_tokens: reasoningTokens },
          total_tokens: this.usage.promptTokens + this.usage.completionTokens,
        }
        : null,
      ...this.settings.echo,
    };
  }

  /** This turn's output as conversation items, each with the ids it was generated as. */
  outputItems(): PromptItem[] {
    return this.builder.items.map((item) => ({ item: conversationItem(item), tokens: item.tokens }));
  }

  /** Reports the generation to metrics, the span and the log. */
  report(telemetry: RequestTelemetry, startedMs: number): void {
    telemetry.generation({
      startedMs,
      queueMs: this.queueMs,
      firstTokenMs: this.tokenTimesMs[0],
      lastTokenMs: this.tokenTimesMs[this.tokenTimesMs.length - 1],
      tokenTimesMs: this.tokenTimesMs,
      promptTokens: this.usage.promptTokens,
      outputTokens: this.usage.completionTokens,
      cachedTokens: this.usage.cachedTokens,
      finishReason: this.status === "incomplete" ? "length" : this.finishReason ?? "abort",
      tokensByChannel: {},
      recoveries: [],
    });
  }
}

function newItemId(item: OutputItemState): string {
  const prefix = item.kind === "reasoning" ? "rs_" : item.kind === "message" ? "msg_" : "fc_";
  return newId(prefix);
}

function emptyPart(item: OutputItemState): Record<string, unknown> {
  return item.kind === "message"
    ? { type: "output_text", text: "", annotations: [], logprobs: [] }
    : { type: "reasoning_text", text: "" };
}

function conversationItem(item: OutputItemState): PromptItem["item"] {
  switch (item.kind) {
    case "reasoning":
      return { type: "reasoning", text: item.text };
    case "message":
      return { type: "message", role: "assistant", text: item.text };
    case "function_call":
      return { type: "function_call", callId: item.callId!, name: item.name!, arguments: item.text };
  }
}
