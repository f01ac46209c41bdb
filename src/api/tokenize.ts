/**
 * POST /tokenize and /detokenize (vLLM-compatible shapes). Besides `prompt` and `messages`, /tokenize accepts
 * `harmony_messages` (harmony-level messages as in shared/harmony-vectors) to inspect exact renderings.
 */
import { z } from "zod";
import type { ServerConfig } from "../config.ts";
import { InvalidRequestError } from "../errors.ts";
import { type DropAnalysis, type HarmonyMessage, renderConversation, renderForCompletion } from "../harmony/render.ts";
import { renderChatPrompt } from "../harmony/chat.ts";
import { ChatCompletionRequestSchema, contentText, parseRequest } from "./protocol.ts";
import { requireModel, type ServingState } from "./serving.ts";

const TokenizeSchema = z.object({
  model: z.string().optional(),
  prompt: z.string().optional(),
  messages: z.array(z.unknown()).optional(),
  tools: z.array(z.unknown()).optional(),
  reasoning_effort: z.enum(["low", "medium", "high"]).optional(),
  add_generation_prompt: z.boolean().optional(),
  harmony_messages: z.array(z.record(z.string(), z.unknown())).optional(),
  drop_analysis: z.enum(["none", "before-last-final", "harmony-lib"]).optional(),
  next_role: z.enum(["assistant", "user", "system", "developer", "tool"]).optional(),
}).loose();

/** Handles /tokenize. */
export function tokenize(json: unknown, state: ServingState, config: ServerConfig, today: () => string): unknown {
  const parsed = TokenizeSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidRequestError(
      `Invalid value for "${issue.path.join(".")}": ${issue.message}`,
      issue.path.join("."),
    );
  }
  const body = parsed.data;
  const model = requireModel(state, body.model);
  let tokens: number[];
  if (body.harmony_messages !== undefined) {
    const messages = body.harmony_messages as unknown as HarmonyMessage[];
    const rule: DropAnalysis = body.drop_analysis ?? "none";
    tokens = body.add_generation_prompt === false
      ? renderConversation(model.tokenizer, messages, rule)
      : renderForCompletion(model.tokenizer, messages, { rule, nextRole: body.next_role });
  } else if (body.messages !== undefined) {
    // Reuse the chat schema so /tokenize counts exactly what /v1/chat/completions would send.
    const chat = parseRequest(
      ChatCompletionRequestSchema,
      { ...body, model: body.model ?? model.modelId },
      "chat",
    );
    tokens = renderChatPrompt(
      model.tokenizer,
      chat.messages.map((m) => {
        if (m.role === "assistant") {
          return {
            role: "assistant" as const,
            content: contentText(m.content),
            reasoning: m.reasoning ?? m.reasoning_content ?? null,
            tool_calls: m.tool_calls?.map((c) => ({ id: c.id, type: "function" as const, function: c.function })),
          };
        }
        if (m.role === "tool") {
          return { role: "tool" as const, tool_call_id: m.tool_call_id, content: contentText(m.content) };
        }
        return { role: m.role, content: contentText(m.content) };
      }),
      {
        tools: (chat.tools ?? []).map((t) => ({
          name: t.function.name,
          description: t.function.description ?? "",
          parameters: t.function.parameters ?? undefined,
        })),
        reasoningEffort: chat.reasoning_effort ?? config.scheduler.defaultReasoningEffort,
        currentDate: config.currentDate ?? today(),
      },
    );
  } else if (body.prompt !== undefined) {
    tokens = model.tokenizer.encode(body.prompt);
  } else {
    throw new InvalidRequestError('Give "prompt", "messages" or "harmony_messages"', "prompt");
  }
  return { tokens, count: tokens.length, max_model_len: model.engine.maxModelLen };
}

/** Handles /detokenize. */
export function detokenize(json: unknown, state: ServingState): unknown {
  const parsed = z.object({ model: z.string().optional(), tokens: z.array(z.number().int()) }).loose().safeParse(json);
  if (!parsed.success) throw new InvalidRequestError('"tokens" must be an array of token ids', "tokens");
  const model = requireModel(state, parsed.data.model);
  for (const id of parsed.data.tokens) {
    if (model.tokenizer.tokenBytes(id) === undefined) {
      throw new InvalidRequestError(`Token id ${id} is outside the vocabulary`, "tokens");
    }
  }
  return { prompt: model.tokenizer.decode(parsed.data.tokens) };
}
