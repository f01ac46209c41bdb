/**
 * Large-request routing over a fake multi-device layout (two single-device engines, one 2-device group; scripted
 * engines): small requests go to the least loaded single engine, long prompts and large KV estimates to the group,
 * and /stats.gpu_routing reports the groups, their devices, requests, tokens and queues, and the decisions.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { createApp } from "../src/api/app.ts";
import { type ServingState, submitChoices } from "../src/api/serving.ts";
import { loadServerConfig } from "../src/config.ts";
import type { EngineRequest } from "../src/engine/engine_api.ts";
import { RoutingEngine } from "../src/engine/router.ts";
import { DEFAULT_SAMPLING } from "../src/engine/sampling.ts";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { createLogger } from "../src/obs/logger.ts";
import { FakeEngine } from "./helpers/fake_engine.ts";

const request = (id: string, promptTokens: number, maxTokens = 8): EngineRequest => ({
  id,
  promptIds: Array.from({ length: promptTokens }, (_, i) => i % 1000),
  maxTokens,
  sampling: { ...DEFAULT_SAMPLING, temperature: 0, seed: 1 },
  stopTokenIds: new Set(),
});

async function drain(events: AsyncIterable<unknown>) {
  for await (const _ of events) { /* run to the end */ }
}

Deno.test("routing: small → least-loaded single engine; long prompt or large KV → the group; /stats.gpu_routing", async () => {
  const gpu0 = new FakeEngine(() => ({ tokens: [1, 2] }));
  const gpu1 = new FakeEngine(() => ({ tokens: [1, 2] }));
  const group = new FakeEngine(() => ({ tokens: [1, 2] }));
  const routes: string[] = [];
  const router = new RoutingEngine({
    singles: [{ name: "gpu0", devices: ["cuda:0"], engine: gpu0 }, { name: "gpu1", devices: ["cuda:1"], engine: gpu1 }],
    group: { name: "tp2", devices: ["cuda:2", "cuda:3"], engine: group },
    largeRequestTokens: 3000,
    largeRequestKvMb: 10,
    kvBytesPerToken: 4096, // 10 MB = 2,560 tokens of KV
    onRoute: (lane, reason) => routes.push(`${lane}:${reason}`),
  });
  gpu0.snapshotValue.stats.running = 2; // gpu0 is busier: small requests go to gpu1
  await drain(router.submit(request("small", 100)));
  gpu1.snapshotValue.stats.running = 5; // now gpu1 is busier
  await drain(router.submit(request("small-2", 100)));
  await drain(router.submit(request("long-prompt", 3500)));
  await drain(router.submit(request("big-kv", 2000, 1000))); // 3,000 tokens of KV > 10 MB
  assertEquals(routes, ["gpu1:default", "gpu0:default", "tp2:large:prompt_tokens", "tp2:large:kv_mb"]);
  assertEquals([gpu0.submitted.length, gpu1.submitted.length, group.submitted.length], [1, 1, 2]);

  const state: ServingState = {
    status: "ready",
    modelId: "m",
    backend: "fake",
    model: {
      modelId: "m",
      backend: "fake",
      engine: router,
      tokenizer: new Tokenizer(),
      createdAt: 0,
      completionStopIds: [],
      demo: false,
    },
  };
  const config = loadServerConfig({
    flags: {},
    env: {},
    readTextFile: (p) =>
      p === "/p.json" ? Deno.readTextFileSync(new URL("../configs/profiles.json", import.meta.url)) : undefined,
    defaultConfigPath: "/none.json",
    profilesPath: "/p.json",
  });
  const app = createApp({
    config,
    logger: createLogger({ level: "error", format: "json", write: () => {} }),
    state,
    startedAtMs: 0,
  });
  const stats = await (await app.request("/stats")).json();
  assertEquals(stats.gpu_routing, {
    groups: [
      { name: "gpu0", devices: ["cuda:0"], requests: 1, prompt_tokens: 100, running: 2, waiting: 0 },
      { name: "gpu1", devices: ["cuda:1"], requests: 1, prompt_tokens: 100, running: 5, waiting: 0 },
      { name: "tp2", devices: ["cuda:2", "cuda:3"], requests: 2, prompt_tokens: 5500, running: 0, waiting: 0 },
    ],
    decisions: { default: 2, "large:prompt_tokens": 1, "large:kv_mb": 1 },
  });
  assertEquals(stats.engine.running, 7, "the engines' stats are summed");

  // The decision is on the request's span: the API hands the router a hook that sets the span's attributes.
  const attributes: Record<string, unknown> = {};
  const telemetry = { setAttributes: (a: Record<string, unknown>) => Object.assign(attributes, a) };
  const [events] = submitChoices(router, [request("traced", 3500)], [new AbortController()], "prompt", telemetry);
  await drain(events);
  assertEquals(attributes, { "gptoss.route.lane": "tp2", "gptoss.route.reason": "large:prompt_tokens" });
});
