/** POST /v1/responses: the request schema and its input items → conversation items (OpenAI's Responses API). */
import { z } from "zod";
import { InvalidRequestError } from "../errors.ts";
import type { ConversationItem } from "../harmony/responses_items.ts";
import { parseRequest } from "./protocol.ts";

const textPart = z.object({ type: z.enum(["input_text", "output_text", "text"]), text: z.string() }).loose();
const messageContent = z.union([z.string(), z.array(textPart)]);

const messageItem = z.object({
  type: z.literal("message").optional(),
  id: z.string().optional(),
  role: z.enum(["user", "system", "developer", "assistant"]),
  content: messageContent,
  status: z.string().optional(),
}).loose();
const functionCallItem = z.object({
  type: z.literal("function_call"),
  id: z.string().optional(),
  call_id: z.string().min(1),
  name: z.string().min(1),
  arguments: z.string(),
  status: z.string().optional(),
}).loose();
const functionCallOutputItem = z.object({
  type: z.literal("function_call_output"),
  id: z.string().optional(),
  call_id: z.string().min(1),
  output: z.union([z.string(), z.array(textPart)]),
  status: z.string().optional(),
}).loose();
const reasoningItem = z.object({
  type: z.literal("reasoning"),
  id: z.string().optional(),
  summary: z.array(z.object({ type: z.string(), text: z.string() }).loose()).optional(),
  content: z.array(z.object({ type: z.string(), text: z.string() }).loose()).nullable().optional(),
  encrypted_content: z.string().nullable().optional(),
  status: z.string().optional(),
}).loose();

const ITEM_TYPES = ["message", "function_call", "function_call_output", "reasoning"];

const functionTool = z.object({
  type: z.literal("function"),
  name: z.string().min(1),
  description: z.string().nullable().optional(),
  parameters: z.record(z.string(), z.unknown()).nullable().optional(),
  strict: z.boolean().nullable().optional(),
}).loose();

/** The request. Unknown fields pass (clients send new ones); known but unsupported ones are refused below. */
export const ResponsesRequestSchema = z.object({
  model: z.string().min(1).optional(),
  input: z.union([z.string(), z.array(z.record(z.string(), z.unknown())).min(1)]),
  instructions: z.string().nullable().optional(),
  tools: z.array(z.record(z.string(), z.unknown())).optional(),
  tool_choice: z.union([
    z.enum(["auto", "none", "required"]),
    z.object({ type: z.literal("function"), name: z.string().min(1) }).loose(),
  ]).optional(),
  parallel_tool_calls: z.boolean().nullable().optional(),
  reasoning: z.object({
    effort: z.enum(["low", "medium", "high"]).nullable().optional(),
    summary: z.string().nullable().optional(),
  }).loose().nullable().optional(),
  max_output_tokens: z.number().int().min(1).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  seed: z.number().int().nullable().optional(),
  store: z.boolean().nullable().optional(),
  previous_response_id: z.string().min(1).nullable().optional(),
  metadata: z.record(z.string().max(64), z.string().max(512)).nullable().optional()
    .refine((m) => !m || Object.keys(m).length <= 16, "at most 16 keys"),
  user: z.string().optional(),
  include: z.array(z.string()).nullable().optional(),
  background: z.boolean().nullable().optional(),
  stream: z.boolean().nullable().optional(),
  truncation: z.enum(["disabled", "auto"]).nullable().optional(),
  text: z.object({
    format: z.object({ type: z.string() }).loose().optional(),
  }).loose().nullable().optional(),
}).loose();
export type ResponsesRequest = z.infer<typeof ResponsesRequestSchema>;
export type FunctionTool = z.infer<typeof functionTool>;

/** An input item as stored and listed by /input_items: the client's item with an id. */
export type InputItemJson = Record<string, unknown> & { id: string; type: string };

/** Parses the body and refuses what we do not do, naming the field (never silently ignored). */
export function parseResponsesRequest(json: unknown): ResponsesRequest {
  const request = parseRequest(ResponsesRequestSchema, json, "responses");
  for (const entry of request.include ?? []) {
    throw new InvalidRequestError(
      `include "${entry}" is not supported: this server returns reasoning as plain text and does not encrypt it`,
      "include",
    );
  }
  const format = request.text?.format;
  if (format !== undefined && !["text", "json_object", "json_schema"].includes(format.type)) {
    throw new InvalidRequestError(
      `text.format "${format.type}" is not supported: use text, json_object or json_schema`,
      "text.format",
    );
  }
  if (format?.type === "json_schema" && (format as { schema?: unknown }).schema === undefined) {
    throw new InvalidRequestError("text.format.schema is required for json_schema", "text.format");
  }
  if (request.truncation === "auto") {
    throw new InvalidRequestError('truncation "auto" is not supported: use "disabled"', "truncation");
  }
  if (request.background && request.store === false) {
    throw new InvalidRequestError("background responses must be stored: drop store: false", "background");
  }
  if (request.background && request.stream) {
    throw new InvalidRequestError(
      "background responses cannot be streamed here: poll GET /v1/responses/{id}",
      "stream",
    );
  }
  return request;
}

/** The function tools; any other tool type is refused, naming it. */
export function functionTools(request: ResponsesRequest): FunctionTool[] {
  return (request.tools ?? []).map((raw, i) => {
    if (raw.type !== "function") {
      throw new InvalidRequestError(
        `Tool type "${String(raw.type)}" is not supported: only "function" tools`,
        `tools[${i}].type`,
      );
    }
    const parsed = functionTool.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new InvalidRequestError(`Invalid tool: ${issue.message}`, `tools[${i}].${issue.path.join(".")}`);
    }
    return parsed.data;
  });
}

function joinText(content: string | readonly { text: string }[]): string {
  return typeof content === "string" ? content : content.map((p) => p.text).join("");
}

/** The request's input as stored items (ids given where missing) and as conversation items. */
export function parseInputItems(
  request: ResponsesRequest,
  newId: (prefix: string) => string,
): { stored: InputItemJson[]; items: ConversationItem[] } {
  const raw: Record<string, unknown>[] = typeof request.input === "string"
    ? [{ type: "message", role: "user", content: request.input }]
    : request.input;
  const stored: InputItemJson[] = [];
  const items: ConversationItem[] = [];
  raw.forEach((entry, i) => {
    const type = entry.type ?? "message";
    if (typeof type !== "string" || !ITEM_TYPES.includes(type)) {
      throw new InvalidRequestError(
        `Unsupported input item type ${JSON.stringify(type)}: expected one of ${ITEM_TYPES.join(", ")}`,
        `input[${i}].type`,
      );
    }
    const { item, json } = parseItem(type, entry, i, newId);
    items.push(item);
    stored.push(json);
  });
  return { stored, items };
}

function invalid(i: number, error: z.ZodError): never {
  const issue = error.issues[0];
  const path = issue.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`).join("");
  throw new InvalidRequestError(`Invalid input item: ${issue.message}`, `input[${i}]${path}`);
}

function parseItem(
  type: string,
  entry: Record<string, unknown>,
  i: number,
  newId: (prefix: string) => string,
): { item: ConversationItem; json: InputItemJson } {
  switch (type) {
    case "message": {
      if (Array.isArray(entry.content)) {
        entry.content.forEach((part: { type?: unknown }, j: number) => {
          if (!["input_text", "output_text", "text"].includes(String(part?.type))) {
            throw new InvalidRequestError(
              `Content part type ${JSON.stringify(part?.type)} is not supported: gpt-oss reads text only`,
              `input[${i}].content[${j}].type`,
            );
          }
        });
      }
      const p = messageItem.safeParse(entry);
      if (!p.success) invalid(i, p.error);
      const text = joinText(p.data.content);
      const json = { ...p.data, type: "message", id: p.data.id ?? newId("msg_") };
      return { item: { type: "message", role: p.data.role, text }, json };
    }
    case "function_call": {
      const p = functionCallItem.safeParse(entry);
      if (!p.success) invalid(i, p.error);
      const json = { ...p.data, id: p.data.id ?? newId("fc_") };
      return {
        item: { type: "function_call", callId: p.data.call_id, name: p.data.name, arguments: p.data.arguments },
        json,
      };
    }
    case "function_call_output": {
      const p = functionCallOutputItem.safeParse(entry);
      if (!p.success) invalid(i, p.error);
      const json = { ...p.data, id: p.data.id ?? newId("fco_") };
      return { item: { type: "function_call_output", callId: p.data.call_id, output: joinText(p.data.output) }, json };
    }
    default: {
      const p = reasoningItem.safeParse(entry);
      if (!p.success) invalid(i, p.error);
      const parts = p.data.content && p.data.content.length > 0 ? p.data.content : p.data.summary ?? [];
      const json = { ...p.data, id: p.data.id ?? newId("rs_") };
      return { item: { type: "reasoning", text: parts.map((x) => x.text).join("\n") }, json };
    }
  }
}
