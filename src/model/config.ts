/**
 * ModelConfig: GPT-OSS hyperparameters from an HF `config.json` (model_type `gpt_oss`) or from the `original/`
 * layout's config. Field names follow the checkpoint's words in camelCase. Every dimension comes from here.
 */
import { z } from "zod";
import { CheckpointError } from "../errors.ts";

/** Which files the weights come from. */
export type CheckpointLayout = "hf" | "original";

/** YaRN RoPE scaling (spec §3.3 step 5). */
export interface RopeScaling {
  readonly factor: number;
  readonly betaFast: number;
  readonly betaSlow: number;
  readonly originalMaxPositionEmbeddings: number;
  /** false (the release and the OpenAI reference): ramp bounds are not floored/ceiled. */
  readonly truncate: boolean;
}

/** GPT-OSS hyperparameters. */
export interface ModelConfig {
  readonly layout: CheckpointLayout;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numHiddenLayers: number;
  readonly numAttentionHeads: number;
  readonly numKeyValueHeads: number;
  readonly headDim: number;
  readonly numLocalExperts: number;
  readonly numExpertsPerTok: number;
  readonly intermediateSize: number;
  readonly slidingWindow: number;
  /** Per layer: true where the layer uses the sliding window. */
  readonly layerIsSliding: readonly boolean[];
  readonly ropeTheta: number;
  readonly ropeScaling: RopeScaling;
  readonly swigluLimit: number;
  readonly rmsNormEps: number;
  readonly maxPositionEmbeddings: number;
  readonly eosTokenId: number | undefined;
  readonly padTokenId: number | undefined;
  readonly quantMethod: "mxfp4" | undefined;
}

const int = z.number().int();
const positive = int.min(1);

const HfConfigSchema = z.object({
  model_type: z.literal("gpt_oss"),
  vocab_size: positive,
  hidden_size: positive,
  num_hidden_layers: positive,
  num_attention_heads: positive,
  num_key_value_heads: positive,
  head_dim: positive,
  num_local_experts: positive,
  num_experts_per_tok: positive.optional(),
  experts_per_token: positive.optional(),
  intermediate_size: positive,
  sliding_window: positive,
  layer_types: z.array(z.enum(["sliding_attention", "full_attention"])).optional(),
  rope_theta: z.number().positive(),
  rope_scaling: z.object({
    rope_type: z.literal("yarn").optional(),
    type: z.literal("yarn").optional(),
    factor: z.number().positive(),
    beta_fast: z.number().positive().default(32),
    beta_slow: z.number().positive().default(1),
    original_max_position_embeddings: positive,
    truncate: z.boolean().optional(),
  }).loose(),
  swiglu_limit: z.number().positive().default(7),
  rms_norm_eps: z.number().positive().default(1e-5),
  max_position_embeddings: positive.optional(),
  initial_context_length: positive.optional(),
  eos_token_id: z.union([int, z.array(int)]).optional(),
  pad_token_id: int.nullable().optional(),
  tie_word_embeddings: z.boolean().optional(),
  quantization_config: z.object({ quant_method: z.string() }).loose().optional(),
}).loose();

const OriginalConfigSchema = z.object({
  num_hidden_layers: positive,
  num_experts: positive,
  experts_per_token: positive,
  vocab_size: positive,
  hidden_size: positive,
  intermediate_size: positive,
  swiglu_limit: z.number().positive().default(7),
  head_dim: positive,
  num_attention_heads: positive,
  num_key_value_heads: positive,
  sliding_window: positive,
  initial_context_length: positive,
  rope_theta: z.number().positive(),
  rope_scaling_factor: z.number().positive(),
  rope_ntk_alpha: z.number().positive().default(1),
  rope_ntk_beta: z.number().positive().default(32),
}).loose();

function unsupported(path: string, problem: string): CheckpointError {
  return new CheckpointError(`Unsupported model "${path}": ${problem}`, "unsupported_model", path);
}

function zodProblem(error: z.ZodError): string {
  return error.issues.map((i) => `field "${i.path.join(".")}": ${i.message}`).join("; ");
}

function checkShape(config: ModelConfig, path: string): ModelConfig {
  if (config.numAttentionHeads % config.numKeyValueHeads !== 0) {
    throw unsupported(
      path,
      `num_attention_heads ${config.numAttentionHeads} is not a multiple of ${config.numKeyValueHeads}`,
    );
  }
  if (config.hiddenSize % 32 !== 0 || config.intermediateSize % 32 !== 0) {
    throw unsupported(path, "hidden_size and intermediate_size must be multiples of the MXFP4 block (32)");
  }
  if (config.headDim % 2 !== 0) throw unsupported(path, `head_dim ${config.headDim} is odd`);
  if (config.numExpertsPerTok > config.numLocalExperts) {
    throw unsupported(path, `experts per token ${config.numExpertsPerTok} exceeds ${config.numLocalExperts} experts`);
  }
  if (config.layerIsSliding.length !== config.numHiddenLayers) {
    throw unsupported(
      path,
      `layer_types has ${config.layerIsSliding.length} entries for ${config.numHiddenLayers} layers`,
    );
  }
  return Object.freeze(config);
}

/** Parses an HF config.json (already JSON-decoded). `path` names the file in errors. */
export function parseHfConfig(json: unknown, path: string): ModelConfig {
  const modelType = (json as { model_type?: unknown })?.model_type;
  if (modelType !== "gpt_oss") {
    throw unsupported(path, `model_type is ${JSON.stringify(modelType)}, expected "gpt_oss"`);
  }
  const parsed = HfConfigSchema.safeParse(json);
  if (!parsed.success) throw unsupported(path, zodProblem(parsed.error));
  const c = parsed.data;
  if (c.tie_word_embeddings) throw unsupported(path, "tied embeddings are not GPT-OSS");
  const expertsPerTok = c.num_experts_per_tok ?? c.experts_per_token;
  if (expertsPerTok === undefined) throw unsupported(path, "num_experts_per_tok is missing");
  const quant = c.quantization_config?.quant_method;
  if (quant !== undefined && quant !== "mxfp4") throw unsupported(path, `quantization "${quant}" is not supported`);
  const layerIsSliding = c.layer_types
    ? c.layer_types.map((t) => t === "sliding_attention")
    : Array.from({ length: c.num_hidden_layers }, (_, i) => i % 2 === 0);
  const eos = Array.isArray(c.eos_token_id) ? c.eos_token_id[0] : c.eos_token_id;
  return checkShape({
    layout: "hf",
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    numHiddenLayers: c.num_hidden_layers,
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: c.num_key_value_heads,
    headDim: c.head_dim,
    numLocalExperts: c.num_local_experts,
    numExpertsPerTok: expertsPerTok,
    intermediateSize: c.intermediate_size,
    slidingWindow: c.sliding_window,
    layerIsSliding,
    ropeTheta: c.rope_theta,
    ropeScaling: {
      factor: c.rope_scaling.factor,
      betaFast: c.rope_scaling.beta_fast,
      betaSlow: c.rope_scaling.beta_slow,
      originalMaxPositionEmbeddings: c.rope_scaling.original_max_position_embeddings,
      // A missing key means false, as in the OpenAI reference (HF would default to true: spec §4 #1).
      truncate: c.rope_scaling.truncate ?? false,
    },
    swigluLimit: c.swiglu_limit,
    rmsNormEps: c.rms_norm_eps,
    maxPositionEmbeddings: c.max_position_embeddings ??
      c.rope_scaling.original_max_position_embeddings * c.rope_scaling.factor,
    eosTokenId: eos,
    padTokenId: c.pad_token_id ?? undefined,
    quantMethod: quant === "mxfp4" ? "mxfp4" : undefined,
  }, path);
}

/** Parses the `original/config.json` of OpenAI's own layout (spec §5.3). */
export function parseOriginalConfig(json: unknown, path: string): ModelConfig {
  const parsed = OriginalConfigSchema.safeParse(json);
  if (!parsed.success) throw unsupported(path, zodProblem(parsed.error));
  const c = parsed.data;
  return checkShape({
    layout: "original",
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    numHiddenLayers: c.num_hidden_layers,
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: c.num_key_value_heads,
    headDim: c.head_dim,
    numLocalExperts: c.num_experts,
    numExpertsPerTok: c.experts_per_token,
    intermediateSize: c.intermediate_size,
    slidingWindow: c.sliding_window,
    layerIsSliding: Array.from({ length: c.num_hidden_layers }, (_, i) => i % 2 === 0),
    ropeTheta: c.rope_theta,
    ropeScaling: {
      factor: c.rope_scaling_factor,
      betaFast: c.rope_ntk_beta,
      betaSlow: c.rope_ntk_alpha,
      originalMaxPositionEmbeddings: c.initial_context_length,
      truncate: false,
    },
    swigluLimit: c.swiglu_limit,
    rmsNormEps: 1e-5,
    maxPositionEmbeddings: c.initial_context_length * c.rope_scaling_factor,
    eosTokenId: 200002,
    padTokenId: 199999,
    quantMethod: "mxfp4",
  }, path);
}
