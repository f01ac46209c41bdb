/** POST /v1/completions: raw prompts (text or token ids) → raw text, with the legacy logprobs shape. */
import type { ServerConfig } from "../config.ts";
import type { TokenEvent } from "../engine/engine_api.ts";
import { InvalidRequestError } from "../errors.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import type { Logger } from "../obs/logger.ts";
import { type CompletionRequest, CompletionRequestSchema, parseRequest } from "./protocol.ts";
import {
  defaultMaxTokens,
  linkAbort,
  newId,
  requireModel,
  samplingParams,
  type ServingModel,
  type ServingState,
  submitChoices,
} from "./serving.ts";
import { jsonResponse, mergeStreams, sseResponse } from "./sse.ts";
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

/** One request in flight: what the response builders need. */
interface CompletionRun {
  readonly id: string;
  readonly created: number;
  readonly request: CompletionRequest;
  readonly model: ServingModel;
  readonly promptList: number[][];
  readonly choices: CompletionChoice[];
  readonly streams: AsyncIterable<TokenEvent>[];
  readonly wantLogprobs: boolean;
  readonly startedMs: number;
  readonly deps: CompletionDeps;
}

/** One engine request per prompt × n, each with its choice. */
function submitAll(
  request: CompletionRequest,
  model: ServingModel,
  promptList: number[][],
  deps: CompletionDeps,
  requestSignal: AbortSignal,
): { choices: CompletionChoice[]; streams: AsyncIterable<TokenEvent>[] } {
  const n = request.n ?? 1;
  const wantLogprobs = request.logprobs !== null && request.logprobs !== undefined;
  const stops = request.stop === null || request.stop === undefined
    ? []
    : (typeof request.stop === "string" ? [request.stop] : request.stop).filter((s) => s.length > 0);
  const choices: CompletionChoice[] = [];
  const engineRequests = promptList.flatMap((promptIds, p) =>
    Array.from({ length: n }, (_, k) => {
      const choice = new CompletionChoice(p * n + k, promptIds, model.tokenizer, stops, request.echo === true);
      choices.push(choice);
      linkAbort(requestSignal, choice.controller);
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
  const streams = submitChoices(
    model.engine,
    engineRequests,
    choices.map((c) => c.controller),
    "prompt",
    deps.telemetry,
  );
  return { choices, streams };
}

/** Handles one request. */
export function completions(json: unknown, signal: AbortSignal, deps: CompletionDeps): Response {
  const startedMs = nowMs();
  const telemetry = deps.telemetry;
  const request = parseRequest(CompletionRequestSchema, json, "completions");
  const model = requireModel(deps.state, request.model);
  const promptList = telemetry.child("prompt.build", () => prompts(request, model.tokenizer));
  if (request.echo && request.stream) {
    throw new InvalidRequestError('"echo" is not supported with "stream"', "echo");
  }
  const requestController = new AbortController();
  // A client that left while the prompt was being built has already aborted: linkAbort handles that too.
  linkAbort(signal, requestController);
  const { choices, streams } = submitAll(request, model, promptList, deps, requestController.signal);
  const run: CompletionRun = {
    id: newId("cmpl-"),
    created: Math.floor(Date.now() / 1000),
    request,
    model,
    promptList,
    choices,
    streams,
    wantLogprobs: request.logprobs !== null && request.logprobs !== undefined,
    startedMs,
    deps,
  };
  if (!request.stream) {
    // Settles when the answer is complete: the request's span and metrics end then, not when the headers go out.
    const answer = completeAll(run);
    telemetry.deferUntil(answer.then(() => {}, () => {}));
    return jsonResponse(answer, { requestId: run.id, logger: telemetry.logger, controller: requestController });
  }

  const { promise: streamDone, resolve: endStream } = Promise.withResolvers<void>();
  telemetry.deferUntil(streamDone);
  return sseResponse(async (send) => {
    const streamStartMs = nowMs();
    try {
      await streamCompletion(run, send);
    } finally {
      report(run);
      telemetry.interval("stream", streamStartMs, nowMs());
      endStream();
    }
  }, { requestId: run.id, logger: telemetry.logger, controller: requestController });
}

function usageOf(run: CompletionRun) {
  const promptTokens = run.promptList.reduce((s, p) => s + p.length, 0);
  const completionTokens = run.choices.reduce((s, c) => s + c.usage.completion, 0);
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  };
}

/** Records each choice's generation (metrics, span, optional content log). */
function report(run: CompletionRun): void {
  const { telemetry, logContent } = run.deps;
  for (const c of run.choices) {
    telemetry.generation({
      startedMs: run.startedMs,
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
    if (logContent) {
      telemetry.logger.info("request.content", { choice: c.index, prompt: run.request.prompt, text: c.text });
    }
  }
}

/** The whole (non-streaming) text_completion object. */
async function completeAll(run: CompletionRun) {
  const { choices, model, request } = run;
  for await (const [i, event] of mergeStreams(run.streams)) choices[i].onEvent(event, run.wantLogprobs);
  report(run);
  return {
    id: run.id,
    object: "text_completion",
    created: run.created,
    model: model.modelId,
    choices: choices.map((c) => ({
      index: c.index,
      text: (c.echo ? model.tokenizer.decode(c.promptIds) : "") + c.text,
      logprobs: run.wantLogprobs ? c.logprobs : null,
      finish_reason: c.finish ?? "stop",
      ...(request.return_token_ids ? { token_ids: c.tokenIds, prompt_token_ids: c.promptIds } : {}),
    })),
    usage: usageOf(run),
  };
}

/** Streams text_completion chunks, a finish chunk per choice, then usage if asked. */
async function streamCompletion(run: CompletionRun, send: (data: unknown) => void): Promise<void> {
  const head = { id: run.id, object: "text_completion", created: run.created, model: run.model.modelId };
  for await (const [i, event] of mergeStreams(run.streams)) {
    const choice = run.choices[i];
    const text = choice.onEvent(event, run.wantLogprobs);
    const extra: Record<string, unknown> = run.request.return_token_ids && event.type === "token"
      ? { token_ids: [event.tokenId] }
      : {};
    if (text || Object.keys(extra).length > 0) {
      send({ ...head, choices: [{ index: choice.index, text, logprobs: null, finish_reason: null, ...extra }] });
    }
    if (event.type === "done") {
      send({
        ...head,
        choices: [{ index: choice.index, text: "", logprobs: null, finish_reason: choice.finish ?? "stop" }],
      });
    }
  }
  if (run.request.stream_options?.include_usage) send({ ...head, choices: [], usage: usageOf(run) });
}
