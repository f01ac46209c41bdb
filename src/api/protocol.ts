/** OpenAI request shapes: zod schemas and parse*() functions that turn unknown JSON into typed values. */
import { z } from "zod";
import { InvalidRequestError } from "../errors.ts";

const textPart = z.object({ type: z.literal("text"), text: z.string() }).loose();
/** Message content: a string, or text parts (gpt-oss has no image input). */
const content = z.union([z.string(), z.array(textPart)]);
const nullableContent = z.union([content, z.null()]);

const toolCall = z.object({
  id: z.string().min(1),
  type: z.literal("function").default("function"),
  function: z.object({ name: z.string().min(1), arguments: z.string() }).loose(),
}).loose();

const chatMessage = z.discriminatedUnion("role", [
  z.object({ role: z.literal("system"), content, name: z.string().optional() }).loose(),
  z.object({ role: z.literal("developer"), content, name: z.string().optional() }).loose(),
  z.object({ role: z.literal("user"), content, name: z.string().optional() }).loose(),
  z.object({
    role: z.literal("assistant"),
    content: nullableContent.optional(),
    reasoning: z.string().nullable().optional(),
    reasoning_content: z.string().nullable().optional(),
    tool_calls: z.array(toolCall).optional(),
    name: z.string().optional(),
  }).loose(),
  z.object({ role: z.literal("tool"), content, tool_call_id: z.string().min(1) }).loose(),
]);

const tool = z.object({
  type: z.literal("function"),
  function: z.object({
    name: z.string().min(1),
    description: z.string().optional(),
    parameters: z.record(z.string(), z.unknown()).nullable().optional(),
    strict: z.boolean().nullable().optional(),
  }).loose(),
}).loose();

const toolChoice = z.union([
  z.enum(["auto", "none", "required"]),
  z.object({ type: z.literal("function"), function: z.object({ name: z.string().min(1) }) }).loose(),
]);

const stop = z.union([z.string(), z.array(z.string()).max(4)]).nullable().optional();
const logitBias = z.record(z.string().regex(/^\d+$/, "keys must be token ids"), z.number().min(-100).max(100));

/** Sampling fields shared by both endpoints. */
const samplingFields = {
  model: z.string().min(1),
  max_tokens: z.number().int().min(1).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  top_k: z.number().int().min(-1).nullable().optional(),
  min_p: z.number().min(0).max(1).nullable().optional(),
  presence_penalty: z.number().min(-2).max(2).nullable().optional(),
  frequency_penalty: z.number().min(-2).max(2).nullable().optional(),
  repetition_penalty: z.number().gt(0).max(10).nullable().optional(),
  logit_bias: logitBias.nullable().optional(),
  seed: z.number().int().nullable().optional(),
  stop,
  n: z.number().int().min(1).max(16).nullable().optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).loose().nullable().optional(),
  user: z.string().optional(),
  ignore_eos: z.boolean().optional(),
  return_token_ids: z.boolean().optional(),
  skip_special_tokens: z.boolean().optional(),
};

/** POST /v1/chat/completions. */
export const ChatCompletionRequestSchema = z.object({
  ...samplingFields,
  messages: z.array(chatMessage).min(1),
  tools: z.array(tool).optional(),
  tool_choice: toolChoice.optional(),
  parallel_tool_calls: z.boolean().optional(),
  reasoning_effort: z.enum(["low", "medium", "high"]).optional(),
  reasoning: z.object({
    effort: z.enum(["low", "medium", "high"]).optional(),
    exclude: z.boolean().optional(),
  }).loose().optional(),
  include_reasoning: z.boolean().optional(),
  /** Extension: analysis tokens before `<|end|>` is forced (structured outputs need the analysis to end). */
  max_reasoning_tokens: z.number().int().min(0).optional(),
  /** vLLM's guided decoding names (guided_regex is refused with a 400). */
  guided_json: z.unknown().optional(),
  guided_choice: z.array(z.string()).min(1).optional(),
  guided_regex: z.unknown().optional(),
  max_completion_tokens: z.number().int().min(1).nullable().optional(),
  logprobs: z.boolean().nullable().optional(),
  top_logprobs: z.number().int().min(0).max(20).nullable().optional(),
  response_format: z.object({
    type: z.enum(["text", "json_object", "json_schema"]),
    json_schema: z.object({ name: z.string(), description: z.string().optional(), schema: z.unknown() }).loose()
      .optional(),
  }).loose().optional(),
}).loose();
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>;

/** POST /v1/completions. */
export const CompletionRequestSchema = z.object({
  ...samplingFields,
  prompt: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(z.number().int()).min(1),
    z.array(z.array(z.number().int()).min(1)).min(1),
  ]),
  echo: z.boolean().nullable().optional(),
  logprobs: z.number().int().min(0).max(20).nullable().optional(),
  best_of: z.number().int().min(1).max(1).nullable().optional(),
}).loose();
export type CompletionRequest = z.infer<typeof CompletionRequestSchema>;

/** Fields we know of but do not support: a 400 naming the field beats silently ignoring it. */
const UNSUPPORTED: Record<string, readonly string[]> = {
  completions: ["suffix"],
  chat: ["audio", "modalities", "prediction", "web_search_options", "functions", "function_call"],
  responses: ["conversation", "prompt"],
};

/** `messages[0].content` style path of a zod issue. */
function paramPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const part of path) out += typeof part === "number" ? `[${part}]` : out ? `.${String(part)}` : String(part);
  return out;
}

/** Validates `json` against a schema; throws InvalidRequestError naming the first bad param. */
export function parseRequest<T>(
  schema: z.ZodType<T>,
  json: unknown,
  endpoint: "chat" | "completions" | "responses",
): T {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new InvalidRequestError("The request body must be a JSON object");
  }
  for (const field of UNSUPPORTED[endpoint]) {
    if (field in json && (json as Record<string, unknown>)[field] != null) {
      throw new InvalidRequestError(`Unsupported field "${field}" for this endpoint`, field);
    }
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const param = paramPath(issue.path);
    throw new InvalidRequestError(`Invalid value for "${param || "body"}": ${issue.message}`, param || undefined);
  }
  return parsed.data;
}

/** Concatenates text parts. */
export function contentText(value: string | readonly { text: string }[] | null | undefined): string {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : value.map((part) => part.text).join("");
}
