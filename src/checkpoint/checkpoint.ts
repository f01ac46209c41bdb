/**
 * A GPT-OSS checkpoint on disk: HF layout (config.json + model*.safetensors, maybe sharded) or OpenAI's
 * `original/` layout, both seen through HF tensor names. Validates every tensor's dtype and shape against the config.
 */
import { CheckpointError } from "../errors.ts";
import type { ModelFootprint } from "../backends/backend.ts";
import { type ModelConfig, parseHfConfig, parseOriginalConfig } from "../model/config.ts";
import { type DType, type OpenOptions, SafetensorsSet } from "./safetensors.ts";

/** A tensor the model needs: HF name, dtype and shape derived from the config. */
export interface TensorSpec {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
}

/** Every tensor of the HF layout for a config, in the release's order (embedding, layers 0.., norm, lm_head). */
export function expectedTensors(config: ModelConfig): TensorSpec[] {
  const h = config.hiddenSize, e = config.numLocalExperts, i = config.intermediateSize;
  const q = config.numAttentionHeads * config.headDim, kv = config.numKeyValueHeads * config.headDim;
  const specs: TensorSpec[] = [{ name: "model.embed_tokens.weight", dtype: "BF16", shape: [config.vocabSize, h] }];
  for (let n = 0; n < config.numHiddenLayers; n++) {
    const p = `model.layers.${n}.`;
    // Sorted by name within a layer, as the release's safetensors headers are.
    specs.push(
      { name: p + "input_layernorm.weight", dtype: "BF16", shape: [h] },
      { name: p + "mlp.experts.down_proj_bias", dtype: "BF16", shape: [e, h] },
      { name: p + "mlp.experts.down_proj_blocks", dtype: "U8", shape: [e, h, i / 32, 16] },
      { name: p + "mlp.experts.down_proj_scales", dtype: "U8", shape: [e, h, i / 32] },
      { name: p + "mlp.experts.gate_up_proj_bias", dtype: "BF16", shape: [e, 2 * i] },
      { name: p + "mlp.experts.gate_up_proj_blocks", dtype: "U8", shape: [e, 2 * i, h / 32, 16] },
      { name: p + "mlp.experts.gate_up_proj_scales", dtype: "U8", shape: [e, 2 * i, h / 32] },
      { name: p + "mlp.router.bias", dtype: "BF16", shape: [e] },
      { name: p + "mlp.router.weight", dtype: "BF16", shape: [e, h] },
      { name: p + "post_attention_layernorm.weight", dtype: "BF16", shape: [h] },
      { name: p + "self_attn.k_proj.bias", dtype: "BF16", shape: [kv] },
      { name: p + "self_attn.k_proj.weight", dtype: "BF16", shape: [kv, h] },
      { name: p + "self_attn.o_proj.bias", dtype: "BF16", shape: [h] },
      { name: p + "self_attn.o_proj.weight", dtype: "BF16", shape: [h, q] },
      { name: p + "self_attn.q_proj.bias", dtype: "BF16", shape: [q] },
      { name: p + "self_attn.q_proj.weight", dtype: "BF16", shape: [q, h] },
      { name: p + "self_attn.sinks", dtype: "BF16", shape: [config.numAttentionHeads] },
      { name: p + "self_attn.v_proj.bias", dtype: "BF16", shape: [kv] },
      { name: p + "self_attn.v_proj.weight", dtype: "BF16", shape: [kv, h] },
    );
  }
  specs.push(
    { name: "model.norm.weight", dtype: "BF16", shape: [h] },
    { name: "lm_head.weight", dtype: "BF16", shape: [config.vocabSize, h] },
  );
  return specs;
}

/** Where an HF-named tensor lives in the file set: a whole tensor, or a row range of a fused one. */
interface Location {
  readonly fileTensor: string;
  /** Byte offset into the file tensor and byte length. */
  readonly offset: number;
  readonly length: number;
}

const ORIGINAL_NAMES: Array<[RegExp, string]> = [
  [/^model\.embed_tokens\.weight$/, "embedding.weight"],
  [/^model\.layers\.(\d+)\.input_layernorm\.weight$/, "block.$1.attn.norm.scale"],
  [/^model\.layers\.(\d+)\.self_attn\.sinks$/, "block.$1.attn.sinks"],
  [/^model\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)$/, "block.$1.attn.out.$2"],
  [/^model\.layers\.(\d+)\.post_attention_layernorm\.weight$/, "block.$1.mlp.norm.scale"],
  [/^model\.layers\.(\d+)\.mlp\.router\.(weight|bias)$/, "block.$1.mlp.gate.$2"],
  [/^model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj_blocks$/, "block.$1.mlp.mlp1_weight.blocks"],
  [/^model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj_scales$/, "block.$1.mlp.mlp1_weight.scales"],
  [/^model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj_bias$/, "block.$1.mlp.mlp1_bias"],
  [/^model\.layers\.(\d+)\.mlp\.experts\.down_proj_blocks$/, "block.$1.mlp.mlp2_weight.blocks"],
  [/^model\.layers\.(\d+)\.mlp\.experts\.down_proj_scales$/, "block.$1.mlp.mlp2_weight.scales"],
  [/^model\.layers\.(\d+)\.mlp\.experts\.down_proj_bias$/, "block.$1.mlp.mlp2_bias"],
  [/^model\.norm\.weight$/, "norm.scale"],
  [/^lm_head\.weight$/, "unembedding.weight"],
];

/**
 * What a model needs from a device: its weight bytes, and its largest row (a slice along the first dimension: one
 * vocabulary row, one expert's packed blocks), the unit a GPU backend splits a tensor into buffers by.
 */

/** The footprint of a config's tensors (as stored: bf16 and packed MXFP4, no conversion). */
export function modelFootprint(config: ModelConfig): ModelFootprint {
  let weightBytes = 0;
  let largestRow = { tensor: "", bytes: 0 };
  for (const spec of expectedTensors(config)) {
    const bytes = spec.shape.reduce((a, b) => a * b, 1) * (spec.dtype === "BF16" ? 2 : 1);
    weightBytes += bytes;
    const rowBytes = spec.shape.length > 1 ? bytes / spec.shape[0] : bytes;
    if (rowBytes > largestRow.bytes) largestRow = { tensor: spec.name, bytes: rowBytes };
  }
  return { weightBytes, largestRow };
}

/** Progress of a load, reported per tensor. */
export interface LoadProgress {
  readonly bytesDone: number;
  readonly bytesTotal: number;
  readonly tensor: string;
}

/** An opened checkpoint. */
export class Checkpoint {
  readonly #locations = new Map<string, Location>();
  readonly #specs: Map<string, TensorSpec>;

  private constructor(readonly dir: string, readonly config: ModelConfig, readonly files: SafetensorsSet) {
    this.#specs = new Map(expectedTensors(config).map((s) => [s.name, s]));
    for (const spec of this.#specs.values()) this.#locations.set(spec.name, this.#locate(spec));
  }

  /** Opens a checkpoint directory (HF root, or a directory holding OpenAI's `original/` files). */
  static open(dir: string, options: OpenOptions = {}): Checkpoint {
    const hfConfig = readJson(`${dir}/config.json`);
    if (hfConfig !== undefined && (hfConfig as { model_type?: unknown }).model_type !== undefined) {
      const config = parseHfConfig(hfConfig, `${dir}/config.json`);
      return new Checkpoint(dir, config, SafetensorsSet.openDirectory(dir, options));
    }
    for (const candidate of [dir, `${dir}/original`]) {
      const json = readJson(`${candidate}/config.json`);
      if (json !== undefined && (json as { num_experts?: unknown }).num_experts !== undefined) {
        const config = parseOriginalConfig(json, `${candidate}/config.json`);
        return new Checkpoint(candidate, config, SafetensorsSet.openDirectory(candidate, options));
      }
    }
    throw new CheckpointError(
      `Unsupported model "${dir}": no GPT-OSS config.json (HF layout) or original/config.json found`,
      hfConfig === undefined ? "not_found" : "unsupported_model",
      dir,
    );
  }

  #locate(spec: TensorSpec): Location {
    const expectedBytes = spec.shape.reduce((a, b) => a * b, 1) * (spec.dtype === "BF16" ? 2 : 1);
    if (this.config.layout === "hf") {
      this.#check(spec.name, spec);
      return { fileTensor: spec.name, offset: 0, length: expectedBytes };
    }
    const qkv = /^model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$/.exec(spec.name);
    if (qkv) {
      // original/ fuses q, k, v as rows [0, q) [q, q+kv) [q+kv, q+2kv) of attn.qkv (spec §5.3).
      const fused = `block.${qkv[1]}.attn.qkv.${qkv[3]}`;
      const qRows = this.config.numAttentionHeads * this.config.headDim;
      const kvRows = this.config.numKeyValueHeads * this.config.headDim;
      const rowBytes = qkv[3] === "weight" ? this.config.hiddenSize * 2 : 2;
      const shape = qkv[3] === "weight" ? [qRows + 2 * kvRows, this.config.hiddenSize] : [qRows + 2 * kvRows];
      this.#check(fused, { name: fused, dtype: "BF16", shape });
      const firstRow = qkv[2] === "q" ? 0 : qkv[2] === "k" ? qRows : qRows + kvRows;
      return { fileTensor: fused, offset: firstRow * rowBytes, length: expectedBytes };
    }
    for (const [pattern, replacement] of ORIGINAL_NAMES) {
      if (pattern.test(spec.name)) {
        const fileName = spec.name.replace(pattern, replacement);
        this.#check(fileName, { ...spec, name: fileName });
        return { fileTensor: fileName, offset: 0, length: expectedBytes };
      }
    }
    throw new CheckpointError(`No original/ name for tensor "${spec.name}"`, "tensor_missing", this.dir, spec.name);
  }

  #check(fileName: string, spec: TensorSpec): void {
    if (!this.files.has(fileName)) {
      throw new CheckpointError(
        `Tensor "${fileName}" is missing from the checkpoint "${this.dir}"`,
        "tensor_missing",
        this.dir,
        fileName,
      );
    }
    const info = this.files.info(fileName);
    if (info.dtype !== spec.dtype || info.shape.join(",") !== spec.shape.join(",")) {
      throw new CheckpointError(
        `Tensor "${fileName}" in "${info.file}" is ${info.dtype} [${info.shape.join(", ")}] but config.json implies ` +
          `${spec.dtype} [${spec.shape.join(", ")}]`,
        "shape_mismatch",
        info.file,
        fileName,
      );
    }
  }

  /** The spec of an HF-named tensor. */
  spec(name: string): TensorSpec {
    const spec = this.#specs.get(name);
    if (!spec) throw new CheckpointError(`Unknown tensor "${name}"`, "tensor_missing", this.dir, name);
    return spec;
  }

  /** Bytes of all tensors the model uses. */
  totalBytes(): number {
    let total = 0;
    for (const location of this.#locations.values()) total += location.length;
    return total;
  }

  /** An HF-named tensor's bytes: a fresh aligned buffer, or a zero-copy view when the checkpoint is mapped. */
  read(name: string): Uint8Array {
    const location = this.#locations.get(name);
    if (!location) throw new CheckpointError(`Unknown tensor "${name}"`, "tensor_missing", this.dir, name);
    return this.files.readRange(location.fileTensor, location.offset, location.length);
  }

  close(): void {
    this.files.close();
  }
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) return undefined;
    throw new CheckpointError(`Cannot read "${path}": ${(err as Error).message}`, "io", path, undefined, {
      cause: err,
    });
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new CheckpointError(`Invalid JSON in "${path}"`, "header_json", path);
  }
}
