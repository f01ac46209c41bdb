/** What the endpoints need from the loaded model, and request → engine helpers shared by them. */
import type { SchedulerSettings } from "../config.ts";
import type { EngineApi, EngineRequest, TokenEvent } from "../engine/engine_api.ts";
import type { SamplingParams } from "../engine/sampling.ts";
import { ContextOverflowError, InvalidRequestError, ModelNotFoundError, NotReadyError } from "../errors.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import type { RequestTelemetry } from "./telemetry.ts";

/** A model ready to serve. */
export interface ServingModel {
  readonly modelId: string;
  readonly backend: string;
  readonly engine: EngineApi;
  readonly tokenizer: Tokenizer;
  /** Unix seconds, for /v1/models. */
  readonly createdAt: number;
  /** Stop ids of raw completions (the model's EOS set). */
  readonly completionStopIds: readonly number[];
  readonly demo: boolean;
}

/** What /health reports; main.ts updates it as loading proceeds. */
export interface ServingState {
  /** "draining": SIGTERM arrived; requests in flight finish, new ones get 503 (main.ts sets it). */
  status: "loading" | "ready" | "failed" | "draining";
  modelId: string | undefined;
  backend: string | undefined;
  error?: string;
  model?: ServingModel;
}

/** The model, or the right error: 503 while loading, 404 for another model id. */
export function requireModel(state: ServingState, requested: string | undefined): ServingModel {
  const model = state.model;
  if (!model) throw new NotReadyError(`The model is ${state.status === "failed" ? "unavailable" : "still loading"}`);
  if (requested !== undefined && requested !== model.modelId) {
    throw new ModelNotFoundError(`The model "${requested}" does not exist; this server serves "${model.modelId}"`);
  }
  return model;
}

/** Request fields that map onto sampling. */
export interface SamplingFields {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  logit_bias?: Record<string, number> | null;
  seed?: number | null;
}

/** OpenAI request fields → sampling params. Choice i of n gets seed + i so the choices differ but replay. */
export function samplingParams(
  fields: SamplingFields,
  options: { logprobs: number | undefined; choice: number; vocabSize: number },
): SamplingParams {
  const bias = new Map<number, number>();
  for (const [key, value] of Object.entries(fields.logit_bias ?? {})) {
    const id = Number(key);
    if (id >= options.vocabSize) {
      throw new InvalidRequestError(`logit_bias names token ${id}, outside the vocabulary`, "logit_bias");
    }
    bias.set(id, value);
  }
  return {
    temperature: fields.temperature ?? 1,
    topP: fields.top_p ?? 1,
    topK: fields.top_k ?? 0,
    minP: fields.min_p ?? 0,
    presencePenalty: fields.presence_penalty ?? 0,
    frequencyPenalty: fields.frequency_penalty ?? 0,
    repetitionPenalty: fields.repetition_penalty ?? 1,
    logitBias: bias,
    seed: fields.seed === null || fields.seed === undefined ? undefined : fields.seed + options.choice,
    logprobs: options.logprobs,
  };
}

/** Default completion length: what the profile says, capped by the context left after the prompt. */
export function defaultMaxTokens(scheduler: SchedulerSettings, engine: EngineApi, promptLength: number): number {
  return Math.max(1, Math.min(scheduler.defaultMaxTokens, engine.maxModelLen - promptLength));
}

/**
 * Submits one engine request per choice, each with its own controller (a stop string ends one choice). Validates all
 * first, so a bad request queues nothing; if one is refused (overload), the ones already queued are aborted.
 */
export function submitChoices(
  engine: EngineApi,
  requests: readonly EngineRequest[],
  controllers: readonly AbortController[],
  promptParam: "messages" | "prompt" | "input",
  telemetry?: Pick<RequestTelemetry, "setAttributes">,
): AsyncIterable<TokenEvent>[] {
  // A routing engine's decision (--gpu-mode auto) becomes attributes of the request's span.
  const onRoute = telemetry &&
    ((lane: string, reason: string) =>
      telemetry.setAttributes({ "gptoss.route.lane": lane, "gptoss.route.reason": reason }));
  try {
    for (const r of requests) engine.validate(r);
  } catch (err) {
    // The engine knows token ids, not endpoints: name the field this endpoint's prompt came from.
    if (err instanceof ContextOverflowError) throw new ContextOverflowError(err.message, promptParam);
    if (err instanceof InvalidRequestError && err.param === "prompt") {
      throw new InvalidRequestError(err.message, promptParam);
    }
    throw err;
  }
  try {
    return requests.map((r, i) => engine.submit(onRoute ? { ...r, onRoute } : r, controllers[i].signal));
  } catch (err) {
    for (const c of controllers) c.abort();
    throw err;
  }
}

/** Aborts `to` when `from` aborts, including when it already has (an abort event never comes again). */
export function linkAbort(from: AbortSignal, to: AbortController): void {
  if (from.aborted) to.abort();
  else from.addEventListener("abort", () => to.abort(), { once: true });
}

/** A unique id with a prefix (chatcmpl-, cmpl-, req-). */
export function newId(prefix: string): string {
  return prefix + crypto.randomUUID().replaceAll("-", "");
}
