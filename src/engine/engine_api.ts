/**
 * What the API needs from an engine, as data: the request and event types, and {@link EngineApi} (submit, validate,
 * snapshot). The API depends on this interface only, so its tests can run in-process against a fake engine.
 */
import type { TokenGuide } from "../harmony/tool_guide.ts";
import type { PrefixCacheStats } from "./kv_blocks.ts";
import type { SamplingParams } from "./sampling.ts";

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
  readonly guide?: TokenGuide;
  /** Also report the logprobs of prompt tokens 1..n−1 (completions `echo` with `logprobs`). */
  readonly promptLogprobs?: number;
  /** Told by a routing engine where the request went and why (the API puts it on the request's span). */
  readonly onRoute?: (lane: string, reason: string) => void;
}

/** Why a request ended. */
export type FinishReason = "stop" | "length" | "abort";

/** One alternative token with its logprob. */
export interface TokenLogprob {
  readonly tokenId: number;
  readonly logprob: number;
}

/** Events of one request. */
export type TokenEvent =
  | {
    readonly type: "token";
    readonly tokenId: number;
    readonly logprob?: number;
    readonly topLogprobs?: ReadonlyArray<TokenLogprob>;
  }
  | {
    readonly type: "prompt_logprobs";
    /** One entry per prompt token; the first is null (nothing predicts it). */
    readonly logprobs: ReadonlyArray<number | null>;
    readonly topLogprobs: ReadonlyArray<ReadonlyArray<TokenLogprob> | null>;
  }
  | {
    readonly type: "done";
    readonly finishReason: FinishReason;
    readonly promptTokens: number;
    readonly completionTokens: number;
    /** Prompt tokens served from the prefix cache. */
    readonly cachedTokens: number;
    /** Time spent waiting before the request was admitted. */
    readonly queueMs: number;
  };

/** Memory pressure levels of the KV cache (docs/engine.md: what each one does). */
export type PressureLevel = "none" | "moderate" | "high" | "critical";

/** Counters and gauges of the engine. */
export interface EngineStats {
  running: number;
  waiting: number;
  steps: number;
  promptTokens: number;
  generatedTokens: number;
  finished: Record<FinishReason, number>;
  /** Admission decisions by decision and reason. */
  admission: Record<string, number>;
  preemptions: number;
  lastBatchSize: number;
  maxBatchSize: number;
  /** Sequences holding KV blocks. */
  kvCachesHeld: number;
  /** Output tokens per second over the last 10 s. */
  tokensPerSecond: number;
  pressure: PressureLevel;
  /** Degradations applied, counted per step or request. */
  pressureActions: Record<string, number>;
}

/** Counters and gauges before anything happened. */
export function emptyEngineStats(): EngineStats {
  return {
    running: 0,
    waiting: 0,
    steps: 0,
    promptTokens: 0,
    generatedTokens: 0,
    finished: { stop: 0, length: 0, abort: 0 },
    admission: {},
    preemptions: 0,
    lastBatchSize: 0,
    maxBatchSize: 0,
    kvCachesHeld: 0,
    tokensPerSecond: 0,
    pressure: "none",
    pressureActions: {},
  };
}

/** The KV cache's state. */
export interface EngineMemory {
  readonly blockSize: number;
  readonly blocks: { total: number; used: number; cached: number; free: number };
  readonly slidingBlocks: { total: number; used: number; cached: number };
  readonly bytesTotal: number;
  readonly bytesUsed: number;
  readonly pressure: PressureLevel;
  readonly pressureActions: Record<string, number>;
  readonly prefixCache: PrefixCacheStats & { readonly hitRate: number };
}

/** Where requests went when several engines serve one model (engine/router.ts). */
export interface RoutingStats {
  readonly groups: readonly {
    readonly name: string;
    readonly devices: readonly string[];
    readonly requests: number;
    readonly promptTokens: number;
    readonly running: number;
    readonly waiting: number;
  }[];
  /** Requests by the reason of their route (`default`, `large:prompt_tokens`, `large:kv_mb`). */
  readonly decisions: Readonly<Record<string, number>>;
}

/** A copy of the engine's state at one moment (camelCase data; the wire shapes are the API's). */
export interface EngineSnapshot {
  readonly stats: EngineStats;
  readonly memory: EngineMemory;
  readonly routing?: RoutingStats;
}

/** The engine as the API sees it. */
export interface EngineApi {
  /** The model's context length as served. */
  readonly maxModelLen: number;
  /** The vocabulary size (for validating token ids). */
  readonly vocabSize: number;
  /** Checks a request without queueing it; throws the error submit() would. */
  validate(request: EngineRequest): void;
  /** Queues a request; events arrive until "done". Aborting `signal` ends it with finish reason "abort". */
  submit(request: EngineRequest, signal?: AbortSignal): AsyncIterable<TokenEvent>;
  snapshot(): EngineSnapshot;
}
