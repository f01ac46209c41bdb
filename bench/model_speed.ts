/**
 * Prefill and decode speed of a backend on a checkpoint (a script, not a test):
 *   deno run -A bench/model_speed.ts --dir /data/presets/mini [--backend reference] [--prompt 32] [--decode 8]
 *     [--batch 1,8,32]
 * Reports prefill and decode tokens/s for each batch size (one model load), peak RSS, and the batch-1 decode rate as
 * a fraction of the memory-bandwidth ceiling measured in the same run: ceiling = bandwidth ÷ weight bytes read per
 * token (spec §7). The bandwidth is bench/membw.c's read rate with 2 threads on the CPU, and bench/cuda_membw.cu's
 * copy rate (bytes read + written; its read-only rate is reported beside it) for --backend cuda.
 */
import { parseArgs } from "node:util";
import { nativeOptionsFromEnv, selectBackend } from "../src/backends/select.ts";
import { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { bytesPerDecodeToken } from "../src/model/cost.ts";
import { KvSession } from "../src/engine/kv_session.ts";
import { createModel, type Model } from "../src/model/gpt_oss.ts";
import { loadWeights } from "../src/checkpoint/load_weights.ts";

function peakRssBytes(): number {
  return Number(/VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"))![1]) * 1024;
}

/** Measures read bandwidth with the C probe (compiled here; needs cc with OpenMP). */
async function measureBandwidth(threads: number): Promise<number | undefined> {
  const source = new URL("./membw.c", import.meta.url).pathname;
  const binary = await Deno.makeTempFile({ prefix: "membw-" });
  const build = await new Deno.Command("cc", { args: ["-O3", "-march=native", "-fopenmp", source, "-o", binary] })
    .output().catch(() => undefined);
  if (!build?.success) return undefined;
  const run = await new Deno.Command(binary, { args: [String(threads)] }).output();
  await Deno.remove(binary);
  return JSON.parse(new TextDecoder().decode(run.stdout)).read_gb_per_s * 1e9;
}

/** The GPU's copy bandwidth from bench/cuda_membw.cu (needs nvcc and a device). */
async function measureCudaBandwidth(): Promise<{ copy: number; read: number } | undefined> {
  const source = new URL("./cuda_membw.cu", import.meta.url).pathname;
  const binary = await Deno.makeTempFile({ prefix: "cuda-membw-" });
  const build = await new Deno.Command("nvcc", { args: ["-O3", "-arch=native", source, "-o", binary] })
    .output().catch(() => undefined);
  if (!build?.success) return undefined;
  const run = await new Deno.Command(binary).output();
  await Deno.remove(binary);
  if (!run.success) return undefined;
  const result = JSON.parse(new TextDecoder().decode(run.stdout));
  return { copy: result.copy_gb_per_s * 1e9, read: result.read_gb_per_s * 1e9 };
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** `batch` sequences prefill together (one step), then decode together one token each per step. */
async function measureBatch(model: Model, prompt: number[], decodeSteps: number, batch: number) {
  const session = new KvSession(model, {
    blockSize: 16,
    numBlocks: batch * (Math.ceil((prompt.length + decodeSteps + 2) / 16) + 2),
  });
  // Warm-up: one short forward pass compiles the hot loops (and, on cuda, its first graph capture comes later).
  const warm = session.sequence();
  await session.step([{ seq: warm, tokenIds: [1, 2], logits: "last" }]);
  session.release(warm);

  const seqs = Array.from({ length: batch }, () => session.sequence());
  const prefillStart = performance.now();
  let logits = await session.step(seqs.map((seq) => ({ seq, tokenIds: prompt, logits: "last" as const })));
  const prefillSeconds = (performance.now() - prefillStart) / 1000;
  const decodeStart = performance.now();
  for (let i = 0; i < decodeSteps; i++) {
    logits = await session.step(
      seqs.map((seq, b) => ({ seq, tokenIds: [argmax(logits[b])], logits: "last" as const })),
    );
  }
  const decodeSeconds = (performance.now() - decodeStart) / 1000;
  for (const seq of seqs) session.release(seq);
  return {
    batch,
    prefill_tokens_per_s: Number(((prompt.length * batch) / prefillSeconds).toFixed(3)),
    decode_tokens_per_s: Number(((decodeSteps * batch) / decodeSeconds).toFixed(3)), // output tokens/s, whole batch
    decode_ms_per_step: Number(((decodeSeconds * 1000) / decodeSteps).toFixed(3)),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      dir: { type: "string" },
      backend: { type: "string", default: "reference" },
      prompt: { type: "string", default: "32" },
      decode: { type: "string", default: "8" },
      batch: { type: "string", default: "1" },
    },
  });
  if (!values.dir) throw new Error("Give --dir DIR (generate one with: deno task make-model --preset mini --out DIR)");
  const { backend } = await selectBackend(values.backend as "reference", undefined, undefined, {
    native: nativeOptionsFromEnv(Deno.env.toObject()),
  });
  const loadStart = performance.now();
  const checkpoint = Checkpoint.open(values.dir, { mmap: true, populate: true });
  const model = createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  const loadSeconds = (performance.now() - loadStart) / 1000;
  const promptLength = Number(values.prompt), decodeSteps = Number(values.decode);
  const prompt = Array.from({ length: promptLength }, (_, i) => (i * 7919) % Math.min(model.config.vocabSize, 199_998));
  const batches = values.batch!.split(",").map(Number);
  if (batches.some((b) => !Number.isInteger(b) || b < 1)) throw new Error(`--batch: ${values.batch}`);
  const runs = [];
  for (const batch of batches) runs.push(await measureBatch(model, prompt, decodeSteps, batch));

  const cuda = backend.name === "cuda" ? await measureCudaBandwidth() : undefined;
  const bandwidth = backend.name === "cuda" ? cuda?.copy : await measureBandwidth(2);
  const bytesPerToken = bytesPerDecodeToken(model.config);
  const ceiling = bandwidth ? bandwidth / bytesPerToken : undefined;
  const single = runs.find((r) => r.batch === 1);
  const report = {
    checkpoint: values.dir,
    backend: backend.name,
    layers: model.config.numHiddenLayers,
    load_s: Number(loadSeconds.toFixed(2)),
    prefill_tokens: promptLength,
    decode_tokens: decodeSteps,
    runs,
    weight_bytes_per_token: bytesPerToken,
    bandwidth_source: backend.name === "cuda" ? "bench/cuda_membw.cu copy (read + write)" : "bench/membw.c, 2 threads",
    bandwidth_gb_per_s: bandwidth ? Number((bandwidth / 1e9).toFixed(1)) : null,
    gpu_read_gb_per_s: cuda ? Number((cuda.read / 1e9).toFixed(1)) : undefined,
    decode_ceiling_tokens_per_s: ceiling ? Number(ceiling.toFixed(2)) : null,
    batch1_decode_fraction_of_ceiling: ceiling && single
      ? Number((single.decode_tokens_per_s / ceiling).toFixed(4))
      : null,
    peak_rss_gb: Number((peakRssBytes() / 1e9).toFixed(2)),
  };
  console.log(JSON.stringify(report, null, 2));
  backend.dispose(); // with GPTOSS_PROFILE=1 the native backend prints its time per op
}

await main();
