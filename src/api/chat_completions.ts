/** POST /v1/chat/completions: parse → harmony prompt → engine → parsed reasoning, content and tool calls. */
import { pushAll } from "../formats/json_depth.ts";
import type { ServerConfig } from "../config.ts";
import type { EngineRequest, TokenEvent } from "../engine/engine_api.ts";
import { InvalidRequestError } from "../errors.ts";
import { type ChatMessage, renderChatPrompt, type ToolChoice } from "../harmony/chat.ts";
import { type ChatEvent, ChatOutputParser, type ChatResult } from "../harmony/chat_output.ts";
import type { ToolDefinition } from "../harmony/render.ts";
import { toolChoiceGuide } from "../harmony/tool_guide.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { ASSISTANT_STOP_IDS } from "../harmony/tokens.ts";
import type { Logger } from "../obs/logger.ts";
import { type ChatCompletionRequest, ChatCompletionRequestSchema, contentText, parseRequest } from "./protocol.ts";
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
import { chatStructuredSpec, strictToolGuides, structuredGuides } from "./structured.ts";
import { reasoningBudgetGuide } from "../structured/budget.ts";
import { StopStringMatcher } from "./stop_strings.ts";
import { nowMs, type RequestTelemetry } from "./telemetry.ts";

/** Dependencies of the endpoint. */
export interface ChatDeps {
  readonly config: ServerConfig;
  readonly state: ServingState;
  readonly logger: Logger;
  /** Today's date as YYYY-MM-DD (the prompt's "Current date" line). */
  readonly today: () => string;
  readonly telemetry: RequestTelemetry;
  /** Log prompts and completions (`--log-content`). */
  readonly logContent: boolean;
}

/** A logprob entry in Chat Completions' shape. */
interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

function tokenInfo(tokenizer: Tokenizer, id: number): { token: string; bytes: number[] } {
  const bytes = tokenizer.tokenBytes(id) ?? new Uint8Array();
  return { token: new TextDecoder().decode(bytes), bytes: [...bytes] };
}

function toChatMessages(request: ChatCompletionRequest): ChatMessage[] {
  return request.messages.map((m): ChatMessage => {
    switch (m.role) {
      case "system":
      case "developer":
      case "user":
        return { role: m.role, content: contentText(m.content) };
      case "assistant":
        return {
          role: "assistant",
          content: contentText(m.content),
          reasoning: m.reasoning ?? m.reasoning_content ?? null,
          tool_calls: m.tool_calls?.map((call) => ({
            id: call.id,
            type: "function" as const,
            function: { name: call.function.name, arguments: call.function.arguments },
          })),
        };
      case "tool":
        return { role: "tool", tool_call_id: m.tool_call_id, content: contentText(m.content) };
    }
  });
}

/** One choice while it is generated. */
class Choice {
  readonly parser: ChatOutputParser;
  readonly stops: StopStringMatcher;
  readonly controller = new AbortController();
  readonly tokenIds: number[] = [];
  readonly logprobs: TokenLogprob[] = [];
  finishedBy: "engine_stop" | "engine_length" | "own_stop" | undefined;
  usage = { promptTokens: 0, completionTokens: 0, cachedTokens: 0 };
  readonly tokenTimesMs: number[] = [];
  queueMs: number | undefined;

  constructor(
    readonly index: number,
    tokenizer: Tokenizer,
    functionNames: Set<string>,
    stops: string[],
    readonly ignoreEos = false,
  ) {
    this.parser = new ChatOutputParser(tokenizer, { functionNames });
    this.stops = new StopStringMatcher(stops);
  }

  /** Feeds one engine event; returns the chat events to show. */
  onEvent(event: TokenEvent, tokenizer: Tokenizer, wantLogprobs: boolean): ChatEvent[] {
    if (event.type === "prompt_logprobs") return [];
    if (event.type === "done") {
      this.usage = {
        promptTokens: event.promptTokens,
        completionTokens: event.completionTokens,
        cachedTokens: event.cachedTokens,
      };
      this.queueMs = event.queueMs;
      if (!this.finishedBy) this.finishedBy = event.finishReason === "length" ? "engine_length" : "engine_stop";
      return this.#filter(this.parser.end(), true);
    }
    if (this.finishedBy === "own_stop") return [];
    this.tokenIds.push(event.tokenId);
    this.tokenTimesMs.push(nowMs());
    if (wantLogprobs && event.logprob !== undefined) {
      this.logprobs.push({
        ...tokenInfo(tokenizer, event.tokenId),
        logprob: event.logprob,
        top_logprobs: (event.topLogprobs ?? []).map((t) => ({
          ...tokenInfo(tokenizer, t.tokenId),
          logprob: t.logprob,
        })),
      });
    }
    const events = this.#filter(this.parser.push(event.tokenId), false);
    if (this.parser.shouldStop && !this.finishedBy && !this.ignoreEos) {
      // A stop token, or output that left the format: stop sampling for this choice now.
      this.finishedBy = "own_stop";
      this.controller.abort();
      pushAll(events, this.#filter(this.parser.end(), true));
    }
    return events;
  }

  #filter(events: ChatEvent[], final: boolean): ChatEvent[] {
    const out: ChatEvent[] = [];
    for (const e of events) {
      if (e.type !== "content") {
        out.push(e);
        continue;
      }
      const text = this.stops.push(e.text);
      if (text) out.push({ type: "content", text });
      if (this.stops.stopped && this.finishedBy !== "own_stop") {
        this.finishedBy = "own_stop";
        this.controller.abort();
      }
    }
    if (final) {
      const rest = this.stops.flush();
      if (rest) out.push({ type: "content", text: rest });
    }
    return out;
  }

  result(): ChatResult & { contentCutByStop: boolean } {
    const result = this.parser.result(this.finishedBy === "engine_length");
    return { ...result, contentCutByStop: this.stops.stopped };
  }
}

interface Prepared {
  model: ServingModel;
  request: ChatCompletionRequest;
  promptIds: number[];
  engineRequests: EngineRequest[];
  functionNames: Set<string>;
  namedTool: boolean;
  includeReasoning: boolean;
  stops: string[];
}

function prepare(json: unknown, deps: ChatDeps): Prepared {
  const request = parseRequest(ChatCompletionRequestSchema, json, "chat");
  const model = requireModel(deps.state, request.model);
  const tools: ToolDefinition[] = (request.tools ?? []).map((t) => ({
    name: t.function.name,
    description: t.function.description ?? "",
    parameters: t.function.parameters ?? undefined,
  }));
  let toolChoice: ToolChoice = "auto";
  if (typeof request.tool_choice === "string") toolChoice = request.tool_choice;
  else if (request.tool_choice) {
    const name = request.tool_choice.function.name;
    if (!tools.some((t) => t.name === name)) {
      throw new InvalidRequestError(`tool_choice names "${name}", which is not in "tools"`, "tool_choice");
    }
    toolChoice = { name };
  }
  if (toolChoice === "required" && tools.length === 0) {
    throw new InvalidRequestError('tool_choice "required" needs at least one tool', "tool_choice");
  }
  if (request.top_logprobs && !request.logprobs) {
    throw new InvalidRequestError('"top_logprobs" requires "logprobs": true', "top_logprobs");
  }
  const schema = request.response_format?.type === "json_schema" ? request.response_format.json_schema : undefined;
  const promptIds = renderChatPrompt(model.tokenizer, toChatMessages(request), {
    tools,
    toolChoice,
    reasoningEffort: request.reasoning_effort ?? request.reasoning?.effort ??
      deps.config.scheduler.defaultReasoningEffort,
    currentDate: deps.config.currentDate ?? deps.today(),
    responseFormat: schema ? { name: schema.name, description: schema.description, schema: schema.schema } : undefined,
  });
  const maxTokens = request.max_completion_tokens ?? request.max_tokens ??
    defaultMaxTokens(deps.config.scheduler, model.engine, promptIds.length);
  const n = request.n ?? 1;
  const logprobs = request.logprobs ? request.top_logprobs ?? 0 : undefined;
  const engineRequests = Array.from({ length: n }, (_, choice) => ({
    id: newId("req-"),
    promptIds,
    maxTokens,
    sampling: samplingParams(request, { logprobs, choice, vocabSize: model.engine.vocabSize }),
    stopTokenIds: new Set(ASSISTANT_STOP_IDS),
    ignoreEos: request.ignore_eos,
    guide: toolChoice === "required" || typeof toolChoice === "object"
      ? toolChoiceGuide(model.tokenizer, toolChoice, tools.map((t) => t.name))
      : undefined,
  }));
  const stops = request.stop === null || request.stop === undefined
    ? []
    : typeof request.stop === "string"
    ? [request.stop]
    : request.stop;
  return {
    model,
    request,
    promptIds,
    engineRequests,
    functionNames: new Set(tools.map((t) => t.name)),
    namedTool: typeof toolChoice === "object",
    includeReasoning: request.include_reasoning !== false && request.reasoning?.exclude !== true,
    stops: stops.filter((s) => s.length > 0),
  };
}

function finishReason(choice: Choice, result: ChatResult, namedTool: boolean): "stop" | "length" | "tool_calls" {
  if (choice.finishedBy === "engine_length" && !choice.stops.stopped) return "length";
  if (result.toolCalls.length > 0) return namedTool ? "stop" : "tool_calls";
  return "stop";
}

function usageOf(choices: Choice[], results: ChatResult[]) {
  const promptTokens = choices[0]?.usage.promptTokens ?? 0;
  const completionTokens = choices.reduce((s, c) => s + c.usage.completionTokens, 0);
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: choices[0]?.usage.cachedTokens ?? 0 },
    completion_tokens_details: { reasoning_tokens: results.reduce((s, r) => s + r.reasoningTokens, 0) },
  };
}

/** One request in flight: what the response builders need. */
interface ChatRun {
  readonly id: string;
  readonly created: number;
  readonly prepared: Prepared;
  readonly choices: Choice[];
  readonly streams: AsyncIterable<TokenEvent>[];
  readonly wantLogprobs: boolean;
  readonly startedMs: number;
  readonly deps: ChatDeps;
}

/**
 * Adds grammar guides when the request asks for structured output (response_format, guided_json/choice): compiled
 * before anything is queued, so a bad schema is a 400 and nothing runs.
 */
async function constrain(p: Prepared, deps: ChatDeps): Promise<Prepared> {
  const spec = chatStructuredSpec(p.request);
  if (!spec) {
    const budget = p.request.max_reasoning_tokens;
    let guides = p.engineRequests.map((r) =>
      budget === undefined
        ? r.guide
        : reasoningBudgetGuide(p.model.tokenizer, p.model.engine.vocabSize, budget, r.guide, () =>
          deps.telemetry.metrics?.countForcedReasoningClose())
    );
    const strict = (p.request.tools ?? []).flatMap((t, i) =>
      t.function.strict === true && p.request.tool_choice !== "none"
        ? [{ name: t.function.name, parameters: t.function.parameters, param: `tools[${i}].function.parameters` }]
        : []
    );
    if (strict.length > 0) guides = await strictToolGuides(p.model, strict, guides);
    return { ...p, engineRequests: p.engineRequests.map((r, i) => ({ ...r, guide: guides[i] })) };
  }
  if (p.engineRequests[0].guide) {
    throw new InvalidRequestError(
      "response_format cannot be combined with a forced tool call (tool_choice required or named)",
      "tool_choice",
    );
  }
  const guides = await structuredGuides(p.model, spec, p.engineRequests.length, {
    maxReasoningTokens: p.request.max_reasoning_tokens,
    onForcedClose: () => deps.telemetry.metrics?.countForcedReasoningClose(),
  });
  return { ...p, engineRequests: p.engineRequests.map((r, i) => ({ ...r, guide: guides[i] })) };
}

/** Handles one request; `signal` aborts when the client goes away. */
export async function chatCompletions(json: unknown, signal: AbortSignal, deps: ChatDeps): Promise<Response> {
  const startedMs = nowMs();
  const telemetry = deps.telemetry;
  const p = await constrain(telemetry.child("prompt.build", () => prepare(json, deps)), deps);
  telemetry.setAttributes({
    "gen_ai.request.model": p.model.modelId,
    "gen_ai.request.max_tokens": p.engineRequests[0].maxTokens,
  });
  const requestController = new AbortController();
  // A client that left while the prompt was being built has already aborted: linkAbort handles that too.
  linkAbort(signal, requestController);
  const choices = p.engineRequests.map((_, i) =>
    new Choice(i, p.model.tokenizer, p.functionNames, p.stops, p.request.ignore_eos)
  );
  for (const choice of choices) {
    linkAbort(requestController.signal, choice.controller);
  }
  // Each choice has its own controller (a stop string ends one choice); the request's aborts them all.
  let streams: AsyncIterable<TokenEvent>[];
  try {
    streams = submitChoices(
      p.model.engine,
      p.engineRequests,
      choices.map((c) => c.controller),
      "messages",
      telemetry,
    );
  } catch (err) {
    for (const r of p.engineRequests) r.guide?.dispose?.(); // idempotent: the engine may have freed some already
    throw err;
  }
  const run: ChatRun = {
    id: newId("chatcmpl-"),
    created: Math.floor(Date.now() / 1000),
    prepared: p,
    choices,
    streams,
    wantLogprobs: p.request.logprobs === true,
    startedMs,
    deps,
  };
  if (!p.request.stream) {
    // Settles when the answer is complete: the request's span and metrics end then, not when the headers go out.
    const answer = completeChat(run);
    telemetry.deferUntil(answer.then(() => {}, () => {}));
    return jsonResponse(answer, { requestId: run.id, logger: telemetry.logger, controller: requestController });
  }

  const { promise: streamDone, resolve: endStream } = Promise.withResolvers<void>();
  telemetry.deferUntil(streamDone);
  return sseResponse(async (send) => {
    const streamStartMs = nowMs();
    try {
      await streamChat(run, send);
    } finally {
      report(run);
      telemetry.interval("stream", streamStartMs, nowMs());
      endStream();
    }
  }, { requestId: run.id, logger: telemetry.logger, controller: requestController });
}

/** Records each choice's generation (metrics, span, optional content log). */
function report(run: ChatRun): void {
  const { telemetry, logContent } = run.deps;
  for (const choice of run.choices) {
    const result = choice.result();
    telemetry.generation({
      startedMs: run.startedMs,
      queueMs: choice.queueMs,
      firstTokenMs: choice.tokenTimesMs[0],
      lastTokenMs: choice.tokenTimesMs[choice.tokenTimesMs.length - 1],
      tokenTimesMs: choice.tokenTimesMs,
      promptTokens: choice.usage.promptTokens,
      outputTokens: choice.usage.completionTokens,
      cachedTokens: choice.usage.cachedTokens,
      finishReason: finishReason(choice, result, run.prepared.namedTool),
      tokensByChannel: choice.parser.tokensByChannel,
      recoveries: choice.parser.recoveries,
    });
    if (logContent) {
      telemetry.logger.info("request.content", {
        choice: choice.index,
        prompt: run.prepared.request.messages,
        reasoning: result.reasoning,
        content: result.content,
        tool_calls: result.toolCalls,
      });
    }
  }
}

/** The whole (non-streaming) chat.completion object. */
async function completeChat(run: ChatRun) {
  const { prepared: p, choices } = run;
  const tokenizer = p.model.tokenizer;
  for await (const [i, event] of mergeStreams(run.streams)) choices[i].onEvent(event, tokenizer, run.wantLogprobs);
  const results = choices.map((c) => c.result());
  report(run);
  return {
    id: run.id,
    object: "chat.completion",
    created: run.created,
    model: p.model.modelId,
    choices: choices.map((choice, i) => {
      const r = results[i];
      const toolCalls = r.toolCalls.map((call) => ({
        id: call.id,
        type: "function",
        function: { name: call.name, arguments: call.arguments },
      }));
      const reasoning = p.includeReasoning ? r.reasoning : null;
      return {
        index: i,
        message: {
          role: "assistant",
          content: r.content,
          reasoning,
          reasoning_content: reasoning,
          ...(toolCalls.length > 0 ? { tool_calls: toolCalls } : {}),
        },
        logprobs: run.wantLogprobs ? { content: choice.logprobs } : null,
        finish_reason: finishReason(choice, r, p.namedTool),
        ...(p.request.return_token_ids ? { token_ids: choice.tokenIds } : {}),
      };
    }),
    usage: usageOf(choices, results),
    ...(p.request.return_token_ids ? { prompt_token_ids: p.promptIds } : {}),
    system_fingerprint: null,
  };
}

/** Streams chat.completion.chunk events: a role chunk per choice, deltas, finish reasons, then usage if asked. */
async function streamChat(run: ChatRun, send: (data: unknown) => void): Promise<void> {
  const { prepared: p, choices } = run;
  const chunk = (index: number, delta: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
    id: run.id,
    object: "chat.completion.chunk",
    created: run.created,
    model: p.model.modelId,
    choices: [{ index, delta, logprobs: null, finish_reason: null, ...extra }],
  });
  for (const choice of choices) {
    send(chunk(choice.index, { role: "assistant", content: "" }, p.request.return_token_ids ? { token_ids: [] } : {}));
  }
  const ended = new Set<number>();
  for await (const [i, event] of mergeStreams(run.streams)) {
    const choice = choices[i];
    const logprobsBefore = choice.logprobs.length;
    const tokensBefore = choice.tokenIds.length;
    const events = choice.onEvent(event, p.model.tokenizer, run.wantLogprobs);
    const extra: Record<string, unknown> = {};
    if (run.wantLogprobs && choice.logprobs.length > logprobsBefore) {
      extra.logprobs = { content: choice.logprobs.slice(logprobsBefore) };
    }
    if (p.request.return_token_ids && choice.tokenIds.length > tokensBefore) {
      extra.token_ids = choice.tokenIds.slice(tokensBefore);
    }
    let sentExtra = false;
    for (const e of events) {
      const delta = chatEventDelta(e, p.includeReasoning);
      if (delta) {
        send(chunk(i, delta, sentExtra ? {} : extra));
        sentExtra = true;
      }
    }
    if (!sentExtra && Object.keys(extra).length > 0) send(chunk(i, {}, extra));
    if (event.type === "done" && !ended.has(i)) {
      ended.add(i);
      send(chunk(i, {}, { finish_reason: finishReason(choice, choice.result(), p.namedTool) }));
    }
  }
  if (p.request.stream_options?.include_usage) {
    send({
      id: run.id,
      object: "chat.completion.chunk",
      created: run.created,
      model: p.model.modelId,
      choices: [],
      usage: usageOf(choices, choices.map((c) => c.result())),
    });
  }
}

function chatEventDelta(e: ChatEvent, includeReasoning: boolean): Record<string, unknown> | undefined {
  switch (e.type) {
    case "reasoning":
      return includeReasoning ? { reasoning: e.text, reasoning_content: e.text } : undefined;
    case "content":
      return { content: e.text };
    case "tool_call_begin":
      return {
        tool_calls: [{ index: e.index, id: e.id, type: "function", function: { name: e.name, arguments: "" } }],
      };
    case "tool_call_delta":
      return { tool_calls: [{ index: e.index, function: { arguments: e.text } }] };
    default:
      return undefined;
  }
}
