/**
 * The harmony parser: an incremental state machine from generated token ids to messages and deltas
 * (harmony.md §10–§11). It never throws to its caller: malformed output is recovered from, and every recovery is
 * reported by kind so it can be counted.
 */
import type { Role } from "./render.ts";
import type { Tokenizer, TokenTextDecoder } from "./tokenizer.ts";
import { CALL, END, MESSAGE, RETURN, START } from "./tokens.ts";

/** A message as parsed. */
export interface ParsedMessage {
  readonly role: Role;
  /** Author name of a tool message (`browser.search`). */
  readonly name?: string;
  readonly recipient?: string;
  readonly channel?: string;
  readonly contentType?: string;
  readonly content: string;
  /** The token that ended it (RETURN, CALL, END), or undefined when the stream ended first. */
  readonly endToken?: number;
}

/** What a message's header says, available as soon as `<|message|>` arrives. */
export interface MessageHeader {
  readonly role: Role;
  readonly name?: string;
  readonly recipient?: string;
  readonly channel?: string;
  readonly contentType?: string;
}

/** Ways the parser recovers from malformed output. */
export type RecoveryKind =
  | "missing_message_token"
  | "header_extra_tokens"
  | "header_too_long"
  | "unknown_role"
  | "empty_channel"
  | "start_inside_content"
  | "stray_special_token"
  | "unexpected_token_after_end"
  | "truncated_header"
  | "invalid_token_id";

/** Events of one token. */
export type ParserEvent =
  | { readonly type: "header"; readonly index: number; readonly header: MessageHeader }
  | { readonly type: "delta"; readonly index: number; readonly text: string }
  | { readonly type: "message"; readonly index: number; readonly message: ParsedMessage }
  | { readonly type: "recovery"; readonly kind: RecoveryKind };

/** Real headers are about 10 tokens; past this many the "header" is text that never reached <|message|>. */
export const MAX_HEADER_TOKENS = 64;

const ROLES: readonly string[] = ["user", "assistant", "system", "developer", "tool"];
const TERMINATORS = new Set([END, RETURN, CALL]);

/** Parses a header's text (§10.2). `full` = false is the lenient recovery (no recipient/content type). */
export function parseHeaderText(
  text: string,
  pendingRole: Role | undefined,
  full: boolean,
): { header: MessageHeader; leftover: string[]; recoveries: RecoveryKind[] } {
  const recoveries: RecoveryKind[] = [];
  let rest = text;
  let channel: string | undefined;
  const marker = rest.indexOf("<|channel|>");
  if (marker >= 0) {
    const after = rest.slice(marker + "<|channel|>".length);
    const name = /^[^\s<]*/.exec(after)![0];
    if (name.length === 0) recoveries.push("empty_channel");
    else channel = name;
    rest = rest.slice(0, marker) + " " + after.slice(name.length);
  }
  rest = rest.trim();
  if (rest.includes("<|constrain|>")) rest = rest.replaceAll("<|constrain|>", " <|constrain|>").trim();
  const parts = rest.length > 0 ? rest.split(/[ \t\n\r\f\v]+/) : [];

  let role: Role;
  let name: string | undefined;
  if (pendingRole) {
    role = pendingRole;
  } else if (parts.length > 0 && ROLES.includes(parts[0])) {
    role = parts[0] as Role;
  } else if (parts.length > 0 && (parts.length > 1 || parts[0].startsWith("to="))) {
    role = "tool";
    name = parts.shift();
  } else {
    recoveries.push("unknown_role");
    role = "assistant";
    if (parts.length > 0 && !parts[0].startsWith("to=")) name = parts.shift();
  }
  if (parts.length > 0 && parts[0] === role) parts.shift();

  let recipient: string | undefined;
  let contentType: string | undefined;
  if (full && parts.length > 0) {
    const last = parts.pop()!;
    if (last.startsWith("to=")) recipient = last.slice(3);
    else if (parts.length === 0) recipient = last;
    else {
      contentType = last;
      const candidate = parts.pop();
      if (candidate !== undefined) recipient = candidate.startsWith("to=") ? candidate.slice(3) : candidate;
    }
  }
  if (full && parts.length > 0) recoveries.push("header_extra_tokens");
  const header: MessageHeader = {
    role,
    ...(name !== undefined ? { name } : {}),
    ...(recipient !== undefined ? { recipient } : {}),
    ...(channel !== undefined ? { channel } : {}),
    ...(contentType !== undefined ? { contentType } : {}),
  };
  return { header, leftover: parts, recoveries };
}

type State = "expect-start" | "header" | "content";

/** Options of {@link HarmonyParser}. */
export interface ParserOptions {
  /** The role the prompt opened (`<|start|>assistant`): the parser starts inside that message's header. */
  readonly initialRole?: Role;
}

/** The streaming parser. Feed ids one at a time with {@link push}; call {@link end} at end of stream. */
export class HarmonyParser {
  readonly #tokenizer: Tokenizer;
  #state: State;
  #pendingRole: Role | undefined;
  #headerIds: number[] = [];
  #header: MessageHeader | undefined;
  #decoder: TokenTextDecoder | undefined;
  #content = "";
  #index = 0;
  readonly #messages: ParsedMessage[] = [];
  #wantsStop = false;

  constructor(tokenizer: Tokenizer, options: ParserOptions = {}) {
    this.#tokenizer = tokenizer;
    this.#pendingRole = options.initialRole;
    this.#state = options.initialRole ? "header" : "expect-start";
  }

  /** Messages finished so far. */
  get messages(): readonly ParsedMessage[] {
    return this.#messages;
  }

  /** The header of the message being read, once known. */
  get currentHeader(): MessageHeader | undefined {
    return this.#state === "content" ? this.#header : undefined;
  }

  /** True once the output went off the format in a way that makes further tokens useless (§11). */
  get wantsStop(): boolean {
    return this.#wantsStop;
  }

  /** Feeds one token; returns what it produced. Never throws. */
  push(id: number): ParserEvent[] {
    const events: ParserEvent[] = [];
    if (!(Number.isInteger(id) && this.#tokenizer.tokenBytes(id) !== undefined)) {
      events.push({ type: "recovery", kind: "invalid_token_id" });
      if (this.#state === "content") this.#appendContent("\uFFFD", events);
      return events;
    }
    switch (this.#state) {
      case "expect-start":
        this.#onExpectStart(id, events);
        break;
      case "header":
        this.#onHeader(id, events);
        break;
      case "content":
        this.#onContent(id, events);
        break;
    }
    return events;
  }

  /** Signals end of stream: closes an open message (cut by max_tokens) and drops a partial header. */
  end(): ParserEvent[] {
    const events: ParserEvent[] = [];
    if (this.#state === "content") this.#finish(undefined, events);
    else if (this.#state === "header" && this.#headerIds.length > 0) {
      events.push({ type: "recovery", kind: "truncated_header" });
    }
    this.#state = "expect-start";
    this.#headerIds = [];
    return events;
  }

  #onExpectStart(id: number, events: ParserEvent[]): void {
    if (id === START) {
      this.#state = "header";
      this.#headerIds = [];
      this.#pendingRole = undefined;
      return;
    }
    if (this.#tokenizer.isSpecial(id)) {
      events.push({ type: "recovery", kind: "stray_special_token" });
      return;
    }
    if (this.#tokenizer.decode([id]).trim().length === 0) return; // whitespace between messages: ignore
    events.push({ type: "recovery", kind: "unexpected_token_after_end" });
    this.#wantsStop = true;
  }

  #onHeader(id: number, events: ParserEvent[]): void {
    if (id === MESSAGE) {
      const text = this.#tokenizer.decode(this.#headerIds);
      const { header, recoveries } = parseHeaderText(text, this.#pendingRole, true);
      for (const kind of recoveries) events.push({ type: "recovery", kind });
      this.#beginContent(header, events);
      return;
    }
    if (TERMINATORS.has(id)) {
      this.#recoverMissingMessage(id, events);
      return;
    }
    if (id === START && this.#headerIds.length > 0) {
      // A new message began before this header closed: drop the broken header.
      events.push({ type: "recovery", kind: "missing_message_token" });
      this.#headerIds = [];
      this.#pendingRole = undefined;
      return;
    }
    this.#headerIds.push(id);
    if (this.#headerIds.length > MAX_HEADER_TOKENS) {
      // Degrade to content (§11): an unlabelled message whose text starts with what was taken for a header.
      events.push({ type: "recovery", kind: "header_too_long" });
      const text = this.#tokenizer.decode(this.#headerIds);
      this.#beginContent({ role: this.#pendingRole ?? "assistant" }, events);
      this.#appendContent(text, events);
    }
  }

  /** The model forgot `<|message|>` (§11 first rows): salvage the header's text as content. */
  #recoverMissingMessage(endToken: number, events: ParserEvent[]): void {
    events.push({ type: "recovery", kind: "missing_message_token" });
    const text = this.#tokenizer.decode(this.#headerIds);
    const { header, leftover } = parseHeaderText(text, this.#pendingRole, false);
    let content = leftover.join(" ");
    const channelAt = text.indexOf("<|channel|>");
    if ((header.channel === "final" || header.channel === "commentary") && channelAt >= 0) {
      // vLLM's repair: everything after the channel name, one leading space dropped, whitespace kept.
      const after = text.slice(channelAt + "<|channel|>".length + header.channel.length);
      content = after.startsWith(" ") ? after.slice(1) : after;
    }
    if (this.#headerIds.length > 0) {
      this.#header = header;
      this.#content = "";
      events.push({ type: "header", index: this.#index, header });
      if (content.length > 0) this.#appendContent(content, events);
      this.#finish(endToken, events);
    } else {
      this.#state = "expect-start";
    }
    this.#headerIds = [];
    this.#pendingRole = undefined;
  }

  #beginContent(header: MessageHeader, events: ParserEvent[]): void {
    this.#header = header;
    this.#content = "";
    this.#decoder = this.#tokenizer.decoder();
    this.#pendingRole = undefined;
    this.#headerIds = [];
    this.#state = "content";
    events.push({ type: "header", index: this.#index, header });
  }

  #onContent(id: number, events: ParserEvent[]): void {
    if (TERMINATORS.has(id)) {
      this.#finish(id, events);
      return;
    }
    if (id === START) {
      // §11: a <|start|> inside content is an implicit <|end|> followed by a new header.
      events.push({ type: "recovery", kind: "start_inside_content" });
      this.#finish(END, events);
      this.#state = "header";
      this.#headerIds = [];
      return;
    }
    if (this.#tokenizer.isSpecial(id)) {
      events.push({ type: "recovery", kind: "stray_special_token" }); // dropped from the visible text
      return;
    }
    this.#appendContent(this.#decoder!.push(id), events);
  }

  #appendContent(text: string, events: ParserEvent[]): void {
    if (text.length === 0) return;
    this.#content += text;
    events.push({ type: "delta", index: this.#index, text });
  }

  #finish(endToken: number | undefined, events: ParserEvent[]): void {
    const tail = this.#decoder?.end() ?? "";
    this.#appendContent(tail, events);
    const message: ParsedMessage = {
      ...this.#header!,
      content: this.#content,
      ...(endToken !== undefined ? { endToken } : {}),
    };
    this.#messages.push(message);
    events.push({ type: "message", index: this.#index, message });
    this.#index++;
    this.#decoder = undefined;
    this.#header = undefined;
    this.#content = "";
    this.#state = "expect-start";
  }
}

/** Parses a whole completion (non-streaming), ending the stream after the last id. */
export function parseCompletion(
  tokenizer: Tokenizer,
  ids: readonly number[],
  options: ParserOptions = {},
): ParsedMessage[] {
  const parser = new HarmonyParser(tokenizer, options);
  for (const id of ids) parser.push(id);
  parser.end();
  return [...parser.messages];
}
