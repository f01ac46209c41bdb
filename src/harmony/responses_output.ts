/**
 * Generated ids → Responses API output items, in generation order: one item per harmony message (analysis →
 * reasoning, final/commentary text → message, a call → function_call), with streaming events as they grow. Every
 * item keeps the ids of the message it came from (the first one prefixed by the prompt's `<|start|>assistant`, a
 * closing `<|return|>` written as `<|end|>` as history renders it), so a later turn can render it exactly.
 */
import { ChatOutputParser } from "./chat_output.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { CALL, END, END_OF_TEXT, RETURN, START } from "./tokens.ts";

/** An output item while and after it is generated. */
export type OutputItemKind = "reasoning" | "message" | "function_call";

export interface OutputItemState {
  readonly kind: OutputItemKind;
  /** Reasoning text, message text, or call arguments. */
  text: string;
  /** function_call only. */
  readonly name?: string;
  readonly callId?: string;
  /** Closed by its end token (false: cut by max_output_tokens or a cancel). */
  complete: boolean;
  /** The message's ids as history renders them; undefined until it is complete. */
  tokens?: number[];
}

/** What happened at one generated id. */
export type OutputEvent =
  | { readonly type: "added"; readonly index: number }
  | { readonly type: "delta"; readonly index: number; readonly text: string }
  | { readonly type: "done"; readonly index: number };

const TERMINATORS = new Set([END, RETURN, CALL, END_OF_TEXT]);

/** Builds output items from generated ids. */
export class ResponsesOutputBuilder {
  readonly #parser: ChatOutputParser;
  readonly items: OutputItemState[] = [];
  /** Ids of the message being generated (the first message's header is in the prompt: prefixed here). */
  #segment: number[];
  /** Ids of messages that made no item (an empty or ignored message): carried into the next item's ids. */
  #orphan: number[] = [];
  #current: number | undefined;

  constructor(tokenizer: Tokenizer, functionNames: ReadonlySet<string>, newCallId: () => string) {
    this.#parser = new ChatOutputParser(tokenizer, { functionNames, newCallId });
    this.#segment = [START, ...tokenizer.encode("assistant")];
  }

  /** True once generation should stop (a stop token, or output that left the format). */
  get shouldStop(): boolean {
    return this.#parser.shouldStop;
  }

  /** Tokens inside analysis messages so far. */
  get reasoningTokens(): number {
    return this.#parser.result(false).reasoningTokens;
  }

  /** Feeds one generated id. */
  push(id: number): OutputEvent[] {
    const out: OutputEvent[] = [];
    this.#segment.push(id);
    for (const e of this.#parser.push(id)) {
      if (e.type === "reasoning") this.#text("reasoning", e.text, out);
      else if (e.type === "content") this.#text("message", e.text, out);
      else if (e.type === "tool_call_begin") {
        this.#open({ kind: "function_call", text: "", name: e.name, callId: e.id, complete: false }, out);
      } else if (e.type === "tool_call_delta") this.#text("function_call", e.text, out);
    }
    if (TERMINATORS.has(id)) this.#close(id, out);
    return out;
  }

  /** Ends generation: an item still open is done but incomplete. */
  end(): OutputEvent[] {
    const out: OutputEvent[] = [];
    for (const e of this.#parser.end()) {
      if (e.type === "reasoning") this.#text("reasoning", e.text, out);
      else if (e.type === "content") this.#text("message", e.text, out);
      else if (e.type === "tool_call_delta") this.#text("function_call", e.text, out);
    }
    if (this.#current !== undefined) {
      out.push({ type: "done", index: this.#current });
      this.#current = undefined;
    }
    return out;
  }

  #open(item: OutputItemState, out: OutputEvent[]): void {
    if (this.#current !== undefined) out.push({ type: "done", index: this.#current });
    this.items.push(item);
    this.#current = this.items.length - 1;
    out.push({ type: "added", index: this.#current });
  }

  #text(kind: OutputItemKind, text: string, out: OutputEvent[]): void {
    if (this.#current === undefined || this.items[this.#current].kind !== kind) {
      this.#open({ kind, text: "", complete: false }, out);
    }
    const index = this.#current!;
    this.items[index].text += text;
    out.push({ type: "delta", index, text });
  }

  /** A message ended: its item (if it made one) is complete and gets the message's ids. */
  #close(id: number, out: OutputEvent[]): void {
    const ids = this.#segment;
    if (id === RETURN) ids[ids.length - 1] = END; // history ends a final answer with <|end|> (harmony.md §8)
    this.#segment = [];
    if (this.#current === undefined || id === END_OF_TEXT) {
      this.#orphan.push(...ids);
      return;
    }
    const item = this.items[this.#current];
    item.complete = true;
    item.tokens = [...this.#orphan, ...ids];
    this.#orphan = [];
    out.push({ type: "done", index: this.#current });
    this.#current = undefined;
  }
}
