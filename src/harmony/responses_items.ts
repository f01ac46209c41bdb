/**
 * Responses API items → harmony prompt ids. Each item is one harmony message (reasoning → analysis, an assistant
 * message → final, a function call → a commentary call, its output → a tool message), so a conversation sent as items
 * renders exactly as the same conversation sent as Chat Completions messages: the conversion goes through
 * {@link chatToHarmony}. Items the model produced itself carry the ids it produced them as and are rendered as those
 * ids, so a continued conversation's prompt starts with the earlier prompt and output token for token.
 */
import { type ChatMessage, type ChatPromptOptions, chatToHarmony } from "./chat.ts";
import { type HarmonyMessage, renderForCompletion } from "./render.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** A conversation item, reduced to what the prompt needs (text parts already joined). */
export type ConversationItem =
  | { readonly type: "message"; readonly role: "user" | "system" | "developer" | "assistant"; readonly text: string }
  | { readonly type: "reasoning"; readonly text: string }
  | { readonly type: "function_call"; readonly callId: string; readonly name: string; readonly arguments: string }
  | { readonly type: "function_call_output"; readonly callId: string; readonly output: string };

/** An item and, when the model generated it, the ids of its harmony message (`<|start|>` … end token). */
export interface PromptItem {
  readonly item: ConversationItem;
  readonly tokens?: readonly number[];
}

/** What the prompt needs besides the items: the chat options plus the request's `instructions`. */
export interface ResponsesPromptOptions extends ChatPromptOptions {
  readonly instructions?: string | null;
}

function toChatMessage(item: ConversationItem): ChatMessage {
  switch (item.type) {
    case "message":
      return item.role === "assistant"
        ? { role: "assistant", content: item.text }
        : { role: item.role, content: item.text };
    case "reasoning":
      return { role: "assistant", reasoning: item.text };
    case "function_call":
      return {
        role: "assistant",
        tool_calls: [{ id: item.callId, type: "function", function: { name: item.name, arguments: item.arguments } }],
      };
    case "function_call_output":
      return { role: "tool", tool_call_id: item.callId, content: item.output };
  }
}

/** An assistant item with nothing to say renders as no message at all (as an empty chat message does). */
function isEmpty(item: ConversationItem): boolean {
  return (item.type === "message" && item.role === "assistant" && item.text.length === 0) ||
    (item.type === "reasoning" && item.text.length === 0);
}

/** The harmony messages of a Responses conversation, generated items carrying their ids. */
export function itemsToHarmony(items: readonly PromptItem[], options: ResponsesPromptOptions): HarmonyMessage[] {
  const kept = items.filter((p) => !isEmpty(p.item));
  const messages = kept.map((p) => toChatMessage(p.item));
  const leading = options.instructions != null ? 1 : 0;
  if (leading) messages.unshift({ role: "developer", content: options.instructions! });
  const harmony = chatToHarmony(messages, options);
  // chatToHarmony emits the system message, maybe a developer message (which absorbs a leading system/developer
  // chat message), then exactly one harmony message per remaining chat message: the tail lines up with the items.
  const absorbed = messages.length > 0 && (messages[0].role === "system" || messages[0].role === "developer") ? 1 : 0;
  const tail = messages.length - absorbed;
  const start = harmony.length - tail;
  return harmony.map((m, i) => {
    if (i < start) return m;
    const source = kept[i - start + absorbed - leading];
    return source?.tokens ? { ...m, tokens: source.tokens } : m;
  });
}

/** The prompt ids: the conversation, earlier turns' reasoning dropped (§8.2), then `<|start|>assistant`. */
export function renderResponsesPrompt(
  tokenizer: Tokenizer,
  items: readonly PromptItem[],
  options: ResponsesPromptOptions,
): number[] {
  return renderForCompletion(tokenizer, itemsToHarmony(items, options), { rule: "before-last-final" });
}
