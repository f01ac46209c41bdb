/**
 * The engine: token ids in, token events out. Continuous batching over a paged KV cache: every step admits waiting
 * requests (prefix-cache hits skip their cached blocks), the scheduler plans running decodes and prefill chunks,
 * blocks are allocated (preempting the newest request by recompute when they run out), the model runs one step,
 * and finished or cancelled requests leave at once and free their blocks. No HTTP here.
 */
import { pushAll } from "../formats/json_depth.ts";
import type { KvPool } from "../backends/backend.ts";
import { ContextOverflowError, InvalidRequestError, OverloadedError } from "../errors.ts";
import { createKvPoolFor, runStep } from "../model/parallel.ts";
import { kvPoolSpec, type LogitsWanted, type Model, type StepResult, type StepSequence } from "../model/gpt_oss.ts";
import type { Logger } from "../obs/logger.ts";
import {
  emptyEngineStats,
  type EngineApi,
  type EngineMemory,
  type EngineRequest,
  type EngineSnapshot,
  type EngineStats,
  type FinishReason,
  type PressureLevel,
  type TokenEvent,
} from "./engine_api.ts";
import { KvBlockManager, type SequenceBlocks } from "./kv_blocks.ts";
import { sizeKvCache } from "./kv_sizing.ts";
import { logSoftmax, reservedIdRange, Sampler, topIndices } from "./sampling.ts";
import { planStep, type SchedulerLimits } from "./scheduler.ts";

export type * from "./engine_api.ts";

/** Engine settings. */
export interface EngineOptions {
  readonly limits: SchedulerLimits;
  readonly maxQueuedRequests: number;
  readonly maxQueuedTokens: number;
  /** Longest prompt + completion. */
  readonly maxModelLen: number;
  /** KV cache budget in bytes (at the backend's bytes per element). */
  readonly kvCacheBytes: number;
  /** Positions per KV block (default 16). */
  readonly blockSize?: number;
  readonly logger: Logger;
  /** Milliseconds (default performance.now); tests pass a fake clock. */
  readonly clock?: () => number;
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
  /** Generation limit: the request's max_tokens, capped under high memory pressure. */
  maxTokens: number;
  numComputed: number;
  readonly blocks: SequenceBlocks;
  cachedTokens: number;
  readonly sampler: Sampler;
  readonly events: EventQueue<TokenEvent>;
  readonly signal: AbortSignal | undefined;
  readonly submittedAt: number;
  queueMs: number | undefined;
  promptLogprobs: { logprobs: (number | null)[]; top: (ReturnType<typeof topLogprobsOf> | null)[] } | undefined;
  finished: boolean;
}

/** One sequence's part of a planned step. */
interface PlannedRun {
  readonly seq: Sequence;
  readonly numTokens: number;
  readonly samples: boolean;
  readonly logits: LogitsWanted;
}

function topLogprobsOf(logprobs: Float64Array, count: number) {
  return topIndices(logprobs, count).map((id) => ({ tokenId: id, logprob: logprobs[id] }));
}

function bump(counter: Record<string, number>, key: string): void {
  counter[key] = (counter[key] ?? 0) + 1;
}

/** Thresholds on the share of KV blocks held by requests. */
const PRESSURE_THRESHOLDS: ReadonlyArray<[PressureLevel, number]> = [["critical", 0.97], ["high", 0.9], [
  "moderate",
  0.75,
]];

/** Retry-After: measured over this window of finished requests, clamped to [1, RETRY_AFTER_MAX_S] seconds. */
const DRAIN_WINDOW_MS = 30_000;
const RETRY_AFTER_MAX_S = 60;
/** When fewer than two requests finished in the window: a short wait rather than a guess from nothing. */
const RETRY_AFTER_UNMEASURED_S = 5;

/** The engine. One per model. */
export class Engine implements EngineApi {
  readonly #model: Model;
  readonly #options: EngineOptions;
  readonly #pool: KvPool;
  readonly #blocks: KvBlockManager;
  readonly #waiting: Sequence[] = [];
  readonly #running: Sequence[] = [];
  #loop: Promise<void> | undefined;
  readonly #recentTokens: { at: number; count: number }[] = [];
  /** When requests finished over the last {@link DRAIN_WINDOW_MS} (the measured drain rate for Retry-After). */
  readonly #finishTimes: number[] = [];
  readonly #now: () => number;
  readonly stats: EngineStats = emptyEngineStats();

  constructor(model: Model, options: EngineOptions) {
    this.#model = model;
    this.#options = options;
    this.#now = options.clock ?? (() => performance.now());
    const sizing = sizeKvCache(model.config, {
      kvCacheBytes: options.kvCacheBytes,
      blockSize: options.blockSize ?? 16,
      bytesPerElement: model.backend.kvBytesPerElement,
      maxNumSeqs: options.limits.maxNumSeqs,
      prefillChunkSize: options.limits.prefillChunkSize,
      maxModelLen: options.maxModelLen,
      maxKvLayerBytes: model.backend.limits?.maxKvLayerBytes,
    });
    this.#blocks = new KvBlockManager(sizing);
    this.#pool = createKvPoolFor(model, kvPoolSpec(model.config, sizing));
  }

  /** The model's context length as served. */
  get maxModelLen(): number {
    return this.#options.maxModelLen;
  }

  /** The vocabulary size (for validating token ids). */
  get vocabSize(): number {
    return this.#model.config.vocabSize;
  }

  /** KV cache state. */
  memory(): EngineMemory {
    const usage = this.#blocks.usage(), sliding = this.#blocks.slidingUsage();
    const bytesPerBlock = this.#pool.sizeBytes / Math.max(1, usage.total + sliding.total);
    const prefix = this.#blocks.stats;
    return {
      blockSize: this.#blocks.blockSize,
      blocks: usage,
      slidingBlocks: sliding,
      bytesTotal: this.#pool.sizeBytes,
      bytesUsed: Math.round(bytesPerBlock * (usage.used + sliding.used)),
      pressure: this.stats.pressure,
      pressureActions: { ...this.stats.pressureActions },
      prefixCache: {
        ...prefix,
        missBlocks: { ...prefix.missBlocks },
        hitRate: prefix.queriedTokens > 0 ? prefix.hitTokens / prefix.queriedTokens : 0,
      },
    };
  }

  /** A copy of the counters and the cache state. */
  snapshot(): EngineSnapshot {
    const stats = this.stats;
    return {
      stats: {
        ...stats,
        finished: { ...stats.finished },
        admission: { ...stats.admission },
        pressureActions: { ...stats.pressureActions },
      },
      memory: this.memory(),
    };
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
    const blocks = this.#blocks.blocksFor(total);
    if (blocks > this.#blocks.usage().total) {
      bump(this.stats.admission, "rejected:never_fits");
      this.#options.logger.info("admission.reject", { request_id: request.id, reason: "never_fits", tokens: total });
      throw new ContextOverflowError(
        `The request needs ${total} tokens of KV cache (${blocks} blocks) but the cache holds ` +
          `${this.#blocks.usage().total * this.#blocks.blockSize} tokens; lower max_tokens or the prompt`,
      );
    }
  }

  /** Queues a request; events arrive until "done". Aborting `signal` ends it with finish reason "abort". */
  submit(request: EngineRequest, signal?: AbortSignal): AsyncIterable<TokenEvent> {
    this.validate(request);
    const queuedTokens = this.#waiting.reduce((s, q) => s + q.promptLength + q.maxTokens, 0);
    if (this.#waiting.length >= this.#options.maxQueuedRequests) {
      bump(this.stats.admission, "rejected:queue_full");
      this.#options.logger.warn("admission.reject", {
        request_id: request.id,
        reason: "queue_full",
        waiting: this.#waiting.length,
      });
      throw new OverloadedError(
        `The server is at capacity: ${this.#waiting.length} requests are waiting`,
        this.#retryAfterSeconds(),
      );
    }
    if (queuedTokens + request.promptIds.length + request.maxTokens > this.#options.maxQueuedTokens) {
      bump(this.stats.admission, "rejected:queued_tokens");
      this.#options.logger.warn("admission.reject", {
        request_id: request.id,
        reason: "queued_tokens",
        queued_tokens: queuedTokens,
      });
      throw new OverloadedError(
        `The server is at capacity: ${queuedTokens} tokens are queued`,
        this.#retryAfterSeconds(),
      );
    }
    bump(this.stats.admission, "queued:accepted");
    const sequence: Sequence = {
      request,
      tokens: [...request.promptIds],
      promptLength: request.promptIds.length,
      maxTokens: request.maxTokens,
      numComputed: 0,
      blocks: { full: [], sliding: [], keys: [] },
      cachedTokens: 0,
      sampler: new Sampler(request.sampling, { vocabSize: this.vocabSize, promptIds: request.promptIds }),
      events: new EventQueue(),
      signal,
      submittedAt: this.#now(),
      queueMs: undefined,
      promptLogprobs: request.promptLogprobs !== undefined ? { logprobs: [null], top: [null] } : undefined,
      finished: false,
    };
    this.#waiting.push(sequence);
    this.stats.promptTokens += request.promptIds.length;
    this.#updateGauges();
    signal?.addEventListener("abort", () => this.#wake(), { once: true });
    this.#wake();
    return sequence.events.drain();
  }

  /**
   * Retry-After for a refused request: the requests ahead of it (waiting, plus one running to make room) divided by
   * the rate at which requests finished over the last 30 s; 5 s before two have finished; clamped to 1..60 s.
   */
  #retryAfterSeconds(): number {
    const now = this.#now();
    while (this.#finishTimes.length > 0 && this.#finishTimes[0] < now - DRAIN_WINDOW_MS) this.#finishTimes.shift();
    // This request is admitted once every waiting one ahead of it and one more running one have finished.
    const ahead = this.#waiting.length + 1;
    let seconds = RETRY_AFTER_UNMEASURED_S;
    if (this.#finishTimes.length >= 2) {
      const spanS = Math.max(now - this.#finishTimes[0], 1) / 1000;
      seconds = ahead / (this.#finishTimes.length / spanS);
    }
    return Math.min(RETRY_AFTER_MAX_S, Math.max(1, Math.ceil(seconds)));
  }

  #wake(): void {
    if (!this.#loop) this.#loop = this.#run().finally(() => (this.#loop = undefined));
  }

  /** Resolves once no request is running or waiting. */
  async idle(): Promise<void> {
    while (this.#loop) await this.#loop;
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

  #pressure(): PressureLevel {
    const usage = this.#blocks.usage();
    const share = usage.used / Math.max(1, usage.total);
    for (const [level, threshold] of PRESSURE_THRESHOLDS) if (share >= threshold) return level;
    return "none";
  }

  /** Current limits after memory-pressure degradation. */
  #limits(pressure: PressureLevel): SchedulerLimits {
    const base = this.#options.limits;
    if (pressure === "none") return base;
    bump(this.stats.pressureActions, "smaller_chunks");
    const chunked = { ...base, prefillChunkSize: Math.max(1, Math.floor(base.prefillChunkSize / 2)) };
    if (pressure === "moderate") return chunked;
    bump(this.stats.pressureActions, "smaller_batches");
    return { ...chunked, maxNumSeqs: Math.max(1, Math.floor(base.maxNumSeqs / 2)) };
  }

  /** Moves waiting requests into the running set while there is room (FIFO; the first that does not fit waits). */
  #admit(limits: SchedulerLimits, pressure: PressureLevel): void {
    while (this.#waiting.length > 0 && this.#running.length < limits.maxNumSeqs) {
      if (pressure === "critical") {
        bump(this.stats.pressureActions, "admission_stopped");
        bump(this.stats.admission, "queued:memory_pressure");
        return;
      }
      const seq = this.#waiting[0];
      const { blocks, cachedTokens } = this.#blocks.startSequence(seq.tokens);
      const firstChunk = Math.min(seq.tokens.length - cachedTokens, limits.prefillChunkSize);
      const needFull = this.#blocks.blocksFor(cachedTokens + firstChunk) - blocks.full.length;
      const usage = this.#blocks.usage();
      if (needFull > usage.free + usage.cached) {
        this.#blocks.free(blocks);
        bump(this.stats.admission, "queued:no_free_blocks");
        return;
      }
      this.#waiting.shift();
      pushAll(seq.blocks.full, blocks.full);
      pushAll(seq.blocks.sliding, blocks.sliding);
      pushAll(seq.blocks.keys, blocks.keys);
      // A preempted sequence keeps what it reported: its cached tokens count only the first time.
      if (seq.queueMs === undefined) seq.cachedTokens = cachedTokens;
      seq.numComputed = cachedTokens;
      if (seq.queueMs === undefined) {
        seq.queueMs = this.#now() - seq.submittedAt;
        if (pressure === "high") {
          // Cap generation so the request cannot outgrow the free cache (finish_reason "length" if it hits the cap).
          const freeTokens = (usage.free + usage.cached) * this.#blocks.blockSize;
          const cap = Math.max(1, Math.floor(freeTokens / 2) - seq.promptLength);
          if (cap < seq.maxTokens) {
            seq.maxTokens = cap;
            bump(this.stats.pressureActions, "capped_max_tokens");
          }
        }
      }
      this.#running.push(seq);
      bump(this.stats.admission, cachedTokens > 0 ? "admitted:prefix_hit" : "admitted:cold");
    }
  }

  /** Preempts the newest running sequence other than `keep`: frees its blocks, requeues it for recompute. */
  #preemptOne(keep: Sequence): boolean {
    for (let i = this.#running.length - 1; i >= 0; i--) {
      const victim = this.#running[i];
      if (victim === keep) continue;
      this.#running.splice(i, 1);
      this.#blocks.free(victim.blocks);
      victim.numComputed = 0;
      this.#waiting.unshift(victim);
      this.stats.preemptions++;
      this.#options.logger.debug("engine.preempt", { request_id: victim.request.id, tokens: victim.tokens.length });
      return true;
    }
    return false;
  }

  /** One step: admit, allocate blocks for the planned chunks, build the batch, run it, apply the results. */
  async #step(): Promise<void> {
    const pressure = this.#pressure();
    this.stats.pressure = pressure;
    const limits = this.#limits(pressure);
    this.#admit(limits, pressure);
    const runnable = this.#allocate(limits);
    if (runnable.length === 0) return;
    const batch = this.#build(runnable);
    // Guides that need time (a grammar's next mask, computed in a worker) get ready while the step runs.
    const preparing = runnable.flatMap(({ seq, samples }) =>
      samples && !seq.finished && seq.request.guide?.prepare
        ? [seq.request.guide.prepare(seq.tokens.slice(seq.promptLength))]
        : []
    );
    const step = await runStep(this.#model, this.#pool, batch, {
      masked: reservedIdRange(this.#model.config.vocabSize),
    });
    await Promise.all(preparing);
    this.stats.steps++;
    this.stats.lastBatchSize = runnable.length;
    this.stats.maxBatchSize = Math.max(this.stats.maxBatchSize, runnable.length);
    this.#apply(runnable, step);
  }

  /** Plans the step and makes sure each chunk has its blocks (preempting the newest request when they run out). */
  #allocate(limits: SchedulerLimits): PlannedRun[] {
    const plan = planStep(
      this.#running.map((s) => ({ id: s.request.id, numTokens: s.tokens.length, numComputed: s.numComputed })),
      limits,
    );
    const byId = new Map(this.#running.map((s) => [s.request.id, s]));
    const planned: PlannedRun[] = [];
    for (const chunk of plan.chunks) {
      const seq = byId.get(chunk.id)!;
      if (!this.#running.includes(seq)) continue; // preempted for an earlier chunk of this step
      while (!this.#blocks.ensure(seq.blocks, seq.numComputed + chunk.numTokens, seq.numComputed)) {
        if (!this.#preemptOne(seq)) break;
      }
      if (!this.#blocks.ensure(seq.blocks, seq.numComputed + chunk.numTokens, seq.numComputed)) {
        if (this.#running.length === 1) {
          // Alone and still out of blocks: it can never finish here.
          this.#options.logger.warn("engine.kv_exhausted", { request_id: seq.request.id });
          this.#finish(seq, "length");
        }
        continue;
      }
      const inPrompt = seq.numComputed < seq.promptLength;
      const logits: LogitsWanted = seq.promptLogprobs && inPrompt ? "all" : chunk.samples ? "last" : "none";
      planned.push({ seq, numTokens: chunk.numTokens, samples: chunk.samples, logits });
    }
    // A sequence preempted after its chunk was planned must not run.
    return planned.filter((p) => this.#running.includes(p.seq));
  }

  /**
   * The model's view of the step. A row is drawn on the device when the backend samples there and the row needs
   * no pre-pass and no guide; its uniform comes from the request's generator either way, so the tokens are the same.
   */
  #build(runnable: readonly PlannedRun[]): StepSequence[] {
    const backend = this.#model.backend;
    const device = backend.samplesOnDevice === true && backend.ops.sample !== undefined && !this.#model.parallel;
    return runnable.map(({ seq, numTokens, samples, logits }) => {
      const onDevice = device && samples && logits === "last" && !seq.request.guide && !seq.finished &&
        !seq.sampler.needsPrepass;
      return {
        tokenIds: seq.tokens.slice(seq.numComputed, seq.numComputed + numTokens),
        startPosition: seq.numComputed,
        fullBlocks: Int32Array.from(seq.blocks.full),
        slidingBlocks: Int32Array.from(seq.blocks.sliding),
        logits,
        sample: onDevice ? seq.sampler.nextDraw() : undefined,
        keepLogits: onDevice && seq.sampler.wantsLogprobs,
      };
    });
  }

  /** Records prompt logprobs, advances the caches, takes each sampled token and applies the stop rules. */
  #apply(runnable: readonly PlannedRun[], step: StepResult): void {
    const vocab = this.#model.config.vocabSize;
    let generated = 0;
    runnable.forEach(({ seq, numTokens, samples, logits: wanted }, i) => {
      const rows = step.logits[i];
      if (wanted === "all" && seq.promptLogprobs) this.#recordPromptLogprobs(seq, rows, numTokens);
      seq.numComputed += numTokens;
      this.#blocks.advance(seq.blocks, seq.tokens, seq.numComputed);
      if (!samples || seq.finished) return;
      const last = rows.length > 0 ? rows.subarray(rows.length - vocab) : undefined;
      const forced = seq.request.guide?.next(seq.tokens.slice(seq.promptLength));
      const sampled = step.sampled[i] >= 0
        ? seq.sampler.acceptDeviceSample(step.sampled[i], last)
        : typeof forced === "number"
        ? seq.sampler.force(forced, last!)
        : seq.sampler.sample(last!, forced === undefined ? undefined : "mask" in forced ? forced.mask : forced.allowed);
      seq.tokens.push(sampled.tokenId);
      generated++;
      if (seq.promptLogprobs && seq.numComputed >= seq.promptLength) {
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
      else if (completion >= seq.maxTokens || seq.tokens.length >= this.#options.maxModelLen) {
        this.#finish(seq, "length");
      }
    });
    this.stats.generatedTokens += generated;
    this.#recentTokens.push({ at: this.#now(), count: generated });
    this.#updateGauges();
  }

  /** Logprobs of prompt tokens: row r predicts token numComputed + r + 1. */
  #recordPromptLogprobs(seq: Sequence, rows: Float32Array, numTokens: number): void {
    const vocab = this.#model.config.vocabSize;
    const record = seq.promptLogprobs!;
    for (let r = 0; r < numTokens; r++) {
      const target = seq.numComputed + r + 1;
      if (target >= seq.promptLength) break;
      if (target < record.logprobs.length) continue; // recomputed after a preemption: already recorded
      const logprobs = logSoftmax(rows.subarray(r * vocab, (r + 1) * vocab));
      record.logprobs.push(logprobs[seq.tokens[target]]);
      record.top.push(seq.request.promptLogprobs! > 0 ? topLogprobsOf(logprobs, seq.request.promptLogprobs!) : []);
    }
  }

  #finish(seq: Sequence, reason: FinishReason): void {
    if (seq.finished) return;
    seq.finished = true;
    seq.request.guide?.dispose?.(); // a grammar matcher's memory is WebAssembly's: freed by hand
    for (const list of [this.#waiting, this.#running]) {
      const index = list.indexOf(seq);
      if (index >= 0) list.splice(index, 1);
    }
    this.#blocks.free(seq.blocks);
    this.stats.finished[reason]++;
    const now = this.#now();
    this.#finishTimes.push(now);
    while (this.#finishTimes[0] < now - DRAIN_WINDOW_MS) this.#finishTimes.shift();
    seq.events.push({
      type: "done",
      finishReason: reason,
      promptTokens: seq.promptLength,
      completionTokens: seq.tokens.length - seq.promptLength,
      cachedTokens: seq.cachedTokens,
      queueMs: seq.queueMs ?? this.#now() - seq.submittedAt,
    });
    seq.events.close();
    this.#updateGauges();
  }

  #updateGauges(): void {
    this.stats.running = this.#running.length;
    this.stats.waiting = this.#waiting.length;
    this.stats.kvCachesHeld = this.#running.filter((s) => s.blocks.full.length > 0).length;
    const horizon = this.#now() - 10_000;
    while (this.#recentTokens.length > 0 && this.#recentTokens[0].at < horizon) this.#recentTokens.shift();
    const count = this.#recentTokens.reduce((s, r) => s + r.count, 0);
    const span = this.#recentTokens.length > 0 ? Math.max(1, this.#now() - this.#recentTokens[0].at) : 1;
    this.stats.tokensPerSecond = this.#recentTokens.length > 1 ? (count * 1000) / span : 0;
  }
}
