/**
 * Synthetic GPT-OSS checkpoints in the exact HF layout of the release: config.json plus safetensors (sharded and
 * indexed like openai/gpt-oss-20b and -120b for those presets), BF16 dense weights and MXFP4 experts with
 * realistically spread codes and scales. Deterministic for a seed; streamed to disk with bounded memory.
 */
import { expectedTensors, type TensorSpec } from "../checkpoint/checkpoint.ts";
import { type ModelConfig, parseHfConfig } from "../model/config.ts";
import { encodeHeader, tensorBytes, type TensorSource, writeSafetensors } from "../checkpoint/safetensors_writer.ts";

/** Shapes the generator knows. */
export const PRESETS = ["tiny", "tiny-random", "mini", "20b", "120b", "wide"] as const;
export type Preset = typeof PRESETS[number];

interface PresetShape {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  num_local_experts: number;
  num_experts_per_tok: number;
  intermediate_size: number;
  sliding_window: number;
  eos_token_id: number;
  pad_token_id: number;
}

const REAL_VOCAB = 201088;

const SHAPES: Record<Preset, PresetShape> = {
  // The golden `tiny` fixture's shape (small vocab).
  "tiny": {
    vocab_size: 1024,
    hidden_size: 64,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    num_local_experts: 8,
    num_experts_per_tok: 4,
    intermediate_size: 64,
    sliding_window: 4,
    eos_token_id: 1022,
    pad_token_id: 1021,
  },
  // The built-in demo model: the real vocabulary so the real tokenizer works, tiny everything else.
  "tiny-random": {
    vocab_size: REAL_VOCAB,
    hidden_size: 64,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    num_local_experts: 8,
    num_experts_per_tok: 4,
    intermediate_size: 64,
    sliding_window: 128,
    eos_token_id: 200002,
    pad_token_id: 199999,
  },
  // Tests of tensor parallelism at the real widths (2,880 hidden = 90 MXFP4 blocks, 64 heads, 8 KV heads) in ~0.2 GB:
  // two layers (one sliding, one full), 4 experts, a small vocabulary. Not offered by `make-model`.
  "wide": {
    vocab_size: 1024,
    hidden_size: 2880,
    num_hidden_layers: 2,
    num_attention_heads: 64,
    num_key_value_heads: 8,
    head_dim: 64,
    num_local_experts: 4,
    num_experts_per_tok: 2,
    intermediate_size: 2880,
    sliding_window: 128,
    eos_token_id: 1022,
    pad_token_id: 1021,
  },
  // The 20b architecture with 4 layers: quick benchmarks at real layer size.
  "mini": {
    vocab_size: REAL_VOCAB,
    hidden_size: 2880,
    num_hidden_layers: 4,
    num_attention_heads: 64,
    num_key_value_heads: 8,
    head_dim: 64,
    num_local_experts: 32,
    num_experts_per_tok: 4,
    intermediate_size: 2880,
    sliding_window: 128,
    eos_token_id: 200002,
    pad_token_id: 199999,
  },
  "20b": {
    vocab_size: REAL_VOCAB,
    hidden_size: 2880,
    num_hidden_layers: 24,
    num_attention_heads: 64,
    num_key_value_heads: 8,
    head_dim: 64,
    num_local_experts: 32,
    num_experts_per_tok: 4,
    intermediate_size: 2880,
    sliding_window: 128,
    eos_token_id: 200002,
    pad_token_id: 199999,
  },
  "120b": {
    vocab_size: REAL_VOCAB,
    hidden_size: 2880,
    num_hidden_layers: 36,
    num_attention_heads: 64,
    num_key_value_heads: 8,
    head_dim: 64,
    num_local_experts: 128,
    num_experts_per_tok: 4,
    intermediate_size: 2880,
    sliding_window: 128,
    eos_token_id: 200002,
    pad_token_id: 199999,
  },
};

/** config.json of a preset, key for key as the release writes it (sorted keys, indent 2). */
export function presetConfigJson(preset: Preset): Record<string, unknown> {
  const s = SHAPES[preset];
  const json: Record<string, unknown> = {
    architectures: ["GptOssForCausalLM"],
    attention_bias: true,
    attention_dropout: 0.0,
    eos_token_id: s.eos_token_id,
    experts_per_token: s.num_experts_per_tok,
    head_dim: s.head_dim,
    hidden_act: "silu",
    hidden_size: s.hidden_size,
    initial_context_length: 4096,
    initializer_range: 0.02,
    intermediate_size: s.intermediate_size,
    layer_types: Array.from(
      { length: s.num_hidden_layers },
      (_, i) => (i % 2 === 0 ? "sliding_attention" : "full_attention"),
    ),
    max_position_embeddings: 131072,
    model_type: "gpt_oss",
    num_attention_heads: s.num_attention_heads,
    num_experts_per_tok: s.num_experts_per_tok,
    num_hidden_layers: s.num_hidden_layers,
    num_key_value_heads: s.num_key_value_heads,
    num_local_experts: s.num_local_experts,
    output_router_logits: false,
    pad_token_id: s.pad_token_id,
    quantization_config: {
      modules_to_not_convert: [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
      ],
      quant_method: "mxfp4",
    },
    rms_norm_eps: 1e-05,
    rope_scaling: {
      beta_fast: 32.0,
      beta_slow: 1.0,
      factor: 32.0,
      original_max_position_embeddings: 4096,
      rope_type: "yarn",
      truncate: false,
    },
    rope_theta: 150000,
    router_aux_loss_coef: 0.9,
    sliding_window: s.sliding_window,
    swiglu_limit: 7.0,
    tie_word_embeddings: false,
    transformers_version: "4.55.0.dev0",
    use_cache: true,
    vocab_size: s.vocab_size,
  };
  return json;
}

/** The ModelConfig of a preset. */
export function presetConfig(preset: Preset): ModelConfig {
  return parseHfConfig(presetConfigJson(preset), `preset ${preset}`);
}

/** The release cut shards at 4.8 GB in tensor order with a 0-based counter (spec §5.4). */
const SHARD_LIMIT_BYTES = 4.8e9;

/** How the preset's tensors are split into files: one file for small presets, release-style shards for 20b/120b. */
export function shardPlan(preset: Preset): { file: string; tensors: TensorSpec[] }[] {
  const specs = expectedTensors(presetConfig(preset));
  if (preset !== "20b" && preset !== "120b") return [{ file: "model.safetensors", tensors: specs }];
  const shards: TensorSpec[][] = [[]];
  let size = 0;
  for (const spec of specs) {
    const bytes = tensorBytes(spec);
    if (size > 0 && size + bytes > SHARD_LIMIT_BYTES) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(spec);
    size += bytes;
  }
  const last = String(shards.length - 1).padStart(5, "0");
  return shards.map((tensors, i) => ({ file: `model-${String(i).padStart(5, "0")}-of-${last}.safetensors`, tensors }));
}

// ---- Deterministic value streams ----

/** 32-bit FNV-1a of a string, to give each tensor its own stream. */
function hashString(text: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** A counter-based generator: value i of a stream depends only on (stream key, i), so chunks can start anywhere. */
function mix(key: number, index: number): number {
  let z = (key ^ Math.imul(index, 0x9e3779b9)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

/** 4096 standard-normal quantiles: a table lookup by 12 random bits gives a well-spread normal sample. */
const NORMAL_TABLE = (() => {
  const table = new Float32Array(4096);
  for (let i = 0; i < 4096; i++) table[i] = inverseNormal((i + 0.5) / 4096);
  return table;
})();

/** Acklam's rational approximation of the normal quantile (|error| < 1.2e-9). */
function inverseNormal(p: number): number {
  const a = [
    -39.6968302866538,
    220.946098424521,
    -275.928510446969,
    138.357751867269,
    -30.6647980661472,
    2.50662827745924,
  ];
  const b = [-54.4760987982241, 161.585836858041, -155.698979859887, 66.8013118877197, -13.2806815528857];
  const c = [
    -0.00778489400243029,
    -0.322396458041136,
    -2.40075827716184,
    -2.54973253934373,
    4.37466414146497,
    2.93816398269878,
  ];
  const d = [0.00778469570904146, 0.32246712907004, 2.445134137143, 3.75440866190742];
  const low = 0.02425;
  if (p < low) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
      ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > 1 - low) return -inverseNormal(1 - p);
  const q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/** FP4 code of a normal sample scaled so the block's largest values reach ±6 (codes 0..15, bit 3 = sign). */
const CODE_BYTE_TABLE = (() => {
  const magnitudes = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
  const nearestCode = (x: number) => {
    let best = 0;
    for (let c = 1; c < 8; c++) {
      if (Math.abs(Math.abs(x) - magnitudes[c]) < Math.abs(Math.abs(x) - magnitudes[best])) best = c;
    }
    return (x < 0 ? 8 : 0) | best;
  };
  // Real MXFP4 weights put |w|/scale mostly in 0.5..4: a normal with σ = 2 quantized to the grid does that,
  // and every one of the 16 codes occurs.
  const table = new Uint8Array(65536);
  for (let i = 0; i < 65536; i++) {
    const lo = nearestCode(2 * NORMAL_TABLE[i & 4095]);
    const hi = nearestCode(2 * NORMAL_TABLE[((i >>> 4) ^ (i * 2654435761 >>> 20)) & 4095]);
    table[i] = lo | (hi << 4);
  }
  return table;
})();

function bf16Bits(value: number): number {
  F32[0] = value;
  const bits = U32[0];
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}
const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** How values of one tensor are drawn. */
type Distribution =
  | { kind: "normal"; mean: number; std: number }
  | { kind: "fp4-codes" }
  | { kind: "e8m0"; center: number; spread: number };

function distributionFor(spec: TensorSpec, config: ModelConfig): Distribution {
  const name = spec.name;
  if (name.endsWith("_blocks")) return { kind: "fp4-codes" };
  if (name.endsWith("_scales")) {
    // Row weights of σ ≈ 1/√in with codes spanning ±6 need scales near 2^(log2(1/√in) − 1.5).
    const fanIn = name.includes("gate_up") ? config.hiddenSize : config.intermediateSize;
    return { kind: "e8m0", center: Math.round(127 + Math.log2(1 / Math.sqrt(fanIn)) - 1.5), spread: 4 };
  }
  if (name.endsWith("layernorm.weight") || name === "model.norm.weight") return { kind: "normal", mean: 1, std: 0.1 };
  if (name.endsWith(".sinks")) return { kind: "normal", mean: 0, std: 1 };
  if (name.endsWith("bias")) return { kind: "normal", mean: 0, std: 0.02 };
  if (name === "model.embed_tokens.weight") return { kind: "normal", mean: 0, std: 1 };
  const fanIn = spec.shape[spec.shape.length - 1];
  return { kind: "normal", mean: 0, std: 1 / Math.sqrt(fanIn) };
}

/** A streamed source of deterministic values for one tensor. */
export function syntheticSource(spec: TensorSpec, config: ModelConfig, seed: number): TensorSource {
  const key = hashString(spec.name, seed);
  const dist = distributionFor(spec, config);
  return {
    ...spec,
    fill(chunk: Uint8Array, offset: number) {
      switch (dist.kind) {
        case "fp4-codes":
          for (let i = 0; i < chunk.length; i++) chunk[i] = CODE_BYTE_TABLE[mix(key, offset + i) & 0xffff];
          return;
        case "e8m0":
          for (let i = 0; i < chunk.length; i++) {
            chunk[i] = dist.center - (dist.spread >> 1) + (mix(key, offset + i) % dist.spread);
          }
          return;
        case "normal": {
          // offset and chunk length are even (chunks are 16 MB, tensors of bf16 start at even offsets).
          for (let i = 0; i < chunk.length; i += 2) {
            const index = (offset + i) >>> 1;
            const bits = bf16Bits(dist.mean + dist.std * NORMAL_TABLE[mix(key, index) & 4095]);
            chunk[i] = bits & 0xff;
            chunk[i + 1] = bits >>> 8;
          }
          return;
        }
      }
    },
  };
}

/** Options of {@link generateCheckpoint}. */
export interface GenerateOptions {
  readonly seed?: number;
  /** Called with bytes written so far and the total. */
  readonly onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /**
   * Write real headers but leave the data as a sparse hole (all zeros, no disk space): for tests of the layout
   * and the reader at full size. Such a checkpoint is not a usable model.
   */
  readonly sparse?: boolean;
}

/** Writes a preset checkpoint into `dir` (created if missing). */
export async function generateCheckpoint(preset: Preset, dir: string, options: GenerateOptions = {}): Promise<void> {
  const seed = options.seed ?? 0;
  const config = presetConfig(preset);
  await Deno.mkdir(dir, { recursive: true });
  const plan = shardPlan(preset);
  const total = plan.reduce((sum, shard) => sum + shard.tensors.reduce((s, t) => s + tensorBytes(t), 0), 0);
  let done = 0;
  for (const shard of plan) {
    if (options.sparse) {
      await writeSparse(`${dir}/${shard.file}`, shard.tensors);
      continue;
    }
    await writeSafetensors(
      `${dir}/${shard.file}`,
      shard.tensors.map((spec) => syntheticSource(spec, config, seed)),
      (bytes) => {
        done += bytes;
        options.onProgress?.(done, total);
      },
    );
  }
  if (plan.length > 1) {
    const weightMap: Record<string, string> = {};
    for (const shard of plan) for (const t of shard.tensors) weightMap[t.name] = shard.file;
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + "\n",
    );
  }
  // Written last: a directory with config.json is complete (the demo model relies on it).
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(presetConfigJson(preset), null, 2) + "\n");
}

async function writeSparse(path: string, tensors: readonly TensorSpec[]): Promise<void> {
  const header = encodeHeader(tensors);
  await Deno.writeFile(path, header);
  await Deno.truncate(path, header.length + tensors.reduce((sum, t) => sum + tensorBytes(t), 0));
}
