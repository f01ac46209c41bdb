/**
 * WebGPU speed (a script): decode tokens/s on a checkpoint with WebGPU and with the reference backend in the same run,
 * then a per-op table of achieved GB/s on WebGPU at real 20b shapes.
 *   deno run -A bench/webgpu_speed.ts --dir /data/presets/mini [--decode 3] [--dtype f32|f16]
 */
import { parseArgs } from "node:util";
import type { Backend, DeviceTensor } from "../src/backends/backend.ts";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { createWebGpuBackend, requestWebGpu } from "../src/backends/webgpu/webgpu_backend.ts";
import { KvSession } from "../src/engine/kv_session.ts";
import { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { createModel } from "../src/model/gpt_oss.ts";
import { loadWeights } from "../src/checkpoint/load_weights.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { dir: { type: "string" }, decode: { type: "string", default: "3" }, dtype: { type: "string" } },
});
const gpu = await requestWebGpu();
if (!gpu) throw new Error("No WebGPU adapter here");
const precision = values.dtype as "f32" | "f16" | undefined;
console.log(
  `adapter: ${gpu.info.description} (fallback: ${gpu.info.isFallbackAdapter}, shader-f16: ${gpu.info.shaderF16})`,
);

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

async function decodeRate(backend: Backend, dir: string, steps: number): Promise<number> {
  const checkpoint = Checkpoint.open(dir, { mmap: true });
  const model = createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
  const session = new KvSession(model, { blockSize: 16, numBlocks: 4 });
  const seq = session.sequence();
  let [logits] = await session.step([{ seq, tokenIds: [1, 2, 3, 4], logits: "last" }]);
  const started = performance.now();
  for (let i = 0; i < steps; i++) [logits] = await session.step([{ seq, tokenIds: [argmax(logits)], logits: "last" }]);
  return steps / ((performance.now() - started) / 1000);
}

if (values.dir) {
  const steps = Number(values.decode);
  const webgpu = await decodeRate(createWebGpuBackend(gpu.device, gpu.info, { precision }), values.dir, steps);
  const reference = await decodeRate(createReferenceBackend(), values.dir, steps);
  console.log(
    `decode: webgpu ${webgpu.toFixed(3)} tok/s, reference ${reference.toFixed(3)} tok/s, ratio ${
      (webgpu / reference).toFixed(2)
    }`,
  );
}

// Per-op throughput at real 20b shapes, one token (decode), bytes of weights and activations moved per call.
const backend = createWebGpuBackend(gpu.device, gpu.info, { precision });
console.log(`matmul precision: ${backend.precision}`);
const random = (n: number) => {
  const out = new Uint8Array(n);
  let state = 12345;
  for (let i = 0; i < n; i++) out[i] = (state = (Math.imul(state, 1103515245) + 12345) >>> 0) >>> 24;
  return out;
};
const f32 = (shape: number[]) => {
  const t = backend.alloc(shape, "f32");
  backend.write(t, new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.01));
  return t;
};
async function time(name: string, bytes: number, run: () => void): Promise<void> {
  run();
  await backend.flush();
  const started = performance.now();
  const reps = 3;
  for (let i = 0; i < reps; i++) run();
  await backend.flush();
  const seconds = (performance.now() - started) / 1000 / reps;
  console.log(
    `| ${name.padEnd(34)} | ${(seconds * 1000).toFixed(2).padStart(9)} ms | ${
      (bytes / seconds / 1e9).toFixed(2).padStart(7)
    } GB/s |`,
  );
}
console.log("| op (one token, 20b shapes)         |      time |  achieved |");
console.log("| ---------------------------------- | --------- | --------- |");
const x = f32([1, 2880]), q = f32([1, 4096]), out = f32([1, 2880]);
const wq = backend.upload({ dtype: "bf16", shape: [4096, 2880], data: random(4096 * 2880 * 2) });
await time(
  `matmul_bf16w (${backend.precision}) q_proj [4096, 2880]`,
  4096 * 2880 * 2,
  () => backend.ops.matmul(q, x, wq),
);
const wo = backend.upload({ dtype: "bf16", shape: [2880, 4096], data: random(2880 * 4096 * 2) });
await time(
  `matmul_bf16w (${backend.precision}) o_proj [2880, 4096]`,
  2880 * 4096 * 2,
  () => backend.ops.matmul(out, q, wo),
);
const norm = backend.upload({ dtype: "bf16", shape: [2880], data: random(5760) });
await time("rmsnorm_f32_bf16w [2880]", 2880 * 8, () => backend.ops.rmsnorm(out, x, norm, 1e-5));
const e = 8, ids = backend.alloc([1, 4], "i32"), weights = f32([1, 4]);
backend.write(ids, Int32Array.from([0, 2, 5, 7]));
const scales = (n: number) => Uint8Array.from({ length: n }, () => 118 + Math.floor(Math.random() * 4));
const experts = {
  gateUpBlocks: backend.upload({ dtype: "u8", shape: [e, 5760, 90, 16], data: random(e * 5760 * 1440) }),
  gateUpScales: backend.upload({ dtype: "u8", shape: [e, 5760, 90], data: scales(e * 5760 * 90) }),
  gateUpBias: backend.upload({ dtype: "bf16", shape: [e, 5760], data: random(e * 5760 * 2) }),
  downBlocks: backend.upload({ dtype: "u8", shape: [e, 2880, 90, 16], data: random(e * 2880 * 1440) }),
  downScales: backend.upload({ dtype: "u8", shape: [e, 2880, 90], data: scales(e * 2880 * 90) }),
  downBias: backend.upload({ dtype: "bf16", shape: [e, 2880], data: random(e * 2880 * 2) }),
} as Record<string, DeviceTensor>;
await time(
  `moe_mlp_mxfp4w (${backend.precision}) 4 experts`,
  4 * 13_236_480,
  () =>
    backend.ops.moeMlp(out, x, ids, weights, {
      weights: experts as never,
      intermediateSize: 2880,
      swigluLimit: 7,
    }),
);
const vocab = 201_088, logits = f32([1, vocab]), sampleParams = f32([1, 4]), sampled = backend.alloc([1], "i32");
backend.write(sampleParams, Float32Array.from([1, 50, 0.9, 0.5]));
await time(
  "sample_f32 top-k 50, top-p 0.9 [201088]",
  vocab * 4 * 2,
  () => backend.ops.sample!(sampled, logits, sampleParams, undefined),
);
