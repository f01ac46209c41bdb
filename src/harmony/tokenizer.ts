/**
 * The o200k_harmony tokenizer: ordinary text through gpt-tokenizer's BPE with special-token parsing disabled
 * (a user who types `<|end|>` gets ordinary tokens), decoding through our own id → bytes table, and one
 * incremental UTF-8 decoder per stream (gpt-tokenizer's own decode shares one decoder between calls).
 */
import { pushAll } from "../formats/json_depth.ts";
import ranks from "gpt-tokenizer/bpeRanks/o200k_base";
import harmony from "gpt-tokenizer/encoding/o200k_harmony";
import { FIRST_SPECIAL_ID, specialTokenId, specialTokenText, VOCAB_SIZE } from "./tokens.ts";

const NO_SPECIAL = { disallowedSpecial: new Set<string>() };
const UTF8 = new TextEncoder();

/** Streams token ids to text; partial characters wait for their remaining bytes. One per stream or message. */
export class TokenTextDecoder {
  readonly #decoder = new TextDecoder("utf-8");
  constructor(readonly tokenizer: Tokenizer) {}

  /** Text completed by this token (possibly ""). Ids outside the vocabulary give U+FFFD. */
  push(id: number): string {
    const bytes = this.tokenizer.tokenBytes(id);
    if (bytes === undefined) return this.#decoder.decode() + "\uFFFD";
    return this.#decoder.decode(bytes, { stream: true });
  }

  /** Flushes: incomplete bytes become U+FFFD. */
  end(): string {
    return this.#decoder.decode();
  }
}

/** The tokenizer. Building the id → bytes table takes a moment: create one per process and pass it in. */
export class Tokenizer {
  readonly #bytes: (Uint8Array | undefined)[] = new Array(VOCAB_SIZE);

  constructor() {
    const table = ranks as unknown as ReadonlyArray<string | number[]>;
    for (let id = 0; id < table.length; id++) {
      const entry = table[id];
      if (entry === undefined) continue;
      this.#bytes[id] = typeof entry === "string" ? UTF8.encode(entry) : Uint8Array.from(entry);
    }
    for (let id = FIRST_SPECIAL_ID; id < VOCAB_SIZE; id++) this.#bytes[id] = UTF8.encode(specialTokenText(id)!);
  }

  /** Number of ids (embedding rows). */
  get vocabSize(): number {
    return VOCAB_SIZE;
  }

  /** Encodes ordinary text; special-token text is encoded as ordinary text, never as special ids. */
  encode(text: string): number[] {
    return text.length === 0 ? [] : harmony.encode(text, NO_SPECIAL);
  }

  /**
   * Encodes text in which special-token literals (`<|start|>`, …) become their ids. Only for trusted text such
   * as test vectors and transcripts: never for user input (prompt injection).
   */
  encodeWithSpecials(text: string): number[] {
    const ids: number[] = [];
    const pattern = /<\|[a-z_0-9]+\|>/g;
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      const id = specialTokenId(match[0]);
      if (id === undefined) continue;
      pushAll(ids, this.encode(text.slice(last, match.index))).push(id);
      last = match.index! + match[0].length;
    }
    pushAll(ids, this.encode(text.slice(last)));
    return ids;
  }

  /** The bytes of a token (special tokens: their literal text); undefined outside the vocabulary. */
  tokenBytes(id: number): Uint8Array | undefined {
    return Number.isInteger(id) ? this.#bytes[id] : undefined;
  }

  /** True for special ids (199998 and up). */
  isSpecial(id: number): boolean {
    return id >= FIRST_SPECIAL_ID && id < VOCAB_SIZE;
  }

  /** Decodes ids to text in one go (invalid UTF-8 becomes U+FFFD). */
  decode(ids: readonly number[]): string {
    const decoder = new TokenTextDecoder(this);
    let text = "";
    for (const id of ids) text += decoder.push(id);
    return text + decoder.end();
  }

  /** A fresh incremental decoder. */
  decoder(): TokenTextDecoder {
    return new TokenTextDecoder(this);
  }
}
