/**
 * The o200k_harmony tokenizer: ordinary text through gpt-tokenizer's BPE with special-token parsing disabled
 * (a user who types `<|end|>` gets ordinary tokens), decoding through our own id → bytes table, and one
 * incremental UTF-8 decoder per stream (gpt-tokenizer's own decode shares one decoder between calls).
 */
import { InvalidRequestError } from "../errors.ts";
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

/** The most BPE work one text may ask for: Σ (run length)² over its runs; one 50,000-character run is 2.5e9. */
export const MAX_BPE_COST = 2.5e9;

/**
 * An upper bound on the BPE work of a text: the tokenizer's pieces lie within runs of letters (with marks), of
 * digits (at most 3 per piece), of whitespace or of other symbols, so Σ (run length)² bounds Σ (piece length)².
 */
export function bpeCost(text: string): number {
  let cost = 0;
  for (const match of text.matchAll(/[\p{L}\p{M}]+|\p{N}+|\s+|[^\s\p{L}\p{M}\p{N}]+/gu)) {
    if (/^\p{N}/u.test(match[0])) cost += match[0].length * 9; // pieces of ≤ 3 digits
    else cost += match[0].length * match[0].length;
  }
  return cost;
}

/** Pieces longer than this are not kept in gpt-tokenizer's merge cache. */
export const MAX_CACHED_PIECE = 64;

/**
 * gpt-tokenizer caches every BPE piece it merges (up to 100,000 entries, whatever their size): a client sending
 * megabyte-long runs would grow it by gigabytes. Keep only short pieces (the common words the cache is for), so it is
 * bounded by ~100,000 × 64 characters. Patches the pinned library's processor once; tokenizer_test checks it holds.
 */
function boundMergeCache(): void {
  const core = (harmony as unknown as { bytePairEncodingCoreProcessor: MergeCacheOwner }).bytePairEncodingCoreProcessor;
  if (core.boundedByGptOssDeno) return;
  const add = core.addToMergeCache.bind(core);
  core.addToMergeCache = (key: string, value: number[]) => {
    if (key.length <= MAX_CACHED_PIECE) add(key, value);
  };
  core.boundedByGptOssDeno = true;
}

interface MergeCacheOwner {
  addToMergeCache(key: string, value: number[]): void;
  mergeCache?: Map<string, number[]>;
  boundedByGptOssDeno?: boolean;
}

/** The size of gpt-tokenizer's merge cache (for the test that the bound holds). */
export function mergeCacheSize(): number {
  return (harmony as unknown as { bytePairEncodingCoreProcessor: MergeCacheOwner }).bytePairEncodingCoreProcessor
    .mergeCache?.size ?? 0;
}

/** The tokenizer. Building the id → bytes table takes a moment: create one per process and pass it in. */
export class Tokenizer {
  readonly #bytes: (Uint8Array | undefined)[] = new Array(VOCAB_SIZE);

  constructor() {
    boundMergeCache();
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

  /**
   * Encodes ordinary text; special-token text is encoded as ordinary text, never as special ids. The BPE library's
   * merge is quadratic in a piece's length (a 100,000-character run of one symbol takes 3.5 s here, 1.5 million
   * would take minutes) and recurses on some: text whose pieces cost more than {@link MAX_BPE_COST} is refused as
   * bad input (400) before it reaches the library.
   */
  encode(text: string): number[] {
    if (text.length === 0) return [];
    if (text.length > Math.sqrt(MAX_BPE_COST) && bpeCost(text) > MAX_BPE_COST) {
      throw new InvalidRequestError(
        `A text of ${text.length} characters has runs too long to tokenize (no spaces or breaks in ` +
          `${Math.round(Math.sqrt(MAX_BPE_COST))}+ characters)`,
      );
    }
    try {
      return harmony.encode(text, NO_SPECIAL);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      throw new InvalidRequestError(`A text of ${text.length} characters could not be tokenized (a run is too long)`);
    }
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
