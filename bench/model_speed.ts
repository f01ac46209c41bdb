/**
 * Prefill and decode speed of a backend on a checkpoint (a script, not a test):
 *   deno run -A bench/model_speed.ts --dir /data/presets/mini [--backend reference] [--prompt 32] [--decode 8]
 *     [--batch 1,8,32] [--prefill 32,128,512] [--depth 4096] [--weights-dtype q8] [--threads N]
 * --prefill: prefill rate of one sequence per length; --depth: batch-1 decode after a prompt of that many tokens.
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

function promptOf(model: Model, length: number): number[] {
  return Array.from({ length }, (_, i) => (i * 7919) % Math.min(model.config.vocabSize, 199_998));
}

/** A session with room for `batch` sequences of `tokens` tokens, warmed up by one short forward pass. */
async function warmSession(model: Model, batch: number, tokens: number): Promise<KvSession> {
  const session = new KvSession(model, { blockSize: 16, numBlocks: batch * (Math.ceil((tokens + 2) / 16) + 2) + 4 });
  const warm = session.sequence();
  await session.step([{ seq: warm, tokenIds: [1, 2], logits: "last" }]);
  session.release(warm);
  return session;
}

/** Prefill tokens/s of one sequence of each length (one step each). */
async function measurePrefill(model: Model, lengths: readonly number[]) {
  const session = await warmSession(model, 1, Math.max(...lengths));
  const results = [];
  for (const length of lengths) {
    const seq = session.sequence();
    const start = performance.now();
    await session.step([{ seq, tokenIds: promptOf(model, length), logits: "last" }]);
    const seconds = (performance.now() - start) / 1000;
    session.release(seq);
    results.push({ tokens: length, tokens_per_s: Number((length / seconds).toFixed(3)) });
  }
  return results;
}

/** `batch` sequences prefill `prompt` tokens together (one step), then decode together one token each per step. */
async function measureBatch(model: Model, promptLength: number, decodeSteps: number, batch: number) {
  const session = await warmSession(model, batch, promptLength + decodeSteps);
  const prompt = promptOf(model, promptLength);
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
    prefill_tokens_per_s: Number(((promptLength * batch) / prefillSeconds).toFixed(3)),
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
      prefill: { type: "string" },
      depth: { type: "string" },
      "weights-dtype": { type: "string", default: "bf16" },
      threads: { type: "string" },
    },
  });
  if (!values.dir) throw new Error("Give --dir DIR (generate one with: deno task make-model --preset mini --out DIR)");
  const weights = values["weights-dtype"] as "bf16" | "q8";
  if (weights !== "bf16" && weights !== "q8") throw new Error(`--weights-dtype: bf16 or q8, not ${weights}`);
  const { backend } = await selectBackend(values.backend as "reference", undefined, undefined, {
    native: {
      ...nativeOptionsFromEnv(Deno.env.toObject()),
      weights,
      numThreads: values.threads ? Number(values.threads) : undefined,
    },
  });
  const loadStart = performance.now();
  const checkpoint = Checkpoint.open(values.dir, { mmap: true, populate: true });
  const model = createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  const loadSeconds = (performance.now() - loadStart) / 1000;
  const promptLength = Number(values.prompt), decodeSteps = Number(values.decode);
  const list = (flag: string, text: string) => {
    const numbers = text.split(",").map(Number);
    if (numbers.some((b) => !Number.isInteger(b) || b < 1)) throw new Error(`--${flag}: ${text}`);
    return numbers;
  };
  const runs = [];
  for (const batch of list("batch", values.batch!)) {
    runs.push(await measureBatch(model, promptLength, decodeSteps, batch));
  }
  const prefill = values.prefill ? await measurePrefill(model, list("prefill", values.prefill)) : undefined;
  const depth = values.depth ? list("depth", values.depth)[0] : undefined;
  const atDepth = depth ? { tokens: depth, ...await measureBatch(model, depth, decodeSteps, 1) } : undefined;

  const cuda = backend.name === "cuda" ? await measureCudaBandwidth() : undefined;
  const bandwidth = backend.name === "cuda" ? cuda?.copy : await measureBandwidth(2);
  const bytesPerToken = bytesPerDecodeToken(model.config, backend.name === "native" ? weights : "bf16");
  const ceiling = bandwidth ? bandwidth / bytesPerToken : undefined;
  const single = runs.find((r) => r.batch === 1);
  const report = {
    checkpoint: values.dir,
    backend: backend.name,
    kind: (backend as { kind?: string }).kind,
    weights_dtype: backend.name === "native" ? weights : "bf16",
    layers: model.config.numHiddenLayers,
    load_s: Number(loadSeconds.toFixed(2)),
    prefill_tokens: promptLength,
    decode_tokens: decodeSteps,
    runs,
    prefill,
    decode_at_depth: atDepth,
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
