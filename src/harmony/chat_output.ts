/**
 * Generated ids → Chat Completions events (harmony.md §10.3, §10.4, §11, §12.2): reasoning deltas, content deltas
 * (final channel and preambles), tool calls (begin, argument deltas, end) and the final result. Never throws.
 */
import { pushAll } from "../formats/json_depth.ts";
import { HarmonyParser, type MessageHeader, type ParsedMessage, type RecoveryKind } from "./parse.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { CALL, END_OF_TEXT, RETURN } from "./tokens.ts";

/** A streaming event for the API. */
export type ChatEvent =
  | { readonly type: "reasoning"; readonly text: string }
  | { readonly type: "content"; readonly text: string }
  | { readonly type: "tool_call_begin"; readonly index: number; readonly id: string; readonly name: string }
  | { readonly type: "tool_call_delta"; readonly index: number; readonly text: string }
  | { readonly type: "tool_call_end"; readonly index: number }
  | { readonly type: "recovery"; readonly kind: RecoveryKind | ChatRecoveryKind };

/** Recoveries at the chat level. */
export type ChatRecoveryKind = "non_assistant_message" | "unknown_channel" | "unknown_recipient" | "builtin_tool_call";

/** A returned function call. */
export interface ParsedToolCall {
  readonly id: string;
  readonly name: string;
  readonly arguments: string;
}

/** The parsed completion, as the non-streaming response reports it. */
export interface ChatResult {
  readonly reasoning: string | null;
  readonly content: string | null;
  readonly toolCalls: readonly ParsedToolCall[];
  readonly finishReason: "stop" | "length" | "tool_calls";
  /** Tokens inside analysis messages. */
  readonly reasoningTokens: number;
}

/** What a message is, from its header (§10.3). */
type Kind =
  | { kind: "reasoning" }
  | { kind: "final" }
  | { kind: "preamble" }
  | { kind: "call"; name: string }
  | { kind: "ignored"; reason: ChatRecoveryKind }
  | { kind: "unlabelled" };

/** Options of {@link ChatOutputParser}. */
export interface ChatOutputOptions {
  /** Names of the request's function tools (bare recipients that match one are calls). */
  readonly functionNames?: ReadonlySet<string>;
  /** Makes tool call ids (default: "call_" + 24 random hex digits). */
  readonly newCallId?: () => string;
}

function randomCallId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "call_" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Parses a completion that follows a prompt ending in `<|start|>assistant`. */
export class ChatOutputParser {
  readonly #parser: HarmonyParser;
  readonly #functions: ReadonlySet<string>;
  readonly #newCallId: () => string;
  #kind: Kind | undefined;
  #callIndex = -1;
  readonly #calls: { id: string; name: string; arguments: string; complete: boolean }[] = [];
  readonly #finals: string[] = [];
  readonly #preambles: string[] = [];
  readonly #reasoning: string[] = [];
  readonly #unlabelled: string[] = [];
  #reasoningTokens = 0;
  #stopToken: number | undefined;
  #stopRequested = false;
  readonly recoveries: (RecoveryKind | ChatRecoveryKind)[] = [];
  /** Generated tokens by what they belonged to: reasoning, final (answers and preambles), tool_call, other. */
  readonly tokensByChannel: Record<"reasoning" | "final" | "tool_call" | "other", number> = {
    reasoning: 0,
    final: 0,
    tool_call: 0,
    other: 0,
  };

  constructor(tokenizer: Tokenizer, options: ChatOutputOptions = {}) {
    this.#parser = new HarmonyParser(tokenizer, { initialRole: "assistant" });
    this.#functions = options.functionNames ?? new Set();
    this.#newCallId = options.newCallId ?? randomCallId;
  }

  /** True when generation should stop: a stop token arrived, or the output left the format (§11). */
  get shouldStop(): boolean {
    return this.#stopToken !== undefined || this.#stopRequested || this.#parser.wantsStop;
  }

  #classify(header: MessageHeader): Kind {
    if (header.role !== "assistant") return { kind: "ignored", reason: "non_assistant_message" };
    const recipient = header.recipient;
    if (recipient !== undefined && recipient !== "all") {
      if (recipient.startsWith("functions.")) return { kind: "call", name: recipient.slice("functions.".length) };
      if (this.#functions.has(recipient)) return { kind: "call", name: recipient };
      if (recipient.startsWith("browser.") || recipient === "python" || recipient.startsWith("container.")) {
        return { kind: "ignored", reason: "builtin_tool_call" };
      }
      return { kind: "ignored", reason: "unknown_recipient" };
    }
    switch (header.channel) {
      case "analysis":
        return { kind: "reasoning" };
      case "final":
        return { kind: "final" };
      case "commentary":
        return { kind: "preamble" };
      case undefined:
        return { kind: "unlabelled" };
      default:
        return { kind: "ignored", reason: "unknown_channel" };
    }
  }

  /** Feeds one generated id. Stop tokens end the message they close and set {@link shouldStop}. */
  push(id: number): ChatEvent[] {
    if (this.#kind?.kind === "reasoning") this.#reasoningTokens++;
    const kind = this.#kind?.kind;
    const bucket = kind === "reasoning"
      ? "reasoning"
      : kind === "final" || kind === "preamble" || kind === "unlabelled"
      ? "final"
      : kind === "call"
      ? "tool_call"
      : "other";
    this.tokensByChannel[bucket]++;
    const out: ChatEvent[] = [];
    if (id === END_OF_TEXT) {
      this.#stopToken = id; // a safety-net stop token: it closes whatever is open
      for (const event of this.#parser.end()) this.#translate(event, out);
      return out;
    }
    for (const event of this.#parser.push(id)) this.#translate(event, out);
    if (id === RETURN || id === CALL) this.#stopToken = id;
    return out;
  }

  /** Signals the end of generation (stop token seen, max_tokens, or cancelled). */
  end(): ChatEvent[] {
    const out: ChatEvent[] = [];
    for (const event of this.#parser.end()) this.#translate(event, out);
    return out;
  }

  #translate(event: ReturnType<HarmonyParser["push"]>[number], out: ChatEvent[]): void {
    switch (event.type) {
      case "recovery":
        this.recoveries.push(event.kind);
        out.push(event);
        return;
      case "header": {
        const kind = this.#classify(event.header);
        this.#kind = kind;
        if (kind.kind === "ignored") {
          this.recoveries.push(kind.reason);
          out.push({ type: "recovery", kind: kind.reason });
          // A hallucinated tool result or user turn: nothing after it is the assistant's (§11).
          if (kind.reason === "non_assistant_message") this.#stopRequested = true;
        }
        if (kind.kind === "call") {
          this.#callIndex = this.#calls.length;
          const id = this.#newCallId();
          this.#calls.push({ id, name: kind.name, arguments: "", complete: false });
          out.push({ type: "tool_call_begin", index: this.#callIndex, id, name: kind.name });
        }
        return;
      }
      case "delta": {
        const kind = this.#kind;
        if (!kind) return;
        if (kind.kind === "reasoning") out.push({ type: "reasoning", text: event.text });
        else if (kind.kind === "final" || kind.kind === "preamble" || kind.kind === "unlabelled") {
          out.push({ type: "content", text: event.text });
        } else if (kind.kind === "call") {
          this.#calls[this.#callIndex].arguments += event.text;
          out.push({ type: "tool_call_delta", index: this.#callIndex, text: event.text });
        }
        return;
      }
      case "message":
        this.#onMessage(event.message, out);
        return;
    }
  }

  #onMessage(message: ParsedMessage, out: ChatEvent[]): void {
    const kind = this.#kind;
    this.#kind = undefined;
    if (!kind) return;
    switch (kind.kind) {
      case "reasoning":
        this.#reasoning.push(message.content);
        return;
      case "final":
        this.#finals.push(message.content);
        return;
      case "preamble":
        this.#preambles.push(message.content);
        return;
      case "unlabelled":
        this.#unlabelled.push(message.content);
        return;
      case "call": {
        const call = this.#calls[this.#callIndex];
        // A call ended by <|call|> (or, as models sometimes do, <|return|> / <|end|>) is complete; one cut by the
        // end of the stream is not returned as a call in non-streaming responses (its JSON is incomplete).
        call.complete = message.endToken !== undefined;
        out.push({ type: "tool_call_end", index: this.#callIndex });
        return;
      }
      case "ignored":
        return;
    }
  }

  /** The parsed result; call after {@link end}. `cut` says generation stopped on max_tokens or the context. */
  result(cut: boolean): ChatResult {
    const calls = this.#calls.filter((c) => c.complete).map(({ id, name, arguments: args }) => ({
      id,
      name,
      arguments: args,
    }));
    const reasoning = [...this.#reasoning];
    let finals = [...this.#finals];
    // A message with no channel counts as the answer only if nothing else came; otherwise as reasoning (§11).
    if (this.#unlabelled.length > 0) {
      if (finals.length === 0 && this.#preambles.length === 0 && calls.length === 0) finals = [...this.#unlabelled];
      else pushAll(reasoning, this.#unlabelled);
    }
    const finalText = finals.join("\n");
    const content = finalText.length > 0 ? finalText : this.#preambles.join("\n");
    const finishReason = calls.length > 0 && !cut ? "tool_calls" : cut ? "length" : "stop";
    return {
      reasoning: reasoning.length > 0 ? reasoning.join("\n") : null,
      content: content.length > 0 ? content : null,
      toolCalls: calls,
      finishReason,
      reasoningTokens: this.#reasoningTokens,
    };
  }
}
