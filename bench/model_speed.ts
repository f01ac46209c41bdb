/**
 * Prefill and decode speed of a backend on a checkpoint (a script, not a test):
 *   deno run -A bench/model_speed.ts --dir /data/presets/mini [--backend reference] [--prompt 32] [--decode 8]
 * Reports prefill and decode tokens/s, peak RSS, and the decode rate as a fraction of the memory-bandwidth ceiling
 * measured in the same run (bench/membw.c, 2 threads): ceiling = bandwidth ÷ weight bytes read per token (spec §7).
 */
import { parseArgs } from "node:util";
import { selectBackend } from "../src/backends/select.ts";
import { Checkpoint } from "../src/model/checkpoint.ts";
import { bytesPerDecodeToken } from "../src/model/cost.ts";
import { KvSession } from "../src/engine/kv_session.ts";
import { createModel } from "../src/model/gpt_oss.ts";
import { loadWeights } from "../src/model/weights.ts";

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

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
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
  const { backend } = await selectBackend(values.backend as "reference");
  const loadStart = performance.now();
  const checkpoint = Checkpoint.open(values.dir, { mmap: true, populate: true });
  const model = createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  const loadSeconds = (performance.now() - loadStart) / 1000;
  const promptLength = Number(values.prompt), decodeSteps = Number(values.decode);
  const prompt = Array.from({ length: promptLength }, (_, i) => (i * 7919) % Math.min(model.config.vocabSize, 199_998));
  const batch = Number(values.batch);
  const session = new KvSession(model, {
    blockSize: 16,
    numBlocks: batch * (Math.ceil((promptLength + decodeSteps + 2) / 16) + 2),
  });

  // Warm-up: one short forward pass compiles the hot loops.
  const warm = session.sequence();
  await session.step([{ seq: warm, tokenIds: [1, 2], logits: "last" }]);
  session.release(warm);

  // `batch` sequences prefill together, then decode together one token each per step.
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

  const bandwidth = await measureBandwidth(2);
  const bytesPerToken = bytesPerDecodeToken(model.config);
  const decodeRate = (decodeSteps * batch) / decodeSeconds; // output tokens/s over the whole batch
  const ceiling = bandwidth ? bandwidth / bytesPerToken : undefined;
  const report = {
    checkpoint: values.dir,
    backend: backend.name,
    layers: model.config.numHiddenLayers,
    load_s: Number(loadSeconds.toFixed(2)),
    prefill_tokens: promptLength,
    batch,
    prefill_tokens_per_s: Number(((promptLength * batch) / prefillSeconds).toFixed(3)),
    decode_tokens: decodeSteps,
    decode_tokens_per_s: Number(decodeRate.toFixed(3)),
    weight_bytes_per_token: bytesPerToken,
    bandwidth_gb_per_s_2_threads: bandwidth ? Number((bandwidth / 1e9).toFixed(1)) : null,
    decode_ceiling_tokens_per_s: ceiling ? Number(ceiling.toFixed(2)) : null,
    decode_fraction_of_ceiling: ceiling ? Number((decodeRate / ceiling).toFixed(4)) : null,
    peak_rss_gb: Number((peakRssBytes() / 1e9).toFixed(2)),
  };
  console.log(JSON.stringify(report, null, 2));
  backend.dispose(); // with GPTOSS_PROFILE=1 the native backend prints its time per op
}

await main();
