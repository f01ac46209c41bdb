/**
 * Large-request routing (the seed server's `--gpu-mode auto`): ordinary requests go to the single-device engines
 * (the least loaded one), and a request whose prompt exceeds `largeRequestTokens`, or whose KV cache would exceed
 * `largeRequestKvMb`, goes to the multi-device group. It is an EngineApi itself, so the API does not know; its snapshot
 * sums the engines' and adds where requests went and why.
 */
import type { EngineApi, EngineMemory, EngineRequest, EngineSnapshot, EngineStats, TokenEvent } from "./engine_api.ts";

/** One engine of the router and the devices it runs on. */
export interface Lane {
  readonly name: string;
  readonly devices: readonly string[];
  readonly engine: EngineApi;
}

/** The routing rule. */
export interface RouterOptions {
  readonly singles: readonly Lane[];
  readonly group?: Lane;
  readonly largeRequestTokens: number;
  readonly largeRequestKvMb: number;
  /** KV cache bytes per token of the model (all layers, K and V). */
  readonly kvBytesPerToken: number;
  /** Called with each decision (metrics label, span attribute). */
  readonly onRoute?: (lane: string, reason: string) => void;
}

export class RoutingEngine implements EngineApi {
  readonly #options: RouterOptions;
  readonly #requests = new Map<string, { requests: number; promptTokens: number }>();
  readonly #decisions: Record<string, number> = {};

  constructor(options: RouterOptions) {
    if (options.singles.length === 0) throw new RangeError("The router needs at least one single-device engine");
    this.#options = options;
    for (const lane of this.#lanes()) this.#requests.set(lane.name, { requests: 0, promptTokens: 0 });
  }

  #lanes(): Lane[] {
    return [...this.#options.singles, ...(this.#options.group ? [this.#options.group] : [])];
  }

  get maxModelLen(): number {
    return Math.max(...this.#lanes().map((l) => l.engine.maxModelLen));
  }

  get vocabSize(): number {
    return this.#options.singles[0].engine.vocabSize;
  }

  /** The lane for a request and why. */
  route(request: EngineRequest): { lane: Lane; reason: string } {
    const { group, largeRequestTokens, largeRequestKvMb, kvBytesPerToken } = this.#options;
    const kvMb = (request.promptIds.length + request.maxTokens) * kvBytesPerToken / 2 ** 20;
    if (group && request.promptIds.length > largeRequestTokens) return { lane: group, reason: "large:prompt_tokens" };
    if (group && kvMb > largeRequestKvMb) return { lane: group, reason: "large:kv_mb" };
    // The least loaded single-device engine (first on ties).
    const load = (l: Lane) => {
      const s = l.engine.snapshot().stats;
      return s.running + s.waiting;
    };
    const lane = this.#options.singles.reduce((best, l) => (load(l) < load(best) ? l : best));
    return { lane, reason: "default" };
  }

  validate(request: EngineRequest): void {
    this.route(request).lane.engine.validate(request);
  }

  submit(request: EngineRequest, signal?: AbortSignal): AsyncIterable<TokenEvent> {
    const { lane, reason } = this.route(request);
    const events = lane.engine.submit(request, signal);
    const counts = this.#requests.get(lane.name)!;
    counts.requests++;
    counts.promptTokens += request.promptIds.length;
    this.#decisions[reason] = (this.#decisions[reason] ?? 0) + 1;
    this.#options.onRoute?.(lane.name, reason);
    request.onRoute?.(lane.name, reason);
    return events;
  }

  snapshot(): EngineSnapshot {
    const lanes = this.#lanes();
    const snapshots = lanes.map((l) => l.engine.snapshot());
    return {
      stats: sumStats(snapshots.map((s) => s.stats)),
      memory: sumMemory(snapshots.map((s) => s.memory)),
      routing: {
        groups: lanes.map((l, i) => ({
          name: l.name,
          devices: l.devices,
          ...this.#requests.get(l.name)!,
          running: snapshots[i].stats.running,
          waiting: snapshots[i].stats.waiting,
        })),
        decisions: { ...this.#decisions },
      },
    };
  }
}

function addRecords(records: readonly Record<string, number>[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of records) for (const [k, v] of Object.entries(r)) out[k] = (out[k] ?? 0) + v;
  return out;
}

function sumStats(all: readonly EngineStats[]): EngineStats {
  const sum = (pick: (s: EngineStats) => number) => all.reduce((n, s) => n + pick(s), 0);
  const pressures = ["none", "moderate", "high", "critical"] as const;
  return {
    running: sum((s) => s.running),
    waiting: sum((s) => s.waiting),
    steps: sum((s) => s.steps),
    promptTokens: sum((s) => s.promptTokens),
    generatedTokens: sum((s) => s.generatedTokens),
    finished: {
      stop: sum((s) => s.finished.stop),
      length: sum((s) => s.finished.length),
      abort: sum((s) => s.finished.abort),
    },
    admission: addRecords(all.map((s) => s.admission)),
    preemptions: sum((s) => s.preemptions),
    lastBatchSize: Math.max(...all.map((s) => s.lastBatchSize)),
    maxBatchSize: Math.max(...all.map((s) => s.maxBatchSize)),
    kvCachesHeld: sum((s) => s.kvCachesHeld),
    tokensPerSecond: sum((s) => s.tokensPerSecond),
    pressure: pressures[Math.max(...all.map((s) => pressures.indexOf(s.pressure)))],
    pressureActions: addRecords(all.map((s) => s.pressureActions)),
  };
}

function sumMemory(all: readonly EngineMemory[]): EngineMemory {
  const sum = (pick: (m: EngineMemory) => number) => all.reduce((n, m) => n + pick(m), 0);
  const queried = sum((m) => m.prefixCache.queriedTokens);
  const hits = sum((m) => m.prefixCache.hitTokens);
  return {
    ...all[0],
    blocks: {
      total: sum((m) => m.blocks.total),
      used: sum((m) => m.blocks.used),
      cached: sum((m) => m.blocks.cached),
      free: sum((m) => m.blocks.free),
    },
    slidingBlocks: {
      total: sum((m) => m.slidingBlocks.total),
      used: sum((m) => m.slidingBlocks.used),
      cached: sum((m) => m.slidingBlocks.cached),
    },
    bytesTotal: sum((m) => m.bytesTotal),
    bytesUsed: sum((m) => m.bytesUsed),
    prefixCache: {
      ...all[0].prefixCache,
      queriedTokens: queried,
      hitTokens: hits,
      hitRate: queried ? hits / queried : 0,
    },
  };
}
