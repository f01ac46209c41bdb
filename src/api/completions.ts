/** POST /v1/completions: raw prompts (text or token ids) → raw text, with the legacy logprobs shape. */
import type { ServerConfig } from "../config.ts";
import type { TokenEvent } from "../engine/engine_api.ts";
import { InvalidRequestError } from "../errors.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import type { Logger } from "../obs/logger.ts";
import { type CompletionRequest, CompletionRequestSchema, parseRequest } from "./protocol.ts";
import { defaultMaxTokens, newId, requireModel, samplingParams, type ServingState, submitChoices } from "./serving.ts";
import { mergeStreams, sseResponse } from "./sse.ts";
import { StopStringMatcher } from "./stop_strings.ts";
import { nowMs, type RequestTelemetry } from "./telemetry.ts";

/** Dependencies of the endpoint. */
export interface CompletionDeps {
  readonly config: ServerConfig;
  readonly state: ServingState;
  readonly logger: Logger;
  readonly telemetry: RequestTelemetry;
  readonly logContent: boolean;
}

/** Legacy logprobs: parallel arrays over tokens. */
interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

function prompts(request: CompletionRequest, tokenizer: Tokenizer): number[][] {
  const p = request.prompt;
  if (typeof p === "string") return [tokenizer.encode(p)];
  if (p.length > 0 && typeof p[0] === "string") return (p as string[]).map((s) => tokenizer.encode(s));
  if (p.length > 0 && typeof p[0] === "number") return [p as number[]];
  return p as number[][];
}

/** One choice: a prompt × n index. */
class CompletionChoice {
  text = "";
  readonly tokenIds: number[] = [];
  readonly logprobs: LegacyLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  readonly decoder;
  readonly stops: StopStringMatcher;
  readonly controller = new AbortController();
  finish: "stop" | "length" | undefined;
  usage = { prompt: 0, completion: 0, cached: 0 };
  readonly tokenTimesMs: number[] = [];
  queueMs: number | undefined;
  #offset = 0;

  constructor(
    readonly index: number,
    readonly promptIds: number[],
    readonly tokenizer: Tokenizer,
    stops: string[],
    readonly echo: boolean,
  ) {
    this.decoder = tokenizer.decoder();
    this.stops = new StopStringMatcher(stops);
  }

  #addLogprob(id: number, logprob: number | null, top: { tokenId: number; logprob: number }[] | null) {
    const token = this.tokenizer.decode([id]);
    this.logprobs.tokens.push(token);
    this.logprobs.token_logprobs.push(logprob);
    this.logprobs.top_logprobs.push(
      top === null ? null : Object.fromEntries(top.map((t) => [this.tokenizer.decode([t.tokenId]), t.logprob])),
    );
    this.logprobs.text_offset.push(this.#offset);
    this.#offset += token.length;
  }

  /** Feeds an engine event; returns the text to show. */
  onEvent(event: TokenEvent, wantLogprobs: boolean): string {
    switch (event.type) {
      case "prompt_logprobs": {
        // echo + logprobs: the prompt's own tokens first (the first has no logprob).
        event.logprobs.forEach((lp, i) => {
          const top = event.topLogprobs[i];
          this.#addLogprob(this.promptIds[i], lp, top === null ? null : [...top]);
        });
        return "";
      }
      case "token": {
        if (this.finish === "stop") return "";
        this.tokenIds.push(event.tokenId);
        this.tokenTimesMs.push(nowMs());
        if (wantLogprobs && event.logprob !== undefined) {
          this.#addLogprob(event.tokenId, event.logprob, [...(event.topLogprobs ?? [])]);
        }
        const text = this.stops.push(this.decoder.push(event.tokenId));
        if (this.stops.stopped) {
          this.finish = "stop";
          this.controller.abort();
        }
        this.text += text;
        return text;
      }
      case "done": {
        this.usage = { prompt: event.promptTokens, completion: event.completionTokens, cached: event.cachedTokens };
        this.queueMs = event.queueMs;
        this.finish ??= event.finishReason === "length" ? "length" : "stop";
        const rest = this.stops.stopped ? "" : this.stops.push(this.decoder.end()) + this.stops.flush();
        this.text += rest;
        return rest;
      }
    }
  }
}

/** Handles one request. */
export async function completions(json: unknown, signal: AbortSignal, deps: CompletionDeps): Promise<Response> {
  const startedMs = nowMs();
  const telemetry = deps.telemetry;
  const request = parseRequest(CompletionRequestSchema, json, "completions");
  const model = requireModel(deps.state, request.model);
  const n = request.n ?? 1;
  const promptList = telemetry.child("prompt.build", () => prompts(request, model.tokenizer));
  if (request.echo && request.stream) {
    throw new InvalidRequestError('"echo" is not supported with "stream"', "echo");
  }
  const stops = request.stop === null || request.stop === undefined
    ? []
    : (typeof request.stop === "string" ? [request.stop] : request.stop).filter((s) => s.length > 0);
  const wantLogprobs = request.logprobs !== null && request.logprobs !== undefined;
  const requestController = new AbortController();
  signal.addEventListener("abort", () => requestController.abort(), { once: true });

  const choices: CompletionChoice[] = [];
  const engineRequests = promptList.flatMap((promptIds, p) =>
    Array.from({ length: n }, (_, k) => {
      const choice = new CompletionChoice(p * n + k, promptIds, model.tokenizer, stops, request.echo === true);
      choices.push(choice);
      requestController.signal.addEventListener("abort", () => choice.controller.abort(), { once: true });
      return {
        id: newId("req-"),
        promptIds,
        maxTokens: request.max_tokens ??
          Math.min(16, defaultMaxTokens(deps.config.scheduler, model.engine, promptIds.length)),
        sampling: samplingParams(request, {
          logprobs: wantLogprobs ? request.logprobs! : undefined,
          choice: k,
          vocabSize: model.engine.vocabSize,
        }),
        stopTokenIds: new Set(model.completionStopIds),
        ignoreEos: request.ignore_eos,
        promptLogprobs: request.echo && wantLogprobs ? request.logprobs! : undefined,
      };
    })
  );
  const streams = submitChoices(model.engine, engineRequests, choices.map((c) => c.controller));
  const id = newId("cmpl-");
  const created = Math.floor(Date.now() / 1000);
  const usage = () => {
    const promptTokens = promptList.reduce((s, p) => s + p.length, 0);
    const completionTokens = choices.reduce((s, c) => s + c.usage.completion, 0);
    return {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
    };
  };

  const report = () => {
    for (const c of choices) {
      telemetry.generation({
        startedMs,
        queueMs: c.queueMs,
        firstTokenMs: c.tokenTimesMs[0],
        lastTokenMs: c.tokenTimesMs[c.tokenTimesMs.length - 1],
        tokenTimesMs: c.tokenTimesMs,
        promptTokens: c.usage.prompt,
        outputTokens: c.usage.completion,
        cachedTokens: c.usage.cached,
        finishReason: c.finish ?? "stop",
        tokensByChannel: { raw: c.usage.completion },
        recoveries: [],
      });
      if (deps.logContent) {
        telemetry.logger.info("request.content", { choice: c.index, prompt: request.prompt, text: c.text });
      }
    }
  };

  if (!request.stream) {
    for await (const [i, event] of mergeStreams(streams)) choices[i].onEvent(event, wantLogprobs);
    report();
    return Response.json({
      id,
      object: "text_completion",
      created,
      model: model.modelId,
      choices: choices.map((c) => ({
        index: c.index,
        text: (c.echo ? model.tokenizer.decode(c.promptIds) : "") + c.text,
        logprobs: wantLogprobs ? c.logprobs : null,
        finish_reason: c.finish ?? "stop",
        ...(request.return_token_ids ? { token_ids: c.tokenIds, prompt_token_ids: c.promptIds } : {}),
      })),
      usage: usage(),
    });
  }
  const { promise: streamDone, resolve: endStream } = Promise.withResolvers<void>();
  telemetry.deferUntil(streamDone);
  return sseResponse(async (send) => {
    const streamStartMs = nowMs();
    try {
      await streamCompletion(send);
    } finally {
      report();
      telemetry.interval("stream", streamStartMs, nowMs());
      endStream();
    }
  }, { requestId: id, logger: telemetry.logger, controller: requestController });

  async function streamCompletion(send: (data: unknown) => void): Promise<void> {
    for await (const [i, event] of mergeStreams(streams)) {
      const choice = choices[i];
      const text = choice.onEvent(event, wantLogprobs);
      const extra: Record<string, unknown> = request.return_token_ids && event.type === "token"
        ? { token_ids: [event.tokenId] }
        : {};
      if (text || Object.keys(extra).length > 0) {
        send({
          id,
          object: "text_completion",
          created,
          model: model.modelId,
          choices: [{ index: choice.index, text, logprobs: null, finish_reason: null, ...extra }],
        });
      }
      if (event.type === "done") {
        send({
          id,
          object: "text_completion",
          created,
          model: model.modelId,
          choices: [{ index: choice.index, text: "", logprobs: null, finish_reason: choice.finish ?? "stop" }],
        });
      }
    }
    if (request.stream_options?.include_usage) {
      send({ id, object: "text_completion", created, model: model.modelId, choices: [], usage: usage() });
    }
  }
}
