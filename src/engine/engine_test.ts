import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { Backend } from "../backends/backend.ts";
import { createReferenceBackend } from "../backends/reference/reference_backend.ts";
import { createWebGpuBackend, requestWebGpu } from "../backends/webgpu/webgpu_backend.ts";
import { Checkpoint } from "../checkpoint/checkpoint.ts";
import { createModel } from "../model/gpt_oss.ts";
import { loadWeights } from "../checkpoint/load_weights.ts";
import { createLogger } from "../obs/logger.ts";
import type { OverloadedError } from "../errors.ts";
import { Engine, type EngineRequest, type TokenEvent } from "./engine.ts";
import { DEFAULT_SAMPLING } from "./sampling.ts";

const GOLDEN = new URL("../../../shared/golden/tiny", import.meta.url).pathname;

async function engine(
  maxNumSeqs: number,
  kvCacheBytes = 1 << 24,
  backend: Backend = createReferenceBackend(),
): Promise<Engine> {
  const checkpoint = Checkpoint.open(GOLDEN);
  const model = createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  checkpoint.close();
  return new Engine(model, {
    limits: { maxNumSeqs, maxNumBatchedTokens: 64, prefillChunkSize: 5, prefillPriority: "decode_first" },
    maxQueuedRequests: 16,
    maxQueuedTokens: 100_000,
    maxModelLen: 4096,
    kvCacheBytes,
    blockSize: 4,
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

Deno.test("out of KV blocks, requests are preempted and recomputed: same tokens as alone, blocks all returned", async () => {
  const roomy = await engine(4);
  const prompts = [[857, 534, 730, 374, 93, 938, 1007], [1, 2, 3, 4, 5, 6], [549, 859, 341, 377, 532]];
  const alone: number[][] = [];
  for (const [i, p] of prompts.entries()) alone.push(await tokens(roomy.submit(request(`a${i}`, p, 7 + i))));
  const tight = await engine(4, 40 * 1024); // about ten 4-position blocks: three requests cannot all fit
  const together = await Promise.all(prompts.map((p, i) => tokens(tight.submit(request(`t${i}`, p, 7 + i)))));
  assertEquals(together, alone);
  assert(tight.stats.preemptions > 0, "preemption happened");
  // The cache ran full: the engine went through the pressure levels and degraded as documented.
  assert((tight.stats.pressureActions.smaller_chunks ?? 0) > 0, JSON.stringify(tight.stats.pressureActions));
  assert((tight.stats.pressureActions.smaller_batches ?? 0) > 0, JSON.stringify(tight.stats.pressureActions));
  const memory = tight.memory();
  assertEquals(memory.blocks.total, memory.blocks.used + memory.blocks.cached + memory.blocks.free);
  assert(memory.bytesTotal > 0 && ["none", "moderate", "high", "critical"].includes(memory.pressure));
  await tight.idle();
  assertEquals(tight.memory().blocks.used, 0);
  assertEquals(tight.stats.kvCachesHeld, 0);
});

Deno.test("a repeated prompt is served from the prefix cache with identical tokens", async () => {
  const e = await engine(2);
  const prompt = Array.from({ length: 30 }, (_, i) => (i * 37) % 1000);
  const first = e.submit(request("p1", prompt, undefined, 0));
  const firstTokens = await tokens(first);
  let cached = -1;
  const second: number[] = [];
  for await (const event of e.submit(request("p2", prompt, undefined, 0))) {
    if (event.type === "token") second.push(event.tokenId);
    if (event.type === "done") cached = event.cachedTokens;
  }
  assertEquals(second, firstTokens);
  assertEquals(cached, 28); // 7 whole blocks of 4; the last 2 prompt tokens are recomputed
  assert(e.memory().prefixCache.hitRate > 0.4);
});

Deno.test("a request that could never fit the KV cache is refused as context_length_exceeded", async () => {
  const e = await engine(1, 20 * 1024);
  let message = "";
  try {
    e.submit({ ...request("big", [1, 2, 3], 1), maxTokens: 4000 });
  } catch (err) {
    message = (err as Error).message;
  }
  assert(/needs 4003 tokens of KV cache/.test(message), message);
  assertEquals(e.stats.admission["rejected:never_fits"], 1);
});

const gpu = await requestWebGpu();
if (!gpu) console.log("skip: engine device sampling (no WebGPU adapter here)");

Deno.test({
  name: "webgpu samples on the device: greedy = the reference's tokens, seeded alone = batched = with logprobs",
  ignore: gpu === undefined,
  async fn() {
    // f32 matmuls: the greedy tokens are compared with the reference's exactly.
    const backend = createWebGpuBackend(gpu!.device, gpu!.info, { precision: "f32" });
    const ops = backend.ops as { sample: NonNullable<Backend["ops"]["sample"]> };
    const deviceSample = ops.sample;
    let sampledRows = 0;
    ops.sample = (ids, logits, params, masked) => {
      sampledRows += ids.shape[0];
      deviceSample(ids, logits, params, masked);
    };
    const e = await engine(4, 1 << 24, backend);
    const reference = await engine(4);
    const prompt = [857, 534, 730, 374, 93, 938, 1007];
    const greedy = await tokens(e.submit(request("g", prompt, undefined, 0)));
    assertEquals(greedy, await tokens(reference.submit(request("g", prompt, undefined, 0))));
    assertEquals(sampledRows, 20, "every greedy token was picked on the device");
    const seeded = { ...request("s", prompt, 7), sampling: { ...DEFAULT_SAMPLING, seed: 7, topK: 40, topP: 0.9 } };
    const alone = await tokens(e.submit(seeded));
    // Beside a request that wants logprobs (drawn on the device too; its logits also come back) and another one.
    const withLogprobs = {
      ...request("lp", [3, 1, 4, 1, 5], 1),
      sampling: { ...DEFAULT_SAMPLING, seed: 1, logprobs: 2 },
    };
    const rowsBefore = sampledRows;
    const [beside, logprobTokens] = await Promise.all([
      tokens(e.submit({ ...seeded, id: "s2" })),
      tokens(e.submit(withLogprobs)),
      tokens(e.submit(request("x", [9, 9, 9], 3))),
    ]);
    assertEquals(beside, alone);
    assertEquals(logprobTokens.length, 20);
    assertEquals(sampledRows - rowsBefore, 60, "every row was drawn on the device, the logprobs one too");
    // The logprobs request's tokens are the ones it gets without logprobs.
    const plain = { ...withLogprobs, id: "lp2", sampling: { ...withLogprobs.sampling, logprobs: undefined } };
    assertEquals(await tokens(e.submit(plain)), logprobTokens);
    // Another seed gives another stream (the draw really uses the request's generator).
    const other = await tokens(e.submit({ ...seeded, id: "s3", sampling: { ...seeded.sampling, seed: 8 } }));
    assert(other.join() !== alone.join(), "seeds 7 and 8 gave the same 20 tokens");
  },
});

Deno.test("a guide's forced tokens and allowed sets constrain every generated token", async () => {
  const e = await engine(2);
  const allowed = new Set([5, 9]);
  const guided = await tokens(e.submit({
    ...request("guided", [857, 534, 730], 3),
    // Forced 7 at even steps, a choice between 5 and 9 at odd ones.
    guide: { next: (generated) => generated.length % 2 === 0 ? 7 : { allowed } },
  }));
  assertEquals(guided.length, 20);
  guided.forEach((id, i) => assert(i % 2 === 0 ? id === 7 : allowed.has(id), `token ${i} is ${id}`));
});

Deno.test("Retry-After comes from the measured drain rate of the queue ahead (fake clock), clamped to 1..60 s", async () => {
  let clock = 0;
  const backend = createReferenceBackend();
  const checkpoint = Checkpoint.open(GOLDEN);
  const model = createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  checkpoint.close();
  const e = new Engine(model, {
    limits: { maxNumSeqs: 1, maxNumBatchedTokens: 64, prefillChunkSize: 16, prefillPriority: "decode_first" },
    maxQueuedRequests: 4,
    maxQueuedTokens: 100_000,
    maxModelLen: 4096,
    kvCacheBytes: 1 << 24,
    blockSize: 4,
    logger: createLogger({ level: "error", format: "json", write: () => {} }),
    clock: () => clock,
  });
  const short = (id: string) => e.submit({ ...request(id, [1, 2, 3], 1), maxTokens: 3 });
  const retryAfter = (id: string) => {
    try {
      short(id);
    } catch (err) {
      return (err as OverloadedError).retryAfterSeconds;
    }
    throw new Error("expected the queue to be full");
  };
  // Submitted in one go: "a" is admitted at once (the first submit starts a step), the other four wait.
  const streams = ["a", "b", "c", "d", "e"].map(short);
  assertEquals(retryAfter("x1"), 5, "nothing measured yet: the unmeasured default");
  clock = 10_000;
  await tokens(streams[0]); // finishes at 10 s
  clock = 20_000;
  await tokens(streams[1]); // finishes at 20 s: 2 requests in 10 s = 0.2/s
  // No step has run since: c, d and e still wait; one more fills the queue.
  streams.push(short("f"));
  assertEquals(retryAfter("x2"), 25, "5 ahead (4 waiting + 1 running to make room) at 0.2/s");
  clock = 39_000; // both finishes still inside the 30 s window: 2 in 29 s → 5 ahead = 72.5 s
  assertEquals(retryAfter("x3"), 60, "clamped");
  await Promise.all(streams.slice(2).map(tokens));
  assertEquals(e.stats.finished.length, 6); // max_tokens 3: each ends by length
});

Deno.test("a running stream keeps decoding while another request prefills a long prompt (one token per step)", async () => {
  const e = await engine(4);
  const streamer = e.submit({ ...request("stream", [1, 2, 3], 5), maxTokens: 400 });
  const streamTokens: number[] = [];
  let prefillDone = false, tokensDuringPrefill = 0;
  const reading = (async () => {
    for await (const event of streamer) {
      if (event.type !== "token") continue;
      streamTokens.push(event.tokenId);
      if (streamTokens.length === 3) startLong(); // the stream is decoding: now a long prompt arrives
      if (streamTokens.length > 3 && !prefillDone) tokensDuringPrefill++;
    }
  })();
  let long: Promise<number[]> | undefined;
  function startLong() {
    const prompt = Array.from({ length: 200 }, (_, i) => (i * 37) % 1000); // 40 chunks of 5
    long = (async () => {
      const out: number[] = [];
      for await (const event of e.submit({ ...request("long", prompt, 6), maxTokens: 2 })) {
        if (event.type === "token") {
          prefillDone = true;
          out.push(event.tokenId);
        }
      }
      return out;
    })();
  }
  await reading;
  assertEquals((await long!).length, 2);
  // 40 prefill chunks of 5 tokens: the stream got a token in (nearly) every one of those steps.
  assert(tokensDuringPrefill >= 38, `the stream got ${tokensDuringPrefill} tokens during a 40-step prefill`);
});
