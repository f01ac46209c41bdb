/**
 * The Responses API: POST /v1/responses (plain, streamed or in the background), GET / DELETE /v1/responses/{id},
 * GET /v1/responses/{id}/input_items and POST /v1/responses/{id}/cancel. A stored response keeps its turn's items
 * with the ids the model generated, so `previous_response_id` continues the conversation token for token.
 */
import type { ServerConfig } from "../config.ts";
import type { EngineRequest, TokenEvent } from "../engine/engine_api.ts";
import { InvalidRequestError } from "../errors.ts";
import type { ToolChoice } from "../harmony/chat.ts";
import { type PromptItem, renderResponsesPrompt } from "../harmony/responses_items.ts";
import { toolChoiceGuide } from "../harmony/tool_guide.ts";
import { ASSISTANT_STOP_IDS } from "../harmony/tokens.ts";
import type { ResponseStore, StoredResponse } from "../store/response_store.ts";
import { HttpError, toOpenAiError } from "./openai_errors.ts";
import {
  type FunctionTool,
  functionTools,
  type InputItemJson,
  parseInputItems,
  parseResponsesRequest,
  type ResponsesRequest,
} from "./responses_protocol.ts";
import { ResponseRun } from "./responses_run.ts";
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
import { jsonResponse, type SendEvent, sseResponse } from "./sse.ts";
import { strictToolGuides, structuredGuides, type StructuredSpec } from "./structured.ts";
import { reasoningBudgetGuide } from "../structured/budget.ts";
import { nowMs, type RequestTelemetry } from "./telemetry.ts";

/** Background generations of this process, by response id (for cancel). */
export type BackgroundRuns = Map<string, { readonly done: Promise<void>; cancel(): void }>;

/** What the endpoints need. */
export interface ResponsesDeps {
  readonly config: ServerConfig;
  readonly state: ServingState;
  readonly store: ResponseStore | undefined;
  readonly background: BackgroundRuns;
  /** Who asks: a digest of the API key ("" without keys); responses are visible to their owner only. */
  readonly owner: string;
  readonly today: () => string;
  readonly now: () => number;
  readonly telemetry: RequestTelemetry;
}

/** How long a stored response lives (`--response-ttl`), in ms. */
function ttlMs(config: ServerConfig): number {
  return config.responseTtlSeconds * 1000;
}

function notFound(id: string, param?: string): HttpError {
  return new HttpError(404, `No response with id "${id}" was found`, "invalid_request_error", "not_found", param);
}

/** The stored responses before this one, oldest first (the chain of previous_response_id). */
async function history(deps: ResponsesDeps, previous: string): Promise<StoredResponse[]> {
  if (!deps.store) throw notFound(previous, "previous_response_id");
  const chain: StoredResponse[] = [];
  for (let id: string | null = previous; id !== null;) {
    const record: StoredResponse | undefined = await deps.store.get(id, deps.owner, deps.now());
    if (!record) throw notFound(id, "previous_response_id");
    if (record.status !== "completed" && record.status !== "incomplete") {
      throw new InvalidRequestError(
        `Response "${id}" is ${record.status}: only a completed or incomplete response can be continued`,
        "previous_response_id",
      );
    }
    chain.unshift(record);
    id = record.previousResponseId;
    if (chain.length > 10_000) throw new InvalidRequestError("The conversation is too long", "previous_response_id");
  }
  return chain;
}

function toolChoiceOf(request: ResponsesRequest, tools: FunctionTool[]): ToolChoice {
  const choice = request.tool_choice;
  if (choice === undefined) return "auto";
  if (typeof choice === "string") {
    if (choice === "required" && tools.length === 0) {
      throw new InvalidRequestError('tool_choice "required" needs at least one tool', "tool_choice");
    }
    return choice;
  }
  if (!tools.some((t) => t.name === choice.name)) {
    throw new InvalidRequestError(`tool_choice names "${choice.name}", which is not in "tools"`, "tool_choice");
  }
  return { name: choice.name };
}

/** Every function_call_output answers a call made earlier in the conversation. */
function checkCallIds(earlier: readonly PromptItem[], input: readonly PromptItem[]): void {
  const calls = new Set<string>();
  for (const { item } of earlier) if (item.type === "function_call") calls.add(item.callId);
  input.forEach(({ item }, i) => {
    if (item.type === "function_call") calls.add(item.callId);
    if (item.type === "function_call_output" && !calls.has(item.callId)) {
      throw new InvalidRequestError(
        `No function_call with call_id "${item.callId}" precedes this output in the conversation`,
        `input[${i}].call_id`,
      );
    }
  });
}

/** A validated request, ready to run. */
interface Prepared {
  readonly request: ResponsesRequest;
  readonly model: ServingModel;
  readonly engineRequest: EngineRequest;
  readonly inputItems: InputItemJson[];
  readonly turn: PromptItem[];
  readonly functionNames: Set<string>;
  readonly echo: Record<string, unknown>;
}

/** text.format json_schema / json_object: the grammar guide (the analysis stays free; see src/structured). */
async function withStructuredGuide(
  request: EngineRequest,
  spec: StructuredSpec,
  model: ServingModel,
  json: unknown,
  deps: ResponsesDeps,
): Promise<EngineRequest> {
  if (request.guide) {
    throw new InvalidRequestError("text.format cannot be combined with a forced tool call", "tool_choice");
  }
  // Extension, as on chat completions: analysis tokens before <|end|> is forced.
  const maxReasoningTokens = (json as { max_reasoning_tokens?: unknown }).max_reasoning_tokens;
  const [guide] = await structuredGuides(model, spec, 1, {
    maxReasoningTokens: typeof maxReasoningTokens === "number" ? maxReasoningTokens : undefined,
    onForcedClose: () => deps.telemetry.metrics?.countForcedReasoningClose(),
  });
  return { ...request, guide };
}

/** The request with its grammar guide: text.format's, or strict tools' arguments (none when neither applies). */
async function constrained(
  engineRequest: EngineRequest,
  structured: StructuredSpec | undefined,
  request: ResponsesRequest,
  tools: FunctionTool[],
  model: ServingModel,
  json: unknown,
  deps: ResponsesDeps,
): Promise<EngineRequest> {
  if (structured) return await withStructuredGuide(engineRequest, structured, model, json, deps);
  const budget = (json as { max_reasoning_tokens?: unknown }).max_reasoning_tokens;
  if (typeof budget === "number") {
    const guide = reasoningBudgetGuide(
      model.tokenizer,
      model.engine.vocabSize,
      budget,
      engineRequest.guide,
      () => deps.telemetry.metrics?.countForcedReasoningClose(),
    );
    engineRequest = { ...engineRequest, guide };
  }
  // Function tools are strict unless they say otherwise (OpenAI's Responses default): arguments follow `parameters`.
  const strict = request.tool_choice === "none"
    ? []
    : tools.flatMap((t, i) =>
      t.strict !== false ? [{ name: t.name, parameters: t.parameters, param: `tools[${i}].parameters` }] : []
    );
  if (strict.length === 0) return engineRequest;
  const [guide] = await strictToolGuides(model, strict, [engineRequest.guide]);
  return { ...engineRequest, guide };
}

async function prepare(json: unknown, deps: ResponsesDeps): Promise<Prepared> {
  const request = parseResponsesRequest(json);
  const model = requireModel(deps.state, request.model);
  const tools = functionTools(request);
  const toolChoice = toolChoiceOf(request, tools);
  const earlier = request.previous_response_id
    ? (await history(deps, request.previous_response_id)).flatMap((r) => r.turn as PromptItem[])
    : [];
  const input = parseInputItems(request, newId);
  const turn = input.items.map((item) => ({ item }));
  checkCallIds(earlier, turn);
  const effort = request.reasoning?.effort ?? deps.config.scheduler.defaultReasoningEffort;
  const format = request.text?.format as { type: string; name?: string; description?: string; schema?: unknown };
  const structured = format?.type === "json_schema"
    ? { schema: format.schema, param: "text.format" }
    : format?.type === "json_object"
    ? { schema: undefined, param: "text.format" }
    : undefined;
  const promptIds = renderResponsesPrompt(model.tokenizer, [...earlier, ...turn], {
    responseFormat: format?.type === "json_schema"
      ? { name: format.name ?? "response", description: format.description, schema: format.schema }
      : undefined,
    tools: tools.map((t) => ({
      name: t.name,
      description: t.description ?? "",
      parameters: t.parameters ?? undefined,
    })),
    toolChoice,
    reasoningEffort: effort,
    currentDate: deps.config.currentDate ?? deps.today(),
    instructions: request.instructions,
  });
  const maxTokens = request.max_output_tokens ??
    defaultMaxTokens(deps.config.scheduler, model.engine, promptIds.length);
  let engineRequest: EngineRequest = {
    id: newId("req-"),
    promptIds,
    maxTokens,
    sampling: samplingParams(request, { logprobs: undefined, choice: 0, vocabSize: model.engine.vocabSize }),
    stopTokenIds: new Set(ASSISTANT_STOP_IDS),
    guide: toolChoice === "required" || typeof toolChoice === "object"
      ? toolChoiceGuide(model.tokenizer, toolChoice, tools.map((t) => t.name))
      : undefined,
  };
  engineRequest = await constrained(engineRequest, structured, request, tools, model, json, deps);
  const echo = {
    background: request.background ?? false,
    instructions: request.instructions ?? null,
    max_output_tokens: request.max_output_tokens ?? null,
    metadata: request.metadata ?? {},
    parallel_tool_calls: request.parallel_tool_calls ?? true,
    previous_response_id: request.previous_response_id ?? null,
    reasoning: { effort, summary: null },
    store: request.store ?? true,
    temperature: request.temperature ?? 1,
    text: { format: format ?? { type: "text" } },
    tool_choice: request.tool_choice ?? "auto",
    tools: request.tools ?? [],
    top_p: request.top_p ?? 1,
    truncation: "disabled",
    user: request.user ?? null,
  };
  return {
    request,
    model,
    engineRequest,
    inputItems: input.stored,
    turn,
    functionNames: new Set(tools.map((t) => t.name)),
    echo,
  };
}

/** The row for a response. */
function record(p: Prepared, run: ResponseRun, deps: ResponsesDeps): StoredResponse {
  const createdMs = run.settings.createdAt * 1000;
  return {
    id: run.settings.id,
    owner: deps.owner,
    createdAt: createdMs,
    expiresAt: createdMs + ttlMs(deps.config),
    previousResponseId: p.request.previous_response_id ?? null,
    status: run.status,
    response: run.responseJson(),
    inputItems: p.inputItems,
    turn: [...p.turn, ...run.outputItems()],
  };
}

/** Runs the generation to its end; `send` gets each stream event (numbered). */
async function generate(
  run: ResponseRun,
  stream: AsyncIterable<TokenEvent>,
  send: ((event: Record<string, unknown>) => void) | undefined,
  cancelled: () => boolean,
): Promise<void> {
  for await (const event of stream) {
    for (const e of run.onEngineEvent(event)) send?.(run.sequenced(e));
  }
  run.finish(cancelled());
}

/** Queues the generation; a refused one (429, context) frees its grammar guide at once. */
function submit(
  p: Prepared,
  controller: AbortController,
  telemetry: RequestTelemetry,
): AsyncIterable<TokenEvent>[] {
  try {
    return submitChoices(p.model.engine, [p.engineRequest], [controller], "input", telemetry);
  } catch (err) {
    p.engineRequest.guide?.dispose?.();
    throw err;
  }
}

/** POST /v1/responses. */
export async function createResponse(json: unknown, signal: AbortSignal, deps: ResponsesDeps): Promise<Response> {
  const startedMs = nowMs();
  const p = await prepare(json, deps);
  const controller = new AbortController();
  const run = new ResponseRun(
    { id: newId("resp_"), createdAt: Math.floor(deps.now() / 1000), model: p.model.modelId, echo: p.echo },
    p.model.tokenizer,
    p.functionNames,
    controller,
  );
  const store = p.request.store !== false ? deps.store : undefined;
  deps.telemetry.setAttributes({
    "gen_ai.request.model": p.model.modelId,
    "gen_ai.request.max_tokens": p.engineRequest.maxTokens,
  });
  if (p.request.background) return await startBackground(p, run, deps, startedMs);
  linkAbort(signal, controller);
  const [stream] = submit(p, controller, deps.telemetry);
  const finish = async () => {
    run.report(deps.telemetry, startedMs);
    // Stored only when it ran to its end: a client that left mid-answer leaves no half conversation behind.
    if (store && !signal.aborted) await store.put(record(p, run, deps));
  };
  if (!p.request.stream) {
    const answer = generate(run, stream, undefined, () => false).then(finish).then(() => run.responseJson());
    deps.telemetry.deferUntil(answer.then(() => {}, () => {}));
    return jsonResponse(answer, { requestId: run.settings.id, logger: deps.telemetry.logger, controller });
  }
  const { promise: streamDone, resolve: endStream } = Promise.withResolvers<void>();
  deps.telemetry.deferUntil(streamDone);
  return sseResponse(async (send: SendEvent) => {
    try {
      send(run.sequenced({ type: "response.created", response: run.responseJson() }));
      send(run.sequenced({ type: "response.in_progress", response: run.responseJson() }));
      await generate(run, stream, send, () => false);
      await finish();
      const type = run.status === "incomplete" ? "response.incomplete" : "response.completed";
      send(run.sequenced({ type, response: run.responseJson() }));
    } catch (err) {
      deps.telemetry.logger.error("request.stream_error", { error: err });
      const body = toOpenAiError(err, run.settings.id).body.error;
      send(run.sequenced({ type: "error", code: body.code, message: body.message, param: body.param }));
    } finally {
      endStream();
    }
  }, { requestId: run.settings.id, logger: deps.telemetry.logger, controller, namedEvents: true });
}

/** background: true — stored as queued, answered at once, generated on; GET polls it, cancel stops it. */
async function startBackground(
  p: Prepared,
  run: ResponseRun,
  deps: ResponsesDeps,
  startedMs: number,
): Promise<Response> {
  const store = deps.store;
  if (!store) throw new InvalidRequestError("background responses need the response store (--response-store)");
  const [stream] = submit(p, run.controller, deps.telemetry);
  run.status = "queued";
  await store.put(record(p, run, deps));
  const queued = run.responseJson();
  let cancelled = false;
  const done = (async () => {
    try {
      run.status = "in_progress";
      await generate(run, stream, undefined, () => cancelled);
    } catch (err) {
      run.status = "failed";
      run.error = { code: "server_error", message: (err as Error).message };
    }
    run.report(deps.telemetry, startedMs);
    await store.put(record(p, run, deps)).catch((err) =>
      deps.telemetry.logger.error("responses.store_failed", { error: err, response_id: run.settings.id })
    );
  })().finally(() => deps.background.delete(run.settings.id));
  deps.background.set(run.settings.id, {
    done,
    cancel: () => {
      cancelled = true;
      run.controller.abort();
    },
  });
  return Response.json(queued);
}

/** GET /v1/responses/{id}. */
export async function retrieveResponse(id: string, deps: ResponsesDeps): Promise<unknown> {
  const stored = await deps.store?.get(id, deps.owner, deps.now());
  if (!stored) throw notFound(id);
  return stored.response;
}

/** DELETE /v1/responses/{id}. */
export async function deleteResponse(id: string, deps: ResponsesDeps): Promise<unknown> {
  const running = deps.background.get(id);
  if (running) {
    running.cancel();
    await running.done; // its last write lands before the delete
  }
  if (!deps.store || !(await deps.store.delete(id, deps.owner))) throw notFound(id);
  return { id, object: "response.deleted", deleted: true };
}

/** POST /v1/responses/{id}/cancel. */
export async function cancelResponse(id: string, deps: ResponsesDeps): Promise<unknown> {
  const stored = await deps.store?.get(id, deps.owner, deps.now());
  if (!stored) throw notFound(id);
  if ((stored.response as { background?: boolean }).background !== true) {
    throw new InvalidRequestError("Only background responses can be cancelled");
  }
  const running = deps.background.get(id);
  if (running) {
    running.cancel();
    await running.done;
    return (await deps.store!.get(id, deps.owner, deps.now()))?.response;
  }
  if (stored.status === "queued" || stored.status === "in_progress") {
    // Its generation is not in this process (a restart ended it): it will never finish, so it is cancelled.
    const response = { ...(stored.response as Record<string, unknown>), status: "cancelled" };
    await deps.store!.put({ ...stored, status: "cancelled", response });
    return response;
  }
  return stored.response;
}

/** GET /v1/responses/{id}/input_items?after&limit&order. */
export async function listInputItems(id: string, query: URLSearchParams, deps: ResponsesDeps): Promise<unknown> {
  const stored = await deps.store?.get(id, deps.owner, deps.now());
  if (!stored) throw notFound(id);
  const limitText = query.get("limit");
  const limit = limitText === null ? 20 : Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
    throw new InvalidRequestError("limit must be an integer from 1 to 100", "limit");
  }
  const order = query.get("order") ?? "desc";
  if (order !== "asc" && order !== "desc") throw new InvalidRequestError('order must be "asc" or "desc"', "order");
  const items = stored.inputItems as InputItemJson[];
  const ordered = order === "asc" ? items : [...items].reverse();
  const after = query.get("after");
  let start = 0;
  if (after !== null) {
    const at = ordered.findIndex((item) => item.id === after);
    if (at < 0) throw new InvalidRequestError(`No input item with id "${after}" in this response`, "after");
    start = at + 1;
  }
  const data = ordered.slice(start, start + limit);
  return {
    object: "list",
    data,
    first_id: data[0]?.id ?? null,
    last_id: data[data.length - 1]?.id ?? null,
    has_more: start + limit < ordered.length,
  };
}
