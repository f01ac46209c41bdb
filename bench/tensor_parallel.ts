/**
 * Tensor and pipeline parallelism on this machine (a script, not a test):
 *   deno run -A bench/tensor_parallel.ts --model DIR [--modes tp1,tp2,tp4,pp2] [--backend native|reference]
 *     [--threads 1 | --total-threads 2] [--save FILE | --against FILE]
 * On a checkpoint with the real hidden sizes (mini: 2880 hidden, 64 heads, 8 KV heads, 32 experts, 4 layers; or the
 * 20b preset), each mode prefills the same 32-token prompt and decodes 8 tokens greedily; every mode's logits must
 * agree with TP = 1's within the f32 tolerance (1e-3 + 1e-5·|ref|) and its ids must be equal. TP = 4 splits the
 * experts' 90 MXFP4 blocks unevenly (22, 23, 22, 23). Decode tokens/s per mode, and the bytes each all-reduce moves.
 * --threads: per rank; --total-threads: shared by a mode's ranks (every mode then uses the same cores: the
 * communicator's overhead shows as the ratio to TP = 1).
 * A model too big to hold twice (the 20b here: 24 GB) runs one mode per process: `--modes tp1 --save F`, then
 * `--modes tp2 --against F`. With 2 cores no speed-up is expected: the point is the communicator's overhead.
 */
import { parseArgs } from "node:util";
import type { Backend } from "../src/backends/backend.ts";
import { createNativeBackend } from "../src/backends/native/native_backend.ts";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { loadPipelineModel, loadTensorParallelModel } from "../src/checkpoint/load_sharded.ts";
import { createKvPoolFor, runStep } from "../src/model/parallel.ts";
import { loadWeights } from "../src/checkpoint/load_weights.ts";
import { createModel, kvPoolSpec, type Model } from "../src/model/gpt_oss.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    modes: { type: "string", default: "tp1,tp2,tp4,pp2" },
    backend: { type: "string", default: "native" },
    threads: { type: "string", default: "1" },
    "total-threads": { type: "string" },
    save: { type: "string" },
    against: { type: "string" },
  },
});
if (!values.model) throw new Error("Give --model DIR (e.g. the mini preset)");
const total = values["total-threads"] ? Number(values["total-threads"]) : undefined;
const threads = Number(values.threads);
/** A backend for one of `ranks` ranks. */
const make = (ranks: number): Backend =>
  values.backend === "native"
    ? createNativeBackend({ numThreads: total ? Math.max(1, Math.floor(total / ranks)) : threads })
    : createReferenceBackend();
const checkpoint = Checkpoint.open(values.model, { mmap: true });
const config = checkpoint.config;
const BLOCKS = { blockSize: 16, numFullBlocks: 16, numSlidingBlocks: 16 };
const table = Int32Array.from({ length: BLOCKS.numFullBlocks }, (_, i) => i);
const prompt = Array.from({ length: 32 }, (_, i) => (i * 7919) % 199_998);
const STEPS = 8;

interface Run {
  readonly ids: number[];
  readonly rows: Float32Array[];
  readonly tokensPerSecond: number;
}

async function decode(model: Model): Promise<Run> {
  const pool = createKvPoolFor(model, kvPoolSpec(config, BLOCKS));
  const step = async (tokenIds: number[], startPosition: number) =>
    (await runStep(model, pool, [{ tokenIds, startPosition, fullBlocks: table, slidingBlocks: table, logits: "last" }]))
      .logits[0];
  let last = await step(prompt, 0);
  const ids: number[] = [];
  const rows: Float32Array[] = [last.slice()];
  const started = performance.now();
  for (let i = 0; i < STEPS; i++) {
    let best = 0;
    for (let v = 1; v < last.length; v++) if (last[v] > last[best]) best = v;
    ids.push(best);
    last = await step([best], prompt.length + i);
    rows.push(last.slice());
  }
  return { ids, rows, tokensPerSecond: STEPS / ((performance.now() - started) / 1000) };
}

/** The model of a mode ("tp1", "tp<N>", "pp<N>") on fresh backends, and those backends. */
async function build(mode: string): Promise<{ model: Model; backends: Backend[] }> {
  const n = Number(mode.slice(2));
  const backends = Array.from({ length: n }, () => make(n));
  if (mode === "tp1") {
    return { model: createModel(config, await loadWeights(checkpoint, backends[0]), backends[0]), backends };
  }
  const model = mode.startsWith("tp")
    ? loadTensorParallelModel(checkpoint, backends)
    : loadPipelineModel(checkpoint, backends);
  return { model, backends };
}

async function save(path: string, run: Run): Promise<void> {
  const header = new TextEncoder().encode(JSON.stringify({ ids: run.ids, tokensPerSecond: run.tokensPerSecond }));
  const out = new Uint8Array(4 + header.length + run.rows.length * config.vocabSize * 4);
  new DataView(out.buffer).setUint32(0, header.length, true);
  out.set(header, 4);
  run.rows.forEach((row, i) =>
    out.set(new Uint8Array(row.buffer, row.byteOffset, row.byteLength), 4 + header.length + i * row.byteLength)
  );
  await Deno.writeFile(path, out);
}

async function load(path: string): Promise<Run> {
  const bytes = await Deno.readFile(path);
  const length = new DataView(bytes.buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + length)));
  const floats = new Float32Array(bytes.slice(4 + length).buffer);
  const rows = Array.from(
    { length: STEPS + 1 },
    (_, i) => floats.slice(i * config.vocabSize, (i + 1) * config.vocabSize),
  );
  return { ids: header.ids, rows, tokensPerSecond: header.tokensPerSecond };
}

function compare(label: string, got: Run, ref: Run): void {
  let worst = 0, within = true;
  ref.rows.forEach((row, i) => {
    for (let v = 0; v < row.length; v++) {
      const d = Math.abs(row[v] - got.rows[i][v]);
      worst = Math.max(worst, d);
      if (!(d <= 1e-3 + 1e-5 * Math.abs(row[v]))) within = false;
    }
  });
  console.log(
    `${label}: greedy ids ${JSON.stringify(got.ids) === JSON.stringify(ref.ids) ? "equal" : "DIFFER"}; worst ` +
      `|Δlogit| vs TP=1 ${worst.toExponential(2)} (${within ? "within" : "OUTSIDE"} 1e-3 + 1e-5·|ref|); decode ` +
      `${got.tokensPerSecond.toFixed(2)} tok/s (${(got.tokensPerSecond / ref.tokensPerSecond).toFixed(2)}× TP=1)`,
  );
}

let reference = values.against ? await load(values.against) : undefined;
console.log(
  `${values.model} on ${values.backend}, ${total ? `${total} threads shared by the ranks` : `${threads} per rank`}`,
);
for (const mode of values.modes.split(",")) {
  const { model, backends } = await build(mode);
  const run = await decode(model);
  backends.forEach((b) => b.dispose());
  if (mode === "tp1") {
    console.log(`tp1: decode ${run.tokensPerSecond.toFixed(2)} tok/s; ids ${JSON.stringify(run.ids)}`);
    reference ??= run;
    if (values.save) await save(values.save, run);
    continue;
  }
  if (!reference) throw new Error("Run tp1 first (in this process, or give --against FILE)");
  compare(mode, run, reference);
  if (mode.startsWith("tp")) {
    const n = Number(mode.slice(2));
    console.log(
      `  traffic per token per rank: ${2 * config.numHiddenLayers} all-reduces of ${config.hiddenSize * 4} bytes, ` +
        `plus an all-gather of ${(config.vocabSize / n) * 4} bytes of logits`,
    );
  }
}
checkpoint.close();
