/**
 * Latency of one request on each backend available here: time to first token (a 32-token prompt, prefill and the
 * first logits), inter-token latency (one decode step of one sequence) and a 128-token prefill, on the built-in demo
 * model (generated into a temp dir) with the reference backend as the baseline of each group, so `deno task bench`
 * prints how many times faster each backend is. With GPTOSS_BENCH_DIR=<a checkpoint dir> (e.g. the mini preset from
 * `deno task make-model --preset mini --out DIR`) the same groups run on it for the native backend, exact (baseline)
 * vs q8. The side-by-side comparison with llama.cpp is bench/vs_llamacpp.ts.
 */
import type { Backend, BackendName } from "../src/backends/backend.ts";
import { probeBackends, selectBackend } from "../src/backends/select.ts";
import { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { loadWeights } from "../src/checkpoint/load_weights.ts";
import { KvSession, type SessionSequence } from "../src/engine/kv_session.ts";
import { createModel } from "../src/model/gpt_oss.ts";
import { generateCheckpoint } from "../src/tools/synthetic.ts";

const demoDir = await Deno.makeTempDir({ prefix: "gptoss-latency-" });
await generateCheckpoint("tiny-random", demoDir, { seed: 0 });
globalThis.addEventListener("unload", () => Deno.removeSync(demoDir, { recursive: true }));

interface Subject {
  readonly label: string;
  readonly backend: Backend;
  readonly baseline: boolean;
}

/** The three latency benches of one backend on one checkpoint. */
async function register(dir: string, model: string, subject: Subject): Promise<void> {
  const checkpoint = Checkpoint.open(dir, { mmap: true });
  const m = createModel(checkpoint.config, await loadWeights(checkpoint, subject.backend), subject.backend);
  const session = new KvSession(m, { blockSize: 16, numBlocks: 256 });
  const prompt = (n: number) => Array.from({ length: n }, (_, i) => (i * 7919) % Math.min(m.config.vocabSize, 199_998));
  const run = async (tokens: number[]) => {
    const seq = session.sequence();
    await session.step([{ seq, tokenIds: tokens, logits: "last" }]);
    session.release(seq);
  };
  let decoding: SessionSequence | undefined;
  let length = 0;
  const options = { baseline: subject.baseline, warmup: 2, n: 10 };
  Deno.bench(
    { name: `${model}: TTFT, 32-token prompt: ${subject.label}`, group: `${model} TTFT`, ...options },
    async () => await run(prompt(32)), // an async function: Deno.bench awaits only those
  );
  Deno.bench(
    { name: `${model}: prefill 128 tokens: ${subject.label}`, group: `${model} prefill`, ...options },
    async () => await run(prompt(128)),
  );
  Deno.bench(
    { name: `${model}: inter-token latency: ${subject.label}`, group: `${model} ITL`, ...options },
    async () => {
      if (!decoding || length > 1000) { // a fresh sequence now and then keeps the context short and the pool small
        if (decoding) session.release(decoding);
        decoding = session.sequence();
        await session.step([{ seq: decoding, tokenIds: prompt(8), logits: "last" }]);
        length = 8;
      }
      await session.step([{ seq: decoding, tokenIds: [length % 1000], logits: "last" }]);
      length++;
    },
  );
}

const available = (await probeBackends()).filter((p) => p.available && p.name !== "cuda").map((p) => p.name);
for (const name of ["reference", "native", "webgpu"] as BackendName[]) {
  if (!available.includes(name)) {
    console.error(`latency_bench: ${name} is not available here; skipped`);
    continue;
  }
  const { backend } = await selectBackend(name);
  await register(demoDir, "demo", { label: name, backend, baseline: name === "reference" });
}

const dir = Deno.env.get("GPTOSS_BENCH_DIR");
if (dir && available.includes("native")) {
  for (const weights of ["bf16", "q8"] as const) {
    const { backend } = await selectBackend("native", undefined, undefined, { native: { weights } });
    await register(dir, "checkpoint", { label: `native ${weights}`, backend, baseline: weights === "bf16" });
  }
}
