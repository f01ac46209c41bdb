/** The wire shapes of /stats and /memory_stats (snake_case JSON), built from the engine's snapshot. */
import type { EngineMemory, EngineSnapshot, EngineStats } from "../engine/engine_api.ts";

/** The engine's counters as JSON. */
export function statsJson(stats: EngineStats) {
  return {
    running: stats.running,
    waiting: stats.waiting,
    steps: stats.steps,
    prompt_tokens: stats.promptTokens,
    generated_tokens: stats.generatedTokens,
    finished: { ...stats.finished },
    admission: { ...stats.admission },
    preemptions: stats.preemptions,
    last_batch_size: stats.lastBatchSize,
    max_batch_size: stats.maxBatchSize,
    kv_caches_held: stats.kvCachesHeld,
    tokens_per_second: stats.tokensPerSecond,
    pressure: stats.pressure,
    pressure_actions: { ...stats.pressureActions },
  };
}

/** The KV cache's state as JSON. */
export function memoryJson(memory: EngineMemory) {
  const prefix = memory.prefixCache;
  return {
    block_size: memory.blockSize,
    blocks: { ...memory.blocks },
    sliding_blocks: { ...memory.slidingBlocks },
    bytes_total: memory.bytesTotal,
    bytes_used: memory.bytesUsed,
    pressure: memory.pressure,
    pressure_actions: { ...memory.pressureActions },
    prefix_cache: {
      queried_tokens: prefix.queriedTokens,
      hit_tokens: prefix.hitTokens,
      miss_blocks: { ...prefix.missBlocks },
      evictions: prefix.evictions,
      hit_rate: prefix.hitRate,
    },
  };
}

/** GET /stats. */
export function statsBody(
  server: { status: string; model: string | null; inFlight: number },
  snapshot: EngineSnapshot | undefined,
) {
  return {
    status: server.status,
    model: server.model,
    http_requests_in_flight: server.inFlight,
    engine: snapshot ? statsJson(snapshot.stats) : null,
    prefix_cache_hit_rate: snapshot ? snapshot.memory.prefixCache.hitRate : null,
    ...(snapshot?.routing
      ? {
        gpu_routing: {
          groups: snapshot.routing.groups.map((g) => ({
            name: g.name,
            devices: g.devices,
            requests: g.requests,
            prompt_tokens: g.promptTokens,
            running: g.running,
            waiting: g.waiting,
          })),
          decisions: snapshot.routing.decisions,
        },
      }
      : {}),
  };
}

/** GET /memory_stats. */
export function memoryStatsBody(
  backend: string | null,
  process: Record<string, number> | null,
  snapshot: EngineSnapshot | undefined,
) {
  return {
    backend,
    process,
    kv_caches_held: snapshot?.stats.kvCachesHeld ?? 0,
    kv_cache: snapshot ? memoryJson(snapshot.memory) : null,
  };
}
