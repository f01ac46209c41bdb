/**
 * An engine for in-process API tests: implements EngineApi with scripted output, records what it was asked, and
 * can be told to refuse (validate / submit errors), so the API's mapping of requests, events and errors is tested
 * without a model or a server process.
 */
import { ContextOverflowError } from "../../src/errors.ts";
import {
  emptyEngineStats,
  type EngineApi,
  type EngineRequest,
  type EngineSnapshot,
  type TokenEvent,
} from "../../src/engine/engine_api.ts";

/** What the fake answers per request: the token ids to emit and how it ends. */
export interface Script {
  readonly tokens: readonly number[];
  readonly finishReason?: "stop" | "length";
  /** Wait for this before each token (lets a test abort mid-stream). */
  readonly beforeToken?: () => Promise<void>;
}

export class FakeEngine implements EngineApi {
  readonly maxModelLen = 4096;
  readonly vocabSize = 201_088;
  readonly submitted: { request: EngineRequest; signal: AbortSignal | undefined }[] = [];
  /** Set to make validate() throw it. */
  validateError: Error | undefined;
  /** Set to make submit() throw it. */
  submitError: Error | undefined;
  snapshotValue: EngineSnapshot = emptySnapshot();

  constructor(private readonly script: (request: EngineRequest) => Script) {}

  validate(request: EngineRequest): void {
    if (this.validateError) throw this.validateError;
    const total = request.promptIds.length + request.maxTokens;
    if (total > this.maxModelLen) {
      throw new ContextOverflowError(`This model's maximum context length is ${this.maxModelLen} tokens, not ${total}`);
    }
  }

  submit(request: EngineRequest, signal?: AbortSignal): AsyncIterable<TokenEvent> {
    this.validate(request);
    if (this.submitError) throw this.submitError;
    this.submitted.push({ request, signal });
    const script = this.script(request);
    return (async function* () {
      let count = 0;
      for (const tokenId of script.tokens) {
        await script.beforeToken?.();
        if (signal?.aborted) break;
        count++;
        yield { type: "token", tokenId } as const;
      }
      yield {
        type: "done",
        finishReason: signal?.aborted ? "abort" : script.finishReason ?? "stop",
        promptTokens: request.promptIds.length,
        completionTokens: count,
        cachedTokens: 0,
        queueMs: 1,
      } as const;
    })();
  }

  snapshot(): EngineSnapshot {
    return this.snapshotValue;
  }
}

export function emptySnapshot(): EngineSnapshot {
  return {
    stats: emptyEngineStats(),
    memory: {
      blockSize: 16,
      blocks: { total: 0, used: 0, cached: 0, free: 0 },
      slidingBlocks: { total: 0, used: 0, cached: 0 },
      bytesTotal: 0,
      bytesUsed: 0,
      pressure: "none",
      pressureActions: {},
      prefixCache: {
        queriedTokens: 0,
        hitTokens: 0,
        missBlocks: { cold: 0, evicted: 0, partial_block: 0 },
        evictions: 0,
        hitRate: 0,
      },
    },
  };
}
