/**
 * OpenAI Chat Completions input → harmony messages and prompt ids (harmony.md §12.1). Plain data in, ids out:
 * nothing here knows HTTP. Open choices of the spec (§15) are settled where they arise, with the reason.
 */
import { InvalidRequestError } from "../errors.ts";
import { jsonDepth, pushAll } from "../formats/json_depth.ts";
import {
  DEFAULT_CHANNELS,
  DEFAULT_KNOWLEDGE_CUTOFF,
  DEFAULT_MODEL_IDENTITY,
  type HarmonyMessage,
  type ReasoningEffort,
  renderForCompletion,
  type ToolDefinition,
} from "./render.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** A function call made by the assistant in an earlier turn. */
export interface ChatToolCall {
  readonly id: string;
  readonly type: "function";
  readonly function: { readonly name: string; readonly arguments: string };
}

/** One Chat Completions message, already validated by the API layer. */
export type ChatMessage =
  | { readonly role: "system" | "developer"; readonly content: string }
  | { readonly role: "user"; readonly content: string }
  | {
    readonly role: "assistant";
    readonly content?: string | null;
    /** `reasoning` or `reasoning_content` from the client. */
    readonly reasoning?: string | null;
    readonly tool_calls?: readonly ChatToolCall[];
  }
  | { readonly role: "tool"; readonly tool_call_id: string; readonly content: string };

/** tool_choice. */
export type ToolChoice = "auto" | "none" | "required" | { readonly name: string };

/** What shapes the prompt besides the messages. */
export interface ChatPromptOptions {
  readonly tools?: readonly ToolDefinition[];
  readonly toolChoice?: ToolChoice;
  readonly reasoningEffort: ReasoningEffort;
  /** YYYY-MM-DD or null (line left out). */
  readonly currentDate: string | null;
  readonly knowledgeCutoff?: string;
  readonly responseFormat?: { name: string; description?: string; schema: unknown };
}

/** How deep a tool's parameters or a response format's schema may nest (the renderer walks it recursively). */
export const MAX_SCHEMA_DEPTH = 64;

/** Rejects a schema nested deeper than {@link MAX_SCHEMA_DEPTH}, naming the parameter. */
export function checkSchemaDepth(schema: unknown, param: string): void {
  if (jsonDepth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH) {
    throw new InvalidRequestError(`The schema is nested deeper than ${MAX_SCHEMA_DEPTH} levels`, param);
  }
}

/** Rejects tool names that would corrupt a header (`to=functions.NAME`). */
export function checkToolName(name: string, param: string): void {
  if (name.length === 0 || /[\s]|<\||\|>/.test(name)) {
    throw new InvalidRequestError(
      `Invalid tool name ${JSON.stringify(name)}: names cannot be empty or contain whitespace or "<|"`,
      param,
    );
  }
}

/** Converts a chat request's messages to harmony messages (system message first, developer message if needed). */
export function chatToHarmony(messages: readonly ChatMessage[], options: ChatPromptOptions): HarmonyMessage[] {
  const toolChoice = options.toolChoice ?? "auto";
  // tool_choice "none": leave the tools out of the prompt entirely (vLLM keeps them and skips parsing; a model that
  // cannot see a tool cannot try to call it).
  const tools = toolChoice === "none" ? [] : options.tools ?? [];
  tools.forEach((t, i) => {
    checkToolName(t.name, `tools[${i}].function.name`);
    checkSchemaDepth(t.parameters, `tools[${i}].function.parameters`);
  });
  if (options.responseFormat) checkSchemaDepth(options.responseFormat.schema, "response_format.json_schema.schema");

  const out: HarmonyMessage[] = [{
    role: "system",
    content: {
      system: {
        modelIdentity: DEFAULT_MODEL_IDENTITY,
        knowledgeCutoff: options.knowledgeCutoff ?? DEFAULT_KNOWLEDGE_CUTOFF,
        currentDate: options.currentDate,
        reasoningEffort: options.reasoningEffort,
        validChannels: DEFAULT_CHANNELS,
        channelRequired: true,
        toolNamespaces: [],
      },
    },
  }];

  let rest = messages;
  let instructions: string | undefined;
  if (messages.length > 0 && (messages[0].role === "system" || messages[0].role === "developer")) {
    instructions = messages[0].content;
    rest = messages.slice(1);
  }
  if (instructions !== undefined || tools.length > 0 || options.responseFormat) {
    out.push({
      role: "developer",
      content: {
        developer: {
          instructions: instructions ?? null,
          toolNamespaces: tools.length > 0 ? [{ name: "functions", description: null, tools }] : [],
          responseFormats: options.responseFormat ? [options.responseFormat] : undefined,
        },
      },
    });
  }

  const callNames = new Map<string, string>();
  for (const m of messages) {
    if (m.role === "assistant") { for (const call of m.tool_calls ?? []) callNames.set(call.id, call.function.name); }
  }
  rest.forEach((m, i) => pushAll(out, messageToHarmony(m, i + (rest === messages ? 0 : 1), callNames)));
  return out;
}

/** One chat message after the first as harmony messages; `index` is its place in the request (for errors). */
function messageToHarmony(m: ChatMessage, index: number, callNames: ReadonlyMap<string, string>): HarmonyMessage[] {
  switch (m.role) {
    case "system":
    case "developer":
      // Later system/developer messages: one more developer message in place (as vLLM does).
      return [{ role: "developer", content: { developer: { instructions: m.content, toolNamespaces: [] } } }];
    case "user":
      return [{ role: "user", content: m.content }];
    case "assistant":
      return assistantToHarmony(m, index);
    case "tool": {
      const name = callNames.get(m.tool_call_id);
      if (name === undefined) {
        throw new InvalidRequestError(
          `Unknown tool_call_id "${m.tool_call_id}": no assistant message in the request made that call`,
          `messages[${index}].tool_call_id`,
        );
      }
      return [{
        role: "tool",
        name: `functions.${name}`,
        recipient: "assistant",
        channel: "commentary",
        content: m.content,
      }];
    }
  }
}

function assistantToHarmony(m: Extract<ChatMessage, { role: "assistant" }>, index: number): HarmonyMessage[] {
  const out: HarmonyMessage[] = [];
  // Analysis first: the model writes its reasoning before preambles and calls (§15 item 4).
  if (m.reasoning) out.push({ role: "assistant", channel: "analysis", content: m.reasoning });
  const calls = m.tool_calls ?? [];
  if (calls.length === 0) {
    if (m.content) out.push({ role: "assistant", channel: "final", content: m.content });
    return out;
  }
  if (m.content) out.push({ role: "assistant", channel: "commentary", content: m.content });
  calls.forEach((call, j) => {
    checkToolName(call.function.name, `messages[${index}].tool_calls[${j}].function.name`);
    // The reference renderer's canonical form (vector test_does_not_drop_if_ongoing_analysis): recipient first,
    // then channel, then ` <|constrain|>json`; arguments exactly as the client sent them.
    out.push({
      role: "assistant",
      recipient: `functions.${call.function.name}`,
      channel: "commentary",
      contentType: "<|constrain|>json",
      content: call.function.arguments,
    });
  });
  return out;
}

/** Renders a chat request to prompt ids ending in `<|start|>assistant`, dropping past reasoning (§8.2, ours). */
export function renderChatPrompt(
  tokenizer: Tokenizer,
  messages: readonly ChatMessage[],
  options: ChatPromptOptions,
): number[] {
  return renderForCompletion(tokenizer, chatToHarmony(messages, options), { rule: "before-last-final" });
}
