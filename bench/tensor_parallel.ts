/**
 * Tensor parallelism on this machine (a script, not a test):
 *   deno run -A bench/tensor_parallel.ts --model DIR [--backend native|reference] [--threads 1]
 * On a checkpoint with the real hidden sizes (the mini preset: 2880 hidden, 64 heads, 8 KV heads, 32 experts, 4 layers:
 * `deno task make-model --preset mini --out DIR`), TP = 1 and TP = 2 (ranks in one process, each its own context)
 * prefill the same 32-token prompt and decode 8 tokens greedily: the logits must agree within the f32 tolerance and the
 * ids must be equal. Then decode tokens/s of both, and the bytes each all-reduce moves per token; then PP = 2 (two
 * stages). With 2 cores no speed-up is expected: the point is the communicator's overhead.
 */
import { parseArgs } from "node:util";
import type { Backend } from "../src/backends/backend.ts";
import { createNativeBackend } from "../src/backends/native/native_backend.ts";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { loadPipelineModel, loadShardedWeights } from "../src/checkpoint/load_sharded.ts";
import { createKvPoolFor, runStep } from "../src/model/parallel.ts";
import { loadWeights } from "../src/checkpoint/load_weights.ts";
import { createModel, forward, kvPoolSpec, type StepSequence } from "../src/model/gpt_oss.ts";
import { forwardTensorParallel, HostCommunicator, shardConfig } from "../src/model/tensor_parallel.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    backend: { type: "string", default: "native" },
    threads: { type: "string", default: "1" },
  },
});
if (!values.model) throw new Error("Give --model DIR (e.g. the mini preset)");
const threads = Number(values.threads);
const make = (): Backend =>
  values.backend === "native" ? createNativeBackend({ numThreads: threads }) : createReferenceBackend();
const checkpoint = Checkpoint.open(values.model, { mmap: true });
const config = checkpoint.config;
const BLOCKS = { blockSize: 16, numFullBlocks: 16, numSlidingBlocks: 16 };
const table = Int32Array.from({ length: BLOCKS.numFullBlocks }, (_, i) => i);
const prompt = Array.from({ length: 32 }, (_, i) => (i * 7919) % 199_998);

async function decode(step: (seq: StepSequence) => Promise<Float32Array>, tokens: number) {
  const prefill = await step({
    tokenIds: prompt,
    startPosition: 0,
    fullBlocks: table,
    slidingBlocks: table,
    logits: "last",
  });
  const ids: number[] = [];
  const rows: Float32Array[] = [prefill.slice()];
  let last = prefill;
  const started = performance.now();
  for (let i = 0; i < tokens; i++) {
    let best = 0;
    for (let v = 1; v < last.length; v++) if (last[v] > last[best]) best = v;
    ids.push(best);
    last = await step({
      tokenIds: [best],
      startPosition: prompt.length + i,
      fullBlocks: table,
      slidingBlocks: table,
      logits: "last",
    });
    rows.push(last.slice());
  }
  return { ids, rows, tokensPerSecond: tokens / ((performance.now() - started) / 1000) };
}

const single = make();
const whole = createModel(config, await loadWeights(checkpoint, single), single);
const wholePool = single.createKvPool(kvPoolSpec(config, BLOCKS));
const one = await decode(async (seq) => (await forward(whole, wholePool, [seq]))[0], 8);
single.dispose();

const rankConfig = shardConfig(config, 2);
const backends = [make(), make()];
const ranks = backends.map((b, r) => createModel(rankConfig, loadShardedWeights(checkpoint, b, r, 2), b));
const pools = backends.map((b) => b.createKvPool(kvPoolSpec(rankConfig, BLOCKS)));
const comm = new HostCommunicator(2);
const two = await decode(async (seq) => (await forwardTensorParallel(ranks, pools, [seq], comm))[0], 8);

let worst = 0, bound = true;
one.rows.forEach((row, i) => {
  for (let v = 0; v < row.length; v++) {
    const d = Math.abs(row[v] - two.rows[i][v]);
    worst = Math.max(worst, d);
    if (!(d <= 1e-3 + 1e-5 * Math.abs(row[v]))) bound = false;
  }
});
const perToken = 2 * config.numHiddenLayers * config.hiddenSize * 4;
console.log(
  `${values.model} on ${values.backend} (${threads} thread(s) per rank): greedy ids ${
    JSON.stringify(one.ids) === JSON.stringify(two.ids) ? "equal" : "DIFFER"
  }; worst |Δlogit| TP=2 vs TP=1 ${worst.toExponential(2)} (${bound ? "within" : "OUTSIDE"} 1e-3 + 1e-5·|ref|)`,
);
console.log(
  `decode: TP=1 ${one.tokensPerSecond.toFixed(2)} tok/s, TP=2 ${two.tokensPerSecond.toFixed(2)} tok/s (${
    (two.tokensPerSecond / one.tokensPerSecond).toFixed(2)
  }×); all-reduces per token: ${2 * config.numHiddenLayers} of ${config.hiddenSize * 4} bytes per rank (${
    perToken / 1024
  } KiB per rank per token), plus the logits all-gather (${config.vocabSize * 4 / 1024} KiB)`,
);
backends.forEach((b) => b.dispose());

// Pipeline: two stages of half the layers each.
const stageBackends = [make(), make()];
const group = loadPipelineModel(checkpoint, stageBackends);
const groupPool = createKvPoolFor(group, kvPoolSpec(config, BLOCKS));
const staged = await decode(async (seq) => (await runStep(group, groupPool, [seq])).logits[0], 8);
const same = staged.rows.every((row, i) => row.every((v, j) => v === one.rows[i][j]));
console.log(
  `pipeline: PP=2 logits ${same ? "identical to" : "DIFFERENT from"} PP=1; decode ${
    staged.tokensPerSecond.toFixed(2)
  } tok/s (${(staged.tokensPerSecond / one.tokensPerSecond).toFixed(2)}×; one sequence: the stages take turns), ` +
    `${config.hiddenSize * 4} bytes of activations per token between the stages`,
);
stageBackends.forEach((b) => b.dispose());
checkpoint.close();
