/**
 * Several ranks in one process. Tensor parallelism: TP = 2 (each rank its own backend, shard and KV pool, partial
 * sums all-reduced on the host) reproduces TP = 1 and OpenAI's golden logits within the f32 tolerance, with the same
 * greedy ids over 8 decode steps, on the reference backend and (where it loads) the native one. Pipeline parallelism:
 * PP = 2 (two stages of two layers, micro-batches flowing between them) the same, batched too. Uneven splits are
 * refused in one line; servers with either flag answer as a single-rank one.
 */
import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import type { Backend } from "../src/backends/backend.ts";
import { createNativeBackend } from "../src/backends/native/native_backend.ts";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { probeBackends } from "../src/backends/select.ts";
import { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { loadPipelineModel, loadShardedWeights, loadTensorParallelModel } from "../src/checkpoint/load_sharded.ts";
import { generateCheckpoint } from "../src/tools/synthetic.ts";
import { forwardPipeline } from "../src/model/pipeline_parallel.ts";
import { createKvPoolFor, runStep } from "../src/model/parallel.ts";
import type { GroupPool } from "../src/model/parallel.ts";
import { createModel, forward, kvPoolSpec, type Model, type StepSequence } from "../src/model/gpt_oss.ts";
import { forwardTensorParallel, shardConfig } from "../src/model/tensor_parallel.ts";
import { gatherColumns, HostCommunicator, sumParts } from "../src/backends/communicator.ts";
import { loadWeights } from "../src/checkpoint/load_weights.ts";
import { argmax, assertLogitsClose, GOLDEN_ROOT, goldenCases, goldenLogits } from "./helpers/golden.ts";
import { type ServerProcess, startServer } from "./helpers/server.ts";

const BLOCKS = { blockSize: 16, numFullBlocks: 8, numSlidingBlocks: 8 };

/** Greedy decoding of one sequence with identity block tables; returns the prefill logits and the ids. */
async function run(
  step: (seq: StepSequence) => Promise<Float32Array>,
  prompt: number[],
  vocab: number,
  steps: number,
): Promise<{ prefill: Float32Array; ids: number[] }> {
  const table = Int32Array.from({ length: BLOCKS.numFullBlocks }, (_, i) => i);
  const at = (tokenIds: number[], startPosition: number, logits: "all" | "last") =>
    step({ tokenIds, startPosition, fullBlocks: table, slidingBlocks: table, logits });
  const prefill = await at(prompt, 0, "all");
  const ids: number[] = [];
  let last = prefill.subarray(prefill.length - vocab);
  for (let i = 0; i < steps; i++) {
    ids.push(argmax(last));
    last = await at([ids[i]], prompt.length + i, "last");
  }
  return { prefill, ids };
}

async function check(makeBackend: () => Backend, label: string, kind: "tensor" | "pipeline" = "tensor"): Promise<void> {
  const checkpoint = Checkpoint.open(`${GOLDEN_ROOT}tiny`, { mmap: true });
  try {
    const config = checkpoint.config;
    const single = makeBackend();
    const whole: Model = createModel(config, await loadWeights(checkpoint, single), single);
    const wholePool = single.createKvPool(kvPoolSpec(config, BLOCKS));
    const backends = [makeBackend(), makeBackend()];
    let groupStep: (seq: StepSequence) => Promise<Float32Array>;
    if (kind === "tensor") {
      const rankConfig = shardConfig(config, 2);
      const ranks = backends.map((b, r) => createModel(rankConfig, loadShardedWeights(checkpoint, b, r, 2), b));
      const pools = backends.map((b) => b.createKvPool(kvPoolSpec(rankConfig, BLOCKS)));
      const comm = new HostCommunicator(2);
      groupStep = async (seq) => (await forwardTensorParallel(ranks, pools, [seq], comm))[0];
    } else {
      const group = loadPipelineModel(checkpoint, backends);
      const pool = createKvPoolFor(group, kvPoolSpec(config, BLOCKS));
      groupStep = async (seq) => (await runStep(group, pool, [seq])).logits[0];
    }
    for (const c of goldenCases("tiny")) {
      const steps = Math.min(8, c.greedy_ids.length);
      const one = await run(
        async (seq) => (await forward(whole, wholePool, [seq]))[0],
        c.input_ids,
        config.vocabSize,
        steps,
      );
      const two = await run(groupStep, c.input_ids, config.vocabSize, steps);
      const expected = goldenLogits("tiny", c);
      const rows = c.logits_positions === "all"
        ? two.prefill
        : two.prefill.subarray(two.prefill.length - config.vocabSize);
      assertLogitsClose(rows, expected, `${label} ${kind} ×2 ${c.name} vs golden`);
      assertLogitsClose(two.prefill, one.prefill, `${label} ${kind} ×2 vs one rank ${c.name}`);
      assertEquals(two.ids, one.ids, `${label} ${c.name} greedy ids`);
      assertEquals(two.ids, c.greedy_ids.slice(0, steps));
    }
    for (const b of [single, ...backends]) b.dispose();
  } finally {
    checkpoint.close();
  }
}

Deno.test("TP=2 on the reference backend reproduces TP=1 and the golden logits; greedy ids equal over 8 steps", async () => {
  await check(() => createReferenceBackend(), "reference");
});

const native = (await probeBackends()).find((p) => p.name === "native")!;
if (!native.available) console.log(`tensor parallel on native: skipped: ${native.reason}`);
Deno.test({
  name: "TP=2 on native CPU contexts (one per rank, 1 thread each) reproduces TP=1 and the golden logits",
  ignore: !native.available,
  fn: async () => {
    await check(() => createNativeBackend({ numThreads: 1 }), "native");
  },
});

Deno.test({
  name: "at the real widths (2880 hidden, 64 heads, 8 KV heads): TP=2, TP=4 (uneven expert blocks) and PP=2 = TP=1",
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "gptoss-wide-" });
    try {
      await generateCheckpoint("wide", dir, { seed: 7 });
      const checkpoint = Checkpoint.open(dir, { mmap: true });
      const config = checkpoint.config;
      // 90 blocks over 4 ranks: 22, 23, 22, 23.
      assertEquals([0, 1, 2, 3].map((r) => shardConfig(config, 4, r).intermediateSize / 32), [22, 23, 22, 23]);
      const make = () => native.available ? createNativeBackend({ numThreads: 1 }) : createReferenceBackend();
      const made: Backend[] = [];
      const backends = (n: number) => Array.from({ length: n }, () => made[made.push(make()) - 1]);
      const decode = async (model: Model) => {
        const pool = createKvPoolFor(model, kvPoolSpec(config, BLOCKS));
        return await run(
          async (seq) => (await runStep(model, pool, [seq])).logits[0],
          [5, 99, 512, 7, 1000, 3],
          1024,
          8,
        );
      };
      try {
        const [single] = backends(1);
        const one = await decode(createModel(config, await loadWeights(checkpoint, single), single));
        const groups: [string, Model][] = [
          ["TP=2", loadTensorParallelModel(checkpoint, backends(2))],
          ["TP=4", loadTensorParallelModel(checkpoint, backends(4))],
          ["PP=2", loadPipelineModel(checkpoint, backends(2))],
        ];
        for (const [label, model] of groups) {
          const got = await decode(model);
          assertLogitsClose(got.prefill, one.prefill, `wide ${label} vs TP=1`);
          assertEquals(got.ids, one.ids, `wide ${label} greedy ids`);
        }
      } finally {
        made.forEach((b) => b.dispose());
        checkpoint.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("PP=2 (two stages of two layers) on the reference backend reproduces PP=1 and the golden logits", async () => {
  await check(() => createReferenceBackend(), "reference", "pipeline");
});

Deno.test({
  name: "PP=2 on native CPU contexts reproduces PP=1 and the golden logits",
  ignore: !native.available,
  fn: async () => {
    await check(() => createNativeBackend({ numThreads: 1 }), "native", "pipeline");
  },
});

Deno.test("PP=2 with several sequences in a step (micro-batches overlap across stages) gives each its own logits", async () => {
  const checkpoint = Checkpoint.open(`${GOLDEN_ROOT}tiny`, { mmap: true });
  try {
    const config = checkpoint.config;
    const group = loadPipelineModel(checkpoint, [createReferenceBackend(), createReferenceBackend()]);
    const pool = createKvPoolFor(group, kvPoolSpec(config, BLOCKS)) as GroupPool;
    const cases = goldenCases("tiny");
    // Each sequence its own blocks: 2 blocks of 16 positions each.
    const seqs = cases.map((c, i) => {
      const table = Int32Array.from([2 * i, 2 * i + 1]);
      return {
        tokenIds: c.input_ids,
        startPosition: 0,
        fullBlocks: table,
        slidingBlocks: table,
        logits: c.logits_positions,
      };
    });
    const parallel = group.parallel!;
    assertEquals(parallel.kind, "pipeline");
    const logits = await forwardPipeline((parallel as { stages: readonly Model[] }).stages, pool.ranks, seqs);
    cases.forEach((c, i) => assertLogitsClose(logits[i], goldenLogits("tiny", c), `batched ${c.name}`));
  } finally {
    checkpoint.close();
  }
});

Deno.test("HostCommunicator: all-reduce in rank order, all-gather by columns, broadcast, barrier", async () => {
  const parts = [Float32Array.of(1, 2), Float32Array.of(10, 20), Float32Array.of(100, 200)];
  assertEquals([...sumParts(parts)], [111, 222]);
  // Two rows of widths 1, 1, 1 per rank: row r takes each rank's r-th value.
  assertEquals([...gatherColumns(parts, 2)], [1, 10, 100, 2, 20, 200]);
  // The same through three backends' tensors (each rank's part on its own device).
  const backends = parts.map(() => createReferenceBackend());
  const comm = new HostCommunicator(3);
  const load = () =>
    parts.map((p, r) => {
      const t = backends[r].alloc([2, 1], "f32");
      backends[r].write(t, p);
      return t;
    });
  let tensors = load();
  assertEquals([...await comm.allGatherColumns(backends, tensors, 2)], [1, 10, 100, 2, 20, 200]);
  await comm.allReduceSum(backends, tensors);
  for (const [r, b] of backends.entries()) assertEquals([...await b.read(tensors[r])], [111, 222]);
  tensors = load();
  await comm.broadcast(backends, tensors, 1);
  for (const [r, b] of backends.entries()) assertEquals([...await b.read(tensors[r])], [10, 20]);
  await comm.barrier(backends);
  backends.forEach((b) => b.dispose());
});

Deno.test("uneven splits are refused in one line naming what does not divide", () => {
  const checkpoint = Checkpoint.open(`${GOLDEN_ROOT}tiny`, { mmap: true });
  try {
    assertThrows(
      () => shardConfig(checkpoint.config, 3),
      /Tensor parallel size 3 does not divide the attention heads \(4\)/,
    );
    assertThrows(() => shardConfig(checkpoint.config, 4), /does not divide the key\/value heads \(2\)/);
  } finally {
    checkpoint.close();
  }
});

Deno.test("servers with --tensor-parallel-size 2 and --pipeline-parallel-size 2 answer as a single-rank one", async () => {
  const cache = await Deno.makeTempDir({ prefix: "gptoss-tp-" });
  const backend = native.available ? "native" : "reference";
  const args = (...extra: string[]) => [
    ...["--port", "0", "--model-cache-dir", cache, "--current-date", "2025-06-28", "--response-store", "off"],
    ...["--backend", backend, ...extra],
  ];
  const [one, two, staged] = await Promise.all([
    startServer(args()),
    startServer(args("--tensor-parallel-size", "2")),
    startServer(args("--pipeline-parallel-size", "2")),
  ]);
  try {
    const ask = (server: ServerProcess, seed: number) =>
      fetch(`${server.baseUrl}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "gpt-oss-tiny-random",
          prompt: `Story ${seed}`,
          max_tokens: 12,
          seed,
          return_token_ids: true,
        }),
      }).then(async (r) => (await r.json()).choices[0].token_ids as number[]);
    const seeds = [1, 2, 3, 4];
    const alone: number[][] = [];
    for (const seed of seeds) alone.push(await ask(one, seed));
    const batched = await Promise.all(seeds.map((seed) => ask(two, seed)));
    assertEquals(batched, alone);
    assertEquals(await Promise.all(seeds.map((seed) => ask(staged, seed))), alone);
    assertEquals(alone.every((ids) => ids.length === 12), true);
    assert(two.logLines.some((l) => l.includes('"event":"model.tensor_parallel","ranks":2')));
    assert(staged.logLines.some((l) => l.includes('"event":"model.pipeline_parallel","stages":[2,2]')));
  } finally {
    await Promise.all([one.stop(), two.stop(), staged.stop()]);
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("--gpu-mode auto: ordinary requests on one rank, long prompts on the tensor-parallel group (/stats, /metrics)", async () => {
  const cache = await Deno.makeTempDir({ prefix: "gptoss-route-" });
  const server = await startServer([
    ...["--port", "0", "--model-cache-dir", cache, "--response-store", "off"],
    ...["--backend", native.available ? "native" : "reference", "--tensor-parallel-size", "2", "--gpu-mode", "auto"],
    ...["--large-request-tokens", "100"],
  ]);
  try {
    const complete = (prompt: number[]) =>
      fetch(`${server.baseUrl}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "gpt-oss-tiny-random", prompt, max_tokens: 4 }),
      }).then((r) => r.json());
    await complete(Array.from({ length: 20 }, (_, i) => 1000 + i));
    await complete(Array.from({ length: 300 }, (_, i) => 1000 + i));
    const stats = await (await fetch(`${server.baseUrl}/stats`)).json();
    assertEquals(stats.gpu_routing.decisions, { default: 1, "large:prompt_tokens": 1 });
    assertEquals(stats.gpu_routing.groups.map((g: { name: string; requests: number }) => [g.name, g.requests]), [
      ["single", 1],
      ["tp2", 1],
    ]);
    const metrics = await (await fetch(`${server.baseUrl}/metrics`)).text();
    assert(/gptoss_routing_decisions_total\{[^}]*lane="tp2",reason="large:prompt_tokens"\} 1/.test(metrics), metrics);
  } finally {
    await server.stop();
    await Deno.remove(cache, { recursive: true });
  }
});
