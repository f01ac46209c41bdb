/** Loading checkpoints: golden fixtures, layouts, typed errors, the synthetic generator. */
import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { CheckpointError } from "../src/errors.ts";
import { dequantizeMxfp4 } from "../src/formats/numeric.ts";
import { Checkpoint, expectedTensors } from "../src/checkpoint/checkpoint.ts";
import { parseHfConfig } from "../src/model/config.ts";
import { resolveModel } from "../src/checkpoint/resolve.ts";
import { SafetensorsSet } from "../src/checkpoint/safetensors.ts";
import { bytesSource, writeSafetensors } from "../src/checkpoint/safetensors_writer.ts";
import { generateCheckpoint, presetConfig, shardPlan } from "../src/tools/synthetic.ts";
import { GOLDEN_ROOT } from "./helpers/golden.ts";

async function sha256Hex(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Independent bf16 decoding: sign, exponent and mantissa by arithmetic, no bit reinterpretation. */
function bf16Independent(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 7) & 0xff;
  const mantissa = bits & 0x7f;
  if (exponent === 0) return sign * mantissa * 2 ** -133;
  if (exponent === 0xff) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 128) * 2 ** (exponent - 127);
}

/** Independent E2M1 decoding of one nibble: bit 3 sign, bits 2–1 exponent (bias 1), bit 0 mantissa. */
function fp4Independent(nibble: number): number {
  const sign = nibble & 8 ? -1 : 1;
  const exponent = (nibble >> 1) & 3;
  const mantissa = nibble & 1;
  return sign * (exponent === 0 ? mantissa * 0.5 : (1 + mantissa / 2) * 2 ** (exponent - 1));
}

/** Reads a tensor straight from the file with its own header parse (no project code involved). */
function rawTensor(path: string, name: string): { bytes: Uint8Array; shape: number[] } {
  const file = Deno.readFileSync(path);
  const headerLength = Number(new DataView(file.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + headerLength)));
  const [begin, end] = header[name].data_offsets;
  return { bytes: file.slice(8 + headerLength + begin, 8 + headerLength + end), shape: header[name].shape };
}

for (const fixture of ["tiny", "tiny-fullvocab"]) {
  Deno.test(`golden ${fixture}: MANIFEST.sha256 verifies`, async () => {
    const dir = `${GOLDEN_ROOT}${fixture}`;
    const lines = Deno.readTextFileSync(`${dir}/MANIFEST.sha256`).trim().split("\n");
    assert(lines.length >= 5);
    for (const line of lines) {
      const [hash, file] = line.split(/\s+\*?/);
      assertEquals(await sha256Hex(`${dir}/${file}`), hash, file);
    }
  });

  Deno.test(`golden ${fixture}: bf16 and dequantized MXFP4 tensors match values decoded independently`, () => {
    const dir = `${GOLDEN_ROOT}${fixture}`;
    const checkpoint = Checkpoint.open(dir);
    try {
      for (
        const name of ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.sinks", "lm_head.weight"]
      ) {
        const ours = new Uint16Array(checkpoint.read(name).buffer);
        const raw = rawTensor(`${dir}/model.safetensors`, name);
        const rawView = new DataView(raw.bytes.buffer);
        for (let i = 0; i < ours.length; i++) {
          assertEquals(bf16Independent(ours[i]), bf16Independent(rawView.getUint16(2 * i, true)));
        }
      }
      for (const kind of ["gate_up_proj", "down_proj"]) {
        const name = `model.layers.1.mlp.experts.${kind}`;
        const blocks = checkpoint.read(`${name}_blocks`);
        const scales = checkpoint.read(`${name}_scales`);
        const ours = dequantizeMxfp4(blocks, scales);
        const raw = rawTensor(`${dir}/model.safetensors`, `${name}_blocks`);
        const rawScales = rawTensor(`${dir}/model.safetensors`, `${name}_scales`).bytes;
        const [experts, rows, groups] = raw.shape;
        let codesSeen = 0;
        for (let e = 0; e < experts; e++) {
          for (let r = 0; r < rows; r++) {
            for (let k = 0; k < groups * 32; k++) {
              const g = Math.floor(k / 32), j = k % 32;
              const byte = raw.bytes[((e * rows + r) * groups + g) * 16 + Math.floor(j / 2)];
              const nibble = j % 2 === 0 ? byte & 0x0f : byte >> 4; // low nibble = even element
              codesSeen |= 1 << nibble;
              const expected = fp4Independent(nibble) * 2 ** (rawScales[(e * rows + r) * groups + g] - 127);
              const actual = ours[((e * rows + r) * groups * 32) + k];
              if (!Object.is(actual, expected) && actual !== expected) {
                throw new Error(`${name}[${e},${r},${k}] = ${actual}, expected ${expected}`);
              }
            }
          }
        }
        assertEquals(codesSeen, 0xffff, "all 16 codes occur");
      }
    } finally {
      checkpoint.close();
    }
  });
}

Deno.test("MXFP4 spec test vector: byte 0x2F gives (−6, +1) at scale 127 and (−0.046875, 0.0078125) at 120", () => {
  const blocks = new Uint8Array(32);
  blocks[0] = 0x2f;
  blocks[16] = 0x2f;
  const values = dequantizeMxfp4(blocks, new Uint8Array([127, 120]));
  assertEquals([values[0], values[1]], [-6, 1]);
  assertEquals([values[32], values[33]], [-0.046875, 0.0078125]);
});

Deno.test("golden tiny/sharded holds exactly the single file's tensors, resolved through weight_map", () => {
  const single = Checkpoint.open(`${GOLDEN_ROOT}tiny`);
  const sharded = Checkpoint.open(`${GOLDEN_ROOT}tiny/sharded`);
  try {
    assertEquals(sharded.files.files.length, 3);
    for (const spec of expectedTensors(single.config)) assertEquals(sharded.read(spec.name), single.read(spec.name));
  } finally {
    single.close();
    sharded.close();
  }
});

Deno.test("config.json: rope_scaling.truncate missing means false; other model types are refused", () => {
  const json = JSON.parse(Deno.readTextFileSync(`${GOLDEN_ROOT}tiny/config.json`));
  delete json.rope_scaling.truncate;
  assertEquals(parseHfConfig(json, "c.json").ropeScaling.truncate, false);
  assertEquals(parseHfConfig(json, "c.json").layerIsSliding, [true, false, true, false]);
  assertThrows(
    () => parseHfConfig({ ...json, model_type: "llama" }, "c.json"),
    (err: Error) => err instanceof CheckpointError && err.kind === "unsupported_model" && /"llama"/.test(err.message),
  );
  assertThrows(() => parseHfConfig({ ...json, hidden_size: "x" }, "c.json"), /field "hidden_size"/);
});

async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for (const entry of Deno.readDirSync(from)) {
    if (entry.isFile) await Deno.copyFile(`${from}/${entry.name}`, `${to}/${entry.name}`);
  }
  for (const entry of Deno.readDirSync(to)) await Deno.chmod(`${to}/${entry.name}`, 0o644);
}

function assertCheckpointError(fn: () => unknown, kind: string, pattern: RegExp): void {
  assertThrows(fn, (err: Error) => {
    assert(err instanceof CheckpointError, `expected CheckpointError, got ${err}`);
    assertEquals(err.kind, kind, err.message);
    assert(pattern.test(err.message), err.message);
    return true;
  });
}

Deno.test("damaged sharded checkpoints give typed errors naming the file and the tensor", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await copyDir(`${GOLDEN_ROOT}tiny/sharded`, dir);
    const index = JSON.parse(Deno.readTextFileSync(`${dir}/model.safetensors.index.json`));
    // A shard the index names is missing.
    await Deno.rename(`${dir}/model-00001-of-00002.safetensors`, `${dir}/gone`);
    assertCheckpointError(
      () => Checkpoint.open(dir),
      "shard_missing",
      /names shard "model-00001-of-00002.safetensors"/,
    );
    await Deno.rename(`${dir}/gone`, `${dir}/model-00001-of-00002.safetensors`);
    // The index names a tensor in a shard that does not hold it.
    const [name, shard] = Object.entries(index.weight_map as Record<string, string>)[0];
    const other = shard === "model-00000-of-00002.safetensors"
      ? "model-00001-of-00002.safetensors"
      : "model-00000-of-00002.safetensors";
    Deno.writeTextFileSync(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ ...index, weight_map: { ...index.weight_map, [name]: other } }),
    );
    assertCheckpointError(() => Checkpoint.open(dir), "tensor_missing", new RegExp(name.replaceAll(".", "\\.")));
    // A tensor missing altogether.
    const reduced = { ...index.weight_map };
    delete reduced["model.norm.weight"];
    Deno.writeTextFileSync(`${dir}/model.safetensors.index.json`, JSON.stringify({ ...index, weight_map: reduced }));
    const shardOfNorm = index.weight_map["model.norm.weight"];
    const set = SafetensorsSet.openFile(`${dir}/${shardOfNorm}`);
    const kept = set.names().filter((n) => n !== "model.norm.weight").map((n) => {
      const info = set.info(n);
      return bytesSource(n, info.dtype, info.shape, set.read(n).bytes);
    });
    set.close();
    await writeSafetensors(`${dir}/${shardOfNorm}`, kept);
    assertCheckpointError(() => Checkpoint.open(dir), "tensor_missing", /"model\.norm\.weight" is missing/);
    // A tensor present in two shards.
    await writeSafetensors(`${dir}/${shardOfNorm}`, [
      ...kept,
      bytesSource("model.norm.weight", "BF16", [64], new Uint8Array(128)),
    ]);
    const normDuplicate = bytesSource("model.norm.weight", "BF16", [64], new Uint8Array(128));
    const otherShard = shardOfNorm === "model-00002-of-00002.safetensors"
      ? "model-00000-of-00002.safetensors"
      : "model-00002-of-00002.safetensors";
    const otherSet = SafetensorsSet.openFile(`${dir}/${otherShard}`);
    const otherTensors = otherSet.names().map((n) =>
      bytesSource(n, otherSet.info(n).dtype, otherSet.info(n).shape, otherSet.read(n).bytes)
    );
    otherSet.close();
    await writeSafetensors(`${dir}/${otherShard}`, [...otherTensors, normDuplicate]);
    Deno.writeTextFileSync(`${dir}/model.safetensors.index.json`, JSON.stringify(index));
    assertCheckpointError(() => Checkpoint.open(dir), "tensor_duplicate", /present in two shards/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a tensor whose shape disagrees with config.json is a shape_mismatch naming both", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await copyDir(`${GOLDEN_ROOT}tiny`, dir);
    const config = JSON.parse(Deno.readTextFileSync(`${dir}/config.json`));
    Deno.writeTextFileSync(`${dir}/config.json`, JSON.stringify({ ...config, num_local_experts: 16 }));
    assertCheckpointError(() => Checkpoint.open(dir), "shape_mismatch", /config\.json implies/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the original/ layout (fused qkv, OpenAI names) loads as the same weights", async () => {
  const root = await Deno.makeTempDir();
  const hf = Checkpoint.open(`${GOLDEN_ROOT}tiny`);
  try {
    const c = hf.config;
    const sources = [];
    const renames: Array<[string, string]> = [
      ["model.embed_tokens.weight", "embedding.weight"],
      ["model.norm.weight", "norm.scale"],
      ["lm_head.weight", "unembedding.weight"],
    ];
    for (let n = 0; n < c.numHiddenLayers; n++) {
      const p = `model.layers.${n}.`, b = `block.${n}.`;
      renames.push(
        [p + "input_layernorm.weight", b + "attn.norm.scale"],
        [p + "self_attn.sinks", b + "attn.sinks"],
        [p + "self_attn.o_proj.weight", b + "attn.out.weight"],
        [p + "self_attn.o_proj.bias", b + "attn.out.bias"],
        [p + "post_attention_layernorm.weight", b + "mlp.norm.scale"],
        [p + "mlp.router.weight", b + "mlp.gate.weight"],
        [p + "mlp.router.bias", b + "mlp.gate.bias"],
        [p + "mlp.experts.gate_up_proj_blocks", b + "mlp.mlp1_weight.blocks"],
        [p + "mlp.experts.gate_up_proj_scales", b + "mlp.mlp1_weight.scales"],
        [p + "mlp.experts.gate_up_proj_bias", b + "mlp.mlp1_bias"],
        [p + "mlp.experts.down_proj_blocks", b + "mlp.mlp2_weight.blocks"],
        [p + "mlp.experts.down_proj_scales", b + "mlp.mlp2_weight.scales"],
        [p + "mlp.experts.down_proj_bias", b + "mlp.mlp2_bias"],
      );
      for (const part of ["weight", "bias"]) {
        const pieces = ["q", "k", "v"].map((x) => hf.read(`${p}self_attn.${x}_proj.${part}`));
        const fused = new Uint8Array(pieces.reduce((s, x) => s + x.length, 0));
        let offset = 0;
        for (const piece of pieces) {
          fused.set(piece, offset);
          offset += piece.length;
        }
        const rows = (c.numAttentionHeads + 2 * c.numKeyValueHeads) * c.headDim;
        sources.push(
          bytesSource(`${b}attn.qkv.${part}`, "BF16", part === "weight" ? [rows, c.hiddenSize] : [rows], fused),
        );
      }
    }
    for (const [from, to] of renames) {
      const spec = hf.spec(from);
      sources.push(bytesSource(to, spec.dtype, spec.shape, hf.read(from)));
    }
    await Deno.mkdir(`${root}/original`);
    await writeSafetensors(`${root}/original/model.safetensors`, sources);
    Deno.writeTextFileSync(
      `${root}/original/config.json`,
      JSON.stringify({
        num_hidden_layers: c.numHiddenLayers,
        num_experts: c.numLocalExperts,
        experts_per_token: c.numExpertsPerTok,
        vocab_size: c.vocabSize,
        hidden_size: c.hiddenSize,
        intermediate_size: c.intermediateSize,
        swiglu_limit: 7.0,
        head_dim: c.headDim,
        num_attention_heads: c.numAttentionHeads,
        num_key_value_heads: c.numKeyValueHeads,
        sliding_window: c.slidingWindow,
        initial_context_length: 4096,
        rope_theta: 150000.0,
        rope_scaling_factor: 32.0,
        rope_ntk_alpha: 1.0,
        rope_ntk_beta: 32.0,
      }),
    );
    const original = Checkpoint.open(root);
    try {
      assertEquals(original.config.layout, "original");
      for (const spec of expectedTensors(c)) assertEquals(original.read(spec.name), hf.read(spec.name), spec.name);
    } finally {
      original.close();
    }
  } finally {
    hf.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("generator → reader round trip: tiny and tiny-random are deterministic per seed and load", async () => {
  const root = await Deno.makeTempDir();
  try {
    for (const preset of ["tiny", "tiny-random"] as const) {
      await generateCheckpoint(preset, `${root}/${preset}-a`, { seed: 7 });
      await generateCheckpoint(preset, `${root}/${preset}-b`, { seed: 7 });
      await generateCheckpoint(preset, `${root}/${preset}-c`, { seed: 8 });
      const a = Checkpoint.open(`${root}/${preset}-a`);
      const b = Checkpoint.open(`${root}/${preset}-b`);
      const c = Checkpoint.open(`${root}/${preset}-c`);
      try {
        assertEquals(a.config, presetConfig(preset));
        const name = "model.layers.1.mlp.experts.gate_up_proj_blocks";
        assertEquals(a.read(name), b.read(name));
        assert(!a.read(name).every((x, i) => x === c.read(name)[i]), "another seed gives other values");
        const scales = a.read("model.layers.1.mlp.experts.gate_up_proj_scales");
        const values = dequantizeMxfp4(a.read(name), scales);
        let codes = 0;
        for (const byte of a.read(name)) codes |= (1 << (byte & 15)) | (1 << (byte >> 4));
        assertEquals(codes, 0xffff, "all 16 FP4 codes occur");
        assert(new Set(scales).size >= 3, "scales are spread");
        const std = Math.sqrt(values.reduce((s, x) => s + x * x, 0) / values.length);
        assert(std > 0.3 / Math.sqrt(a.config.hiddenSize) && std < 3 / Math.sqrt(a.config.hiddenSize), `std ${std}`);
      } finally {
        a.close();
        b.close();
        c.close();
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("the 20b and 120b presets have the release's files, tensor names, shapes, dtypes and total_size", async () => {
  const root = await Deno.makeTempDir();
  try {
    for (
      const [preset, files, tensors, totalSize] of [
        ["20b", 3, 459, 13_761_264_768],
        ["120b", 15, 687, 65_248_815_744],
      ] as const
    ) {
      assertEquals(shardPlan(preset).length, files);
      // Real headers over sparse data: the whole reader runs on full-size files without writing 14 GB.
      await generateCheckpoint(preset, `${root}/${preset}`, { sparse: true });
      const index = JSON.parse(Deno.readTextFileSync(`${root}/${preset}/model.safetensors.index.json`));
      assertEquals(index.metadata.total_size, totalSize);
      assertEquals(Object.keys(index.weight_map).length, tensors);
      const checkpoint = Checkpoint.open(`${root}/${preset}`);
      try {
        assertEquals(checkpoint.files.files.map((f) => f.split("/").pop()), shardPlan(preset).map((s) => s.file));
        assertEquals(checkpoint.files.totalBytes(), totalSize);
        const e = preset === "20b" ? 32 : 128;
        const last = preset === "20b" ? 23 : 35;
        const info = (n: string) => [checkpoint.files.info(n).dtype, checkpoint.files.info(n).shape];
        assertEquals(info(`model.layers.${last}.mlp.experts.gate_up_proj_blocks`), ["U8", [e, 5760, 90, 16]]);
        assertEquals(info(`model.layers.${last}.mlp.experts.down_proj_scales`), ["U8", [e, 2880, 90]]);
        assertEquals(info("model.layers.0.self_attn.q_proj.weight"), ["BF16", [4096, 2880]]);
        assertEquals(info("model.layers.0.self_attn.sinks"), ["BF16", [64]]);
        assertEquals(info("lm_head.weight"), ["BF16", [201088, 2880]]);
      } finally {
        checkpoint.close();
      }
      assertEquals(shardPlan(preset)[0].file, `model-00000-of-${String(files - 1).padStart(5, "0")}.safetensors`);
      await Deno.remove(`${root}/${preset}`, { recursive: true });
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("resolveModel() finds Hub cache snapshots through refs/main and names every place looked", async () => {
  const home = await Deno.makeTempDir();
  try {
    const repo = `${home}/hf/hub/models--openai--gpt-oss-20b`;
    await Deno.mkdir(`${repo}/snapshots/abc123`, { recursive: true });
    await Deno.mkdir(`${repo}/refs`, { recursive: true });
    Deno.writeTextFileSync(`${repo}/refs/main`, "abc123");
    Deno.writeTextFileSync(`${repo}/snapshots/abc123/config.json`, "{}");
    for (const spec of ["20b", "openai/gpt-oss-20b", "gpt-oss-20b"]) {
      const resolved = resolveModel(spec, { HF_HOME: `${home}/hf`, HOME: "/nonexistent" });
      assertEquals(resolved, { dir: `${repo}/snapshots/abc123`, modelId: "gpt-oss-20b" });
    }
    assertEquals(resolveModel(`${repo}/snapshots/abc123/`, {}).modelId, "abc123");
    assertThrows(
      () => resolveModel("120b", { HF_HUB_CACHE: "/a", HF_HOME: "/b", HOME: "/c" }),
      (err: Error) =>
        err instanceof CheckpointError && err.kind === "not_found" &&
        err.message.includes("/a/models--openai--gpt-oss-120b") && err.message.includes("/b/hub/") &&
        err.message.includes("/c/.cache/huggingface/hub/") &&
        err.message.includes("huggingface-cli download openai/gpt-oss-120b"),
    );
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("a memory-mapped checkpoint serves zero-copy views equal to the bytes read from the file", () => {
  const read = Checkpoint.open(`${GOLDEN_ROOT}tiny/sharded`);
  const mapped = Checkpoint.open(`${GOLDEN_ROOT}tiny/sharded`, { mmap: true });
  try {
    assert(mapped.files.mapped, "mmap is available on Linux");
    for (const spec of expectedTensors(read.config)) {
      const view = mapped.read(spec.name);
      assertEquals(view, read.read(spec.name));
      assert(view.buffer.byteLength > view.byteLength || spec.name === "", "a view into the whole mapping");
    }
  } finally {
    read.close();
    mapped.close();
    mapped.files.unmap();
  }
});
