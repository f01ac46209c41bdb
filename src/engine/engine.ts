/**
 * The engine: token ids in, token events out. Continuous batching: every step the scheduler plans running decodes
 * and prefill chunks; new requests join between steps; finished or cancelled ones leave at once and free their
 * KV cache. No HTTP here, no device calls beyond the model's forward pass.
 */
import type { KvCache } from "../backends/backend.ts";
import { ContextOverflowError, InvalidRequestError, OverloadedError } from "../errors.ts";
import { forward, kvCacheSpec, type LogitsWanted, type Model, type StepSequence } from "../model/gpt_oss.ts";
import type { Logger } from "../obs/logger.ts";
import { logSoftmax, Sampler, type SamplingParams, topIndices } from "./sampling.ts";
import { planStep, type SchedulerLimits } from "./scheduler.ts";

/** A generation request. */
export interface EngineRequest {
  readonly id: string;
  readonly promptIds: readonly number[];
  readonly maxTokens: number;
  readonly sampling: SamplingParams;
  /** Sampling stops after one of these (it is still reported). */
  readonly stopTokenIds: ReadonlySet<number>;
  /** Ignore stop tokens (vLLM's ignore_eos): generate exactly maxTokens. */
  readonly ignoreEos?: boolean;
  /** Forces tokens at chosen points (tool_choice "required" / named); undefined = sample freely. */
  readonly guide?: { next(generated: readonly number[]): number | undefined };
  /** Also report the logprobs of prompt tokens 1..n−1 (completions `echo` with `logprobs`). */
  readonly promptLogprobs?: number;
}

/** Why a request ended. */
export type FinishReason = "stop" | "length" | "abort";

/** Events of one request. */
export type TokenEvent =
  | {
    readonly type: "token";
    readonly tokenId: number;
    readonly logprob?: number;
    readonly topLogprobs?: ReadonlyArray<{ tokenId: number; logprob: number }>;
  }
  | {
    readonly type: "prompt_logprobs";
    /** One entry per prompt token; the first is null (nothing predicts it). */
    readonly logprobs: ReadonlyArray<number | null>;
    readonly topLogprobs: ReadonlyArray<ReadonlyArray<{ tokenId: number; logprob: number }> | null>;
  }
  | {
    readonly type: "done";
    readonly finishReason: FinishReason;
    readonly promptTokens: number;
    readonly completionTokens: number;
    readonly cachedTokens: number;
    /** Time spent waiting before the first step that included this request. */
    readonly queueMs: number;
  };

/** Engine settings. */
export interface EngineOptions {
  readonly limits: SchedulerLimits;
  readonly maxQueuedRequests: number;
  readonly maxQueuedTokens: number;
  /** Longest prompt + completion. */
  readonly maxModelLen: number;
  readonly logger: Logger;
}

/** Counters and gauges for /stats. */
export interface EngineStats {
  running: number;
  waiting: number;
  steps: number;
  promptTokens: number;
  generatedTokens: number;
  finished: Record<FinishReason, number>;
  rejected: number;
  lastBatchSize: number;
  maxBatchSize: number;
  /** KV caches currently held by requests. */
  kvCachesHeld: number;
  /** Output tokens per second over the last 10 s. */
  tokensPerSecond: number;
}

/** An unbounded single-consumer queue of events. */
class EventQueue<T> {
  #items: T[] = [];
  #waiter: (() => void) | undefined;
  #closed = false;
  push(item: T): void {
    this.#items.push(item);
    this.#waiter?.();
  }
  close(): void {
    this.#closed = true;
    this.#waiter?.();
  }
  async *drain(): AsyncGenerator<T> {
    while (true) {
      while (this.#items.length > 0) yield this.#items.shift()!;
      if (this.#closed) return;
      await new Promise<void>((resolve) => (this.#waiter = resolve));
      this.#waiter = undefined;
    }
  }
}

interface Sequence {
  readonly request: EngineRequest;
  readonly tokens: number[];
  readonly promptLength: number;
  numComputed: number;
  kv: KvCache | undefined;
  readonly sampler: Sampler;
  readonly events: EventQueue<TokenEvent>;
  readonly signal: AbortSignal | undefined;
  readonly submittedAt: number;
  queueMs: number | undefined;
  promptLogprobs: { logprobs: (number | null)[]; top: (ReturnType<typeof topLogprobsOf> | null)[] } | undefined;
  finished: boolean;
}

function topLogprobsOf(logprobs: Float64Array, count: number) {
  return topIndices(logprobs, count).map((id) => ({ tokenId: id, logprob: logprobs[id] }));
}

/** The engine. One per model. */
export class Engine {
  readonly #model: Model;
  readonly #options: EngineOptions;
  readonly #waiting: Sequence[] = [];
  readonly #running: Sequence[] = [];
  #loop: Promise<void> | undefined;
  #draining = false;
  readonly #recentTokens: { at: number; count: number }[] = [];
  readonly stats: EngineStats = {
    running: 0,
    waiting: 0,
    steps: 0,
    promptTokens: 0,
    generatedTokens: 0,
    finished: { stop: 0, length: 0, abort: 0 },
    rejected: 0,
    lastBatchSize: 0,
    maxBatchSize: 0,
    kvCachesHeld: 0,
    tokensPerSecond: 0,
  };

  constructor(model: Model, options: EngineOptions) {
    this.#model = model;
    this.#options = options;
  }

  /** The model's context length as served. */
  get maxModelLen(): number {
    return this.#options.maxModelLen;
  }

  /** The vocabulary size (for validating token ids). */
  get vocabSize(): number {
    return this.#model.config.vocabSize;
  }

  /** Checks a request without queueing it; throws the error submit() would. */
  validate(request: EngineRequest): void {
    const total = request.promptIds.length + request.maxTokens;
    if (request.promptIds.length === 0) throw new InvalidRequestError("The prompt is empty", "prompt");
    for (const id of request.promptIds) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new InvalidRequestError(`Token id ${id} is outside the vocabulary of ${this.vocabSize}`, "prompt");
      }
    }
    if (total > this.#options.maxModelLen) {
      throw new ContextOverflowError(
        `This model's maximum context length is ${this.#options.maxModelLen} tokens, but the request needs ` +
          `${total} (${request.promptIds.length} in the prompt, ${request.maxTokens} to generate)`,
      );
    }
  }

  /** Queues a request; events arrive until "done". Aborting `signal` ends it with finish reason "abort". */
  submit(request: EngineRequest, signal?: AbortSignal): AsyncIterable<TokenEvent> {
    this.validate(request);
    const queuedTokens = this.#waiting.reduce((s, q) => s + q.promptLength + q.request.maxTokens, 0);
    if (
      this.#waiting.length >= this.#options.maxQueuedRequests ||
      queuedTokens + request.promptIds.length + request.maxTokens > this.#options.maxQueuedTokens
    ) {
      this.stats.rejected++;
      throw new OverloadedError(
        `The server is at capacity: ${this.#waiting.length} requests are waiting`,
        this.#retryAfterSeconds(),
      );
    }
    const sequence: Sequence = {
      request,
      tokens: [...request.promptIds],
      promptLength: request.promptIds.length,
      numComputed: 0,
      kv: undefined,
      sampler: new Sampler(request.sampling, { vocabSize: this.vocabSize, promptIds: request.promptIds }),
      events: new EventQueue(),
      signal,
      submittedAt: performance.now(),
      queueMs: undefined,
      promptLogprobs: request.promptLogprobs !== undefined ? { logprobs: [null], top: [null] } : undefined,
      finished: false,
    };
    this.#waiting.push(sequence);
    this.stats.promptTokens += request.promptIds.length;
    signal?.addEventListener("abort", () => this.#wake(), { once: true });
    this.#wake();
    return sequence.events.drain();
  }

  /** Estimated seconds until queued work drains, from the recent output rate (at least 1). */
  #retryAfterSeconds(): number {
    const rate = Math.max(this.stats.tokensPerSecond, 1);
    const queued = this.#waiting.reduce((s, q) => s + q.request.maxTokens, 0);
    return Math.max(1, Math.ceil(queued / rate));
  }

  #wake(): void {
    if (!this.#loop) {
      this.#loop = this.#run().finally(() => (this.#loop = undefined));
    }
  }

  /** Resolves once no request is running or waiting. */
  async idle(): Promise<void> {
    while (this.#loop) await this.#loop;
  }

  /** Stops accepting work (used on shutdown); running requests continue. */
  drain(): void {
    this.#draining = true;
  }

  get draining(): boolean {
    return this.#draining;
  }

  async #run(): Promise<void> {
    while (this.#waiting.length > 0 || this.#running.length > 0) {
      this.#dropCancelled();
      if (this.#waiting.length === 0 && this.#running.length === 0) break;
      try {
        await this.#step();
      } catch (err) {
        // A failed step fails the requests in it, never the engine.
        this.#options.logger.error("engine.step_failed", { error: err });
        for (const seq of [...this.#running]) this.#finish(seq, "abort");
      }
      // Let I/O (new requests, client disconnects, /health) in between steps.
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    this.#updateGauges();
  }

  #dropCancelled(): void {
    for (const list of [this.#waiting, this.#running]) {
      for (const seq of [...list]) if (seq.signal?.aborted) this.#finish(seq, "abort");
    }
  }

  async #step(): Promise<void> {
    const plan = planStep(
      this.#running.map((s) => ({ id: s.request.id, numTokens: s.tokens.length, numComputed: s.numComputed })),
      this.#waiting.map((s) => ({ id: s.request.id, numTokens: s.tokens.length, numComputed: s.numComputed })),
      this.#options.limits,
    );
    const now = performance.now();
    for (const id of plan.admitted) {
      const index = this.#waiting.findIndex((s) => s.request.id === id);
      const [seq] = this.#waiting.splice(index, 1);
      seq.kv = this.#model.backend.createKvCache(kvCacheSpec(this.#model.config, this.#options.maxModelLen));
      seq.queueMs = now - seq.submittedAt;
      this.#running.push(seq);
    }
    if (plan.chunks.length === 0) return;
    const byId = new Map(this.#running.map((s) => [s.request.id, s]));
    const stepSequences: StepSequence[] = [];
    const planned: { seq: Sequence; numTokens: number; samples: boolean; logits: LogitsWanted }[] = [];
    for (const chunk of plan.chunks) {
      const seq = byId.get(chunk.id)!;
      const inPrompt = seq.numComputed < seq.promptLength;
      const logits: LogitsWanted = seq.promptLogprobs && inPrompt ? "all" : chunk.samples ? "last" : "none";
      stepSequences.push({
        kv: seq.kv!,
        tokenIds: seq.tokens.slice(seq.numComputed, seq.numComputed + chunk.numTokens),
        logits,
      });
      planned.push({ seq, numTokens: chunk.numTokens, samples: chunk.samples, logits });
    }
    const logits = await forward(this.#model, stepSequences);
    this.stats.steps++;
    this.stats.lastBatchSize = planned.length;
    this.stats.maxBatchSize = Math.max(this.stats.maxBatchSize, planned.length);
    const vocab = this.#model.config.vocabSize;
    let generated = 0;
    planned.forEach(({ seq, numTokens, samples, logits: wanted }, i) => {
      const rows = logits[i];
      if (wanted === "all" && seq.promptLogprobs) this.#recordPromptLogprobs(seq, rows, numTokens);
      seq.numComputed += numTokens;
      if (!samples || seq.finished) return;
      const last = rows.subarray(rows.length - vocab);
      const forced = seq.request.guide?.next(seq.tokens.slice(seq.promptLength));
      const sampled = forced !== undefined ? seq.sampler.force(forced, last) : seq.sampler.sample(last);
      seq.tokens.push(sampled.tokenId);
      generated++;
      if (seq.promptLogprobs && seq.numComputed === seq.promptLength) {
        seq.events.push({
          type: "prompt_logprobs",
          logprobs: seq.promptLogprobs.logprobs,
          topLogprobs: seq.promptLogprobs.top,
        });
        seq.promptLogprobs = undefined;
      }
      seq.events.push({ type: "token", ...sampled });
      const completion = seq.tokens.length - seq.promptLength;
      if (!seq.request.ignoreEos && seq.request.stopTokenIds.has(sampled.tokenId)) this.#finish(seq, "stop");
      else if (completion >= seq.request.maxTokens || seq.tokens.length >= this.#options.maxModelLen) {
        this.#finish(seq, "length");
      }
    });
    this.stats.generatedTokens += generated;
    this.#recentTokens.push({ at: performance.now(), count: generated });
    this.#updateGauges();
  }

  /** Logprobs of prompt tokens: row r predicts token numComputed + r + 1. */
  #recordPromptLogprobs(seq: Sequence, rows: Float32Array, numTokens: number): void {
    const vocab = this.#model.config.vocabSize;
    const record = seq.promptLogprobs!;
    for (let r = 0; r < numTokens; r++) {
      const target = seq.numComputed + r + 1;
      if (target >= seq.promptLength) break;
      const logprobs = logSoftmax(rows.subarray(r * vocab, (r + 1) * vocab));
      record.logprobs.push(logprobs[seq.tokens[target]]);
      record.top.push(seq.request.promptLogprobs! > 0 ? topLogprobsOf(logprobs, seq.request.promptLogprobs!) : []);
    }
  }

  #finish(seq: Sequence, reason: FinishReason): void {
    if (seq.finished) return;
    seq.finished = true;
    for (const list of [this.#waiting, this.#running]) {
      const index = list.indexOf(seq);
      if (index >= 0) list.splice(index, 1);
    }
    if (seq.kv) this.#model.backend.releaseKvCache(seq.kv);
    seq.kv = undefined;
    this.stats.finished[reason]++;
    seq.events.push({
      type: "done",
      finishReason: reason,
      promptTokens: seq.promptLength,
      completionTokens: seq.tokens.length - seq.promptLength,
      cachedTokens: 0,
      queueMs: seq.queueMs ?? performance.now() - seq.submittedAt,
    });
    seq.events.close();
    this.#updateGauges();
  }

  #updateGauges(): void {
    this.stats.running = this.#running.length;
    this.stats.waiting = this.#waiting.length;
    this.stats.kvCachesHeld = this.#running.filter((s) => s.kv !== undefined).length;
    const horizon = performance.now() - 10_000;
    while (this.#recentTokens.length > 0 && this.#recentTokens[0].at < horizon) this.#recentTokens.shift();
    const count = this.#recentTokens.reduce((s, r) => s + r.count, 0);
    const span = this.#recentTokens.length > 0 ? Math.max(1, performance.now() - this.#recentTokens[0].at) : 1;
    this.stats.tokensPerSecond = this.#recentTokens.length > 1 ? (count * 1000) / span : 0;
  }
}
