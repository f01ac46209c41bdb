import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { createReferenceBackend } from "../backends/reference/reference_backend.ts";
import { Checkpoint } from "../model/checkpoint.ts";
import { createModel } from "../model/gpt_oss.ts";
import { loadWeights } from "../model/weights.ts";
import { createLogger } from "../obs/logger.ts";
import { Engine, type EngineRequest, type TokenEvent } from "./engine.ts";
import { DEFAULT_SAMPLING } from "./sampling.ts";

const GOLDEN = new URL("../../../shared/golden/tiny", import.meta.url).pathname;

async function engine(maxNumSeqs: number): Promise<Engine> {
  const checkpoint = Checkpoint.open(GOLDEN);
  const backend = createReferenceBackend();
  const model = createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  checkpoint.close();
  return new Engine(model, {
    limits: { maxNumSeqs, maxNumBatchedTokens: 64, prefillChunkSize: 5, prefillPriority: "decode_first" },
    maxQueuedRequests: 16,
    maxQueuedTokens: 100_000,
    maxModelLen: 4096,
    logger: createLogger({ level: "error", format: "json", write: () => {} }),
  });
}

function request(id: string, promptIds: number[], seed: number | undefined, temperature = 1): EngineRequest {
  return {
    id,
    promptIds,
    maxTokens: 20,
    sampling: { ...DEFAULT_SAMPLING, temperature, seed },
    stopTokenIds: new Set(),
  };
}

async function tokens(stream: AsyncIterable<TokenEvent>): Promise<number[]> {
  const out: number[] = [];
  for await (const event of stream) if (event.type === "token") out.push(event.tokenId);
  return out;
}

Deno.test("a seeded request gives the same tokens alone and in a full batch; greedy too", async () => {
  const e = await engine(4);
  const prompt = [857, 534, 730, 374, 93, 938, 1007];
  const alone = await tokens(e.submit(request("alone", prompt, 42)));
  const greedyAlone = await tokens(e.submit(request("g", prompt, undefined, 0)));
  // The same requests beside three others of other lengths, all at once (prefill chunks and decodes mixed).
  const streams = [
    e.submit(request("x1", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 1)),
    e.submit(request("seeded", prompt, 42)),
    e.submit(request("x2", [5], 2)),
    e.submit(request("greedy", prompt, undefined, 0)),
  ];
  const results = await Promise.all(streams.map(tokens));
  assertEquals(results[1], alone);
  assertEquals(results[3], greedyAlone);
  assertEquals(greedyAlone.slice(0, 24), [
    759,
    1023,
    835,
    394,
    665,
    192,
    760,
    835,
    318,
    437,
    45,
    759,
    760,
    835,
    760,
    80,
    760,
    338,
    760,
    835,
  ]);
  assert(e.stats.maxBatchSize >= 3, `batched: ${e.stats.maxBatchSize}`);
  assertEquals(e.stats.kvCachesHeld, 0);
});

Deno.test("cancelling a request ends it with finish reason abort and frees its cache", async () => {
  const e = await engine(2);
  const controller = new AbortController();
  const events: TokenEvent[] = [];
  const stream = e.submit({ ...request("c", [1, 2, 3], 1), maxTokens: 1000 }, controller.signal);
  for await (const event of stream) {
    events.push(event);
    if (events.length === 3) controller.abort();
  }
  const done = events[events.length - 1];
  assertEquals(done.type === "done" && done.finishReason, "abort");
  assert(events.length < 10);
  await e.idle();
  assertEquals(e.stats.kvCachesHeld, 0);
  assertEquals(e.stats.running, 0);
});
