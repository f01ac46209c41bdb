/**
 * The native CPU backend's q8 mode (`--weights-dtype q8`) against the reference, within bounds derived from the
 * format. Q8_0 rounds each value of a 32-block to a multiple of s = m / 127 (m = the block's max |v|), so
 * |Δv| ≤ m / 254 and |v̂| ≤ m. Matmul: |w·x − ŵ·x̂| ≤ |Δw|·|x| + |ŵ|·|Δx| ≤ 2·m_w·m_x / 254 per product, i.e.
 * |Δy| ≤ Σ_blocks 64·m_w·m_x / 254. MoE: the MXFP4 weights stay exact and only activations round (into gate_up and
 * into down); the gate/linear errors propagate through SwiGLU as in the f16 WebGPU bound (the clamps are
 * 1-Lipschitz, |∂a/∂g| ≤ 1.1·(|l| + 1), |∂a/∂l| ≤ |g|), and the down projection adds its inputs' errors plus their
 * own rounding. Each bound is computed per output from the exact inputs, plus the f32 tolerance of the exact suite.
 * Every test also asserts that the error is larger than f32 noise: the mode really quantizes. The narrower paths
 * (AVX2, scalar) run in child processes, as in backend_conformance_test.ts.
 */
import { ok as assert } from "node:assert/strict";
import type { Backend, DeviceTensor, DType, MoeWeights } from "../src/backends/backend.ts";
import { createNativeBackend, loadNativeLibrary } from "../src/backends/native/native_backend.ts";
import { GPTOSS_DTYPE } from "../src/backends/native/ffi.ts";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { probeBackends } from "../src/backends/select.ts";
import { dequantizeMxfp4Row, f32ToBf16 } from "../src/formats/numeric.ts";
import { rng as uniform } from "./helpers/random.ts";

const TOLERANCE = { abs: 1e-4, rel: 1e-4 }; // the exact suite's f32 summation-order tolerance
const probe = (await probeBackends({ webgpu: false })).find((p) => p.name === "native")!;
const skip = probe.available ? undefined : probe.reason;
if (skip) console.log(`q8 conformance skipped: ${skip}`);

function random(seed: number, scale = 1): () => number {
  const next = uniform(seed);
  return () => (next() - 0.5) * 2 * scale;
}
const widen = (bits: number) => new Float32Array(new Uint32Array([bits << 16]).buffer)[0];

function input(b: Backend, data: Float32Array | Int32Array, shape: number[]): DeviceTensor {
  const t = b.alloc(shape, data instanceof Int32Array ? "i32" : "f32");
  b.write(t, data);
  return t;
}

/** Block maxima |v| per 32 values of each row of a [rows, k] matrix. */
function blockMax(values: ArrayLike<number>, rows: number, k: number): Float64Array {
  const out = new Float64Array(rows * k / 32);
  for (let i = 0; i < rows * k; i++) {
    const b = Math.floor(i / 32);
    out[b] = Math.max(out[b], Math.abs(values[i]));
  }
  return out;
}

/** Asserts |actual − expected| ≤ bound + f32 tolerance everywhere; returns the worst |Δ| and its share of the bound. */
function within(label: string, actual: Float32Array, expected: Float32Array, bound: Float64Array) {
  let worst = 0, share = 0;
  for (let i = 0; i < expected.length; i++) {
    const limit = bound[i] + TOLERANCE.abs + TOLERANCE.rel * Math.abs(expected[i]);
    const diff = Math.abs(actual[i] - expected[i]);
    assert(diff <= limit, `${label} [${i}]: |Δ| ${diff} > ${limit}`);
    worst = Math.max(worst, diff);
    share = Math.max(share, diff / limit);
  }
  console.log(`${label}: worst |Δ| ${worst.toExponential(2)}, at most ${(share * 100).toFixed(0)}% of its bound`);
  return worst;
}

Deno.test({
  name:
    "native q8: matmul within Σ 64·m_w·m_x / 254 of the reference (tails of rows and tokens, the real q_proj, token chunks)",
  ignore: skip !== undefined,
  fn: async () => {
    const backend = createNativeBackend({ numThreads: 2, isa: Deno.env.get("GPTOSS_CPU_ISA"), weights: "q8" });
    try {
      // 83 tokens of 2,880: two chunks of the prefill loop (80 + 3).
      for (const [tokens, n, k] of [[1, 5, 64], [7, 33, 2880], [5, 4096, 2880], [9, 3, 96], [83, 33, 2880]]) {
        const wNext = random(1 + k, 0.125), xNext = random(2 + n, 2);
        const wBits = Uint16Array.from({ length: n * k }, () => f32ToBf16(wNext()));
        const bias = Uint16Array.from({ length: n }, () => f32ToBf16(wNext()));
        const x = Float32Array.from({ length: tokens * k }, xNext);
        const run = async (b: Backend) => {
          const out = b.alloc([tokens, n], "f32");
          const data = new Uint8Array(wBits.buffer);
          b.ops.matmul(
            out,
            input(b, x, [tokens, k]),
            b.upload({ dtype: "bf16", shape: [n, k], data, use: "matmul" }),
            b.upload({ dtype: "bf16", shape: [n], data: new Uint8Array(bias.buffer) }),
          );
          await b.flush();
          return (await b.read(out)) as Float32Array;
        };
        const expected = await run(createReferenceBackend()), actual = await run(backend);
        const mw = blockMax(Array.from(wBits, widen), n, k), mx = blockMax(x, tokens, k);
        const bound = new Float64Array(tokens * n);
        for (let t = 0; t < tokens; t++) {
          for (let r = 0; r < n; r++) {
            for (let b = 0; b < k / 32; b++) bound[t * n + r] += 64 * mw[r * k / 32 + b] * mx[t * k / 32 + b] / 254;
          }
        }
        const worst = within(`q8 matmul ${tokens}x${n}x${k}`, actual, expected, bound);
        assert(worst > 1e-4, `q8 matmul ${tokens}x${n}x${k}: |Δ| ${worst} is f32-sized: nothing was quantized`);
      }
    } finally {
      backend.dispose();
    }
  },
});

/**
 * Q8_0 of one 32-block by its definition, in f32 steps: s = m / 127 and q = round-half-even(clamp(v · (127 / m),
 * ±127)), m = the largest |v| of the block's non-NaN values; a NaN value gives 0, and a block whose m is 0 or
 * infinite gives all-zero codes with scale m.
 */
function q8Block(values: Float32Array): { q: Int8Array; scale: number } {
  const f = Math.fround;
  let max = 0;
  for (const v of values) if (!Number.isNaN(v)) max = Math.max(max, Math.abs(v));
  const q = new Int8Array(32);
  if (!(max > 0 && Number.isFinite(max))) return { q, scale: max };
  const inverse = f(127 / max);
  for (let j = 0; j < 32; j++) {
    if (Number.isNaN(values[j])) continue;
    const y = Math.min(127, Math.max(-127, f(values[j] * inverse)));
    const floor = Math.floor(y), rest = y - floor;
    q[j] = rest > 0.5 || (rest === 0.5 && floor % 2 !== 0) ? floor + 1 : floor;
  }
  return { q, scale: f(max / 127) };
}

Deno.test({
  name: "native q8: weight quantization is Q8_0 bit for bit (ties to even, zero, NaN and infinite blocks)",
  ignore: skip !== undefined,
  fn: () => {
    const lib = loadNativeLibrary(), s = lib.symbols, out = new BigUint64Array(1);
    const isa = Deno.env.get("GPTOSS_CPU_ISA");
    try {
      assert(s.gptoss_context_create(2, 0, isa ? new TextEncoder().encode(`${isa}\0`) : null, out) === 0);
      const ctx = Deno.UnsafePointer.create(out[0]);
      const [n, k] = [37, 2880];
      const next = random(77, 3);
      const bits = Uint16Array.from({ length: n * k }, () => f32ToBf16(next()));
      const block = (row: number, b: number, values: number[]) => {
        for (let j = 0; j < 32; j++) bits[row * k + b * 32 + j] = f32ToBf16(values[j % values.length]);
      };
      block(0, 0, [0]); // all zero
      block(0, 1, [127, 2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5]); // m = 127: v·(127/m) = v, exact ties
      block(1, 2, [1, Infinity, -2]); // m infinite
      block(2, 3, [4, NaN, -8, 0.25]); // NaN left out of m, quantized to 0
      block(3, 4, [-Infinity]);
      block(4, 5, [NaN]);
      block(5, 6, [-64, 0.75, 63.5, -0.25]);
      assert(s.gptoss_tensor_quantize(ctx, bits, BigInt(n), BigInt(k), GPTOSS_DTYPE.q8_0, out) === 0);
      const tensor = Deno.UnsafePointer.create(out[0]);
      const bytes = new Uint8Array(n * k + n * k / 8);
      assert(s.gptoss_tensor_read(ctx, tensor, bytes, BigInt(bytes.byteLength)) === 0);
      const codes = new Int8Array(bytes.buffer, 0, n * k), scales = new Float32Array(bytes.buffer, n * k, n * k / 32);
      const values = Float32Array.from(bits, widen);
      for (let b = 0; b < n * k / 32; b++) {
        const expected = q8Block(values.subarray(b * 32, b * 32 + 32));
        const got = Array.from(codes.subarray(b * 32, b * 32 + 32));
        assert(
          Object.is(scales[b], expected.scale) && got.every((c, j) => c === expected.q[j]),
          `block ${b}: scale ${scales[b]} codes ${got} ≠ ${expected.scale} ${Array.from(expected.q)}`,
        );
      }
      const ties = Array.from(codes.subarray(32, 40));
      assert(ties.join() === "127,2,4,-2,-4,0,0,2", `ties to even: ${ties}`);
      s.gptoss_context_destroy(ctx);
    } finally {
      lib.close();
    }
  },
});

/** Random MXFP4 experts (scales around 2^-6) as bytes. */
function experts(e: number, h: number, i: number, seed: number) {
  const next = random(seed, 0.5);
  const bytes = (count: number, f: () => number) => Uint8Array.from({ length: count }, f);
  const bf16 = (count: number) =>
    new Uint8Array(Uint16Array.from({ length: count }, () => f32ToBf16(next() / 5)).buffer);
  return {
    gateUpBlocks: bytes(e * 2 * i * h / 2, () => Math.floor((next() + 0.5) * 256)),
    gateUpScales: bytes(e * 2 * i * h / 32, () => 118 + Math.floor((next() + 0.5) * 6)),
    gateUpBias: bf16(e * 2 * i),
    downBlocks: bytes(e * h * i / 2, () => Math.floor((next() + 0.5) * 256)),
    downScales: bytes(e * h * i / 32, () => 118 + Math.floor((next() + 0.5) * 6)),
    downBias: bf16(e * h),
  };
}
type Experts = ReturnType<typeof experts>;

function upload(b: Backend, d: Experts, e: number, h: number, i: number): MoeWeights {
  const up = (dtype: DType, shape: number[], data: Uint8Array) => b.upload({ dtype, shape, data });
  return {
    gateUpBlocks: up("u8", [e, 2 * i, h / 32, 16], d.gateUpBlocks),
    gateUpScales: up("u8", [e, 2 * i, h / 32], d.gateUpScales),
    gateUpBias: up("bf16", [e, 2 * i], d.gateUpBias),
    downBlocks: up("u8", [e, h, i / 32, 16], d.downBlocks),
    downScales: up("u8", [e, h, i / 32], d.downScales),
    downBias: up("bf16", [e, h], d.downBias),
  };
}

/** The propagated bound of one token's MoE output (see the header), from exact f64 intermediates. */
function moeBound(d: Experts, x: Float32Array, ids: Int32Array, route: Float32Array, shape: number[], t: number) {
  const [hidden, inter, topK] = shape, limit = 7;
  const row = new Float32Array(Math.max(hidden, inter));
  const bias = (bytes: Uint8Array, index: number) => widen(new Uint16Array(bytes.buffer)[index]);
  const xt = x.subarray(t * hidden, (t + 1) * hidden), mx = blockMax(xt, 1, hidden);
  const bound = new Float64Array(hidden);
  for (let j = 0; j < topK; j++) {
    const e = ids[t * topK + j];
    const act = new Float64Array(inter), dAct = new Float64Array(inter);
    for (let i = 0; i < inter; i++) {
      const pre = [0, 1].map((half) => {
        const r = e * 2 * inter + 2 * i + half;
        dequantizeMxfp4Row(d.gateUpBlocks, r * hidden / 2, d.gateUpScales, r * hidden / 32, hidden / 32, row);
        let value = bias(d.gateUpBias, r), delta = 0;
        for (let k = 0; k < hidden; k++) {
          value += row[k] * xt[k];
          delta += Math.abs(row[k]) * mx[Math.floor(k / 32)] / 254;
        }
        return { value, delta: delta + 1e-5 };
      });
      const g = Math.min(pre[0].value, limit), l = Math.max(-limit, Math.min(pre[1].value, limit));
      act[i] = g / (1 + Math.exp(-1.702 * g)) * (l + 1);
      dAct[i] = 1.1 * (Math.abs(l) + pre[1].delta + 1) * pre[0].delta + (Math.abs(g) + pre[0].delta) * pre[1].delta;
    }
    // The down projection's inputs round to their (perturbed) block maxima / 254 on top of dAct.
    const ma = blockMax(Array.from(act, (a, i) => Math.abs(a) + dAct[i]), 1, inter);
    for (let r = 0; r < hidden; r++) {
      const w = e * hidden + r;
      dequantizeMxfp4Row(d.downBlocks, w * inter / 2, d.downScales, w * inter / 32, inter / 32, row);
      let delta = 0;
      for (let i = 0; i < inter; i++) delta += Math.abs(row[i]) * (dAct[i] + ma[Math.floor(i / 32)] / 254);
      bound[r] += route[t * topK + j] * delta;
    }
  }
  return bound;
}

Deno.test({
  name: "native q8: moe_mlp with 8-bit activations within the propagated bound (small, real 20b size, 1–20 tokens)",
  ignore: skip !== undefined,
  fn: async () => {
    const backend = createNativeBackend({ numThreads: 2, isa: Deno.env.get("GPTOSS_CPU_ISA"), weights: "q8" });
    try {
      for (
        const [tokens, hidden, inter, numExperts, topK] of [[3, 64, 96, 4, 2], [20, 64, 96, 4, 4], [
          1,
          2880,
          2880,
          4,
          4,
        ]]
      ) {
        const x = Float32Array.from({ length: tokens * hidden }, random(40 + hidden, 2));
        const ids = Int32Array.from({ length: tokens * topK }, (_, i) => (i + Math.floor(i / topK)) % numExperts);
        const route = Float32Array.from({ length: tokens * topK }, (_, i) => (i % topK + 1) / 10);
        const data = experts(numExperts, hidden, inter, 41);
        const run = async (b: Backend) => {
          const out = b.alloc([tokens, hidden], "f32");
          b.ops.moeMlp(
            out,
            input(b, x, [tokens, hidden]),
            input(b, ids, [tokens, topK]),
            input(b, route, [tokens, topK]),
            {
              weights: upload(b, data, numExperts, hidden, inter),
              intermediateSize: inter,
              swigluLimit: 7,
            },
          );
          await b.flush();
          return (await b.read(out)) as Float32Array;
        };
        const expected = await run(createReferenceBackend()), actual = await run(backend);
        const bound = new Float64Array(tokens * hidden);
        for (let t = 0; t < tokens; t++) bound.set(moeBound(data, x, ids, route, [hidden, inter, topK], t), t * hidden);
        const worst = within(`q8 moe T=${tokens} H=${hidden}`, actual, expected, bound);
        assert(worst > 1e-4, `q8 moe T=${tokens} H=${hidden}: |Δ| ${worst} is f32-sized: nothing was quantized`);
      }
    } finally {
      backend.dispose();
    }
  },
});

// The same tests on the narrower paths (the path is fixed per process: one child each).
for (const isa of ["avx2", "scalar"]) {
  Deno.test({
    name: `native q8 (${isa} path): the q8 tests pass`,
    ignore: skip !== undefined || Deno.env.get("GPTOSS_CPU_ISA") !== undefined,
    fn: async () => {
      const result = await new Deno.Command(Deno.execPath(), {
        args: ["test", "-A", "--filter", "native q8: ", new URL(import.meta.url).pathname],
        env: { GPTOSS_CPU_ISA: isa, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(result.stdout) + new TextDecoder().decode(result.stderr);
      assert(result.success && /ok \| 3 passed/.test(text), `exit code ${result.code}\n${text.slice(-3000)}`);
    },
  });
}
