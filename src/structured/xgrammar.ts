/**
 * The one module that knows xgrammar (npm:@mlc-ai/web-xgrammar: xgrammar compiled to WebAssembly): the vocabulary it
 * matches against, JSON Schema / JSON compilation with an LRU cache, and matchers that give a token bitmask. Swap the
 * engine here and nothing else changes.
 *
 * The package is a UMD bundle: it calls `require` and reads `__filename` while loading, and puts its exports on
 * `globalThis.xgrammar`; both globals are provided before the import. Bitmasks are read synchronously through the
 * matcher's binding handle (the package's own getNextTokenBitmask is async only to await its initialisation, done
 * here first), so the engine can ask for a mask between a step's logits and its sample. Pinned version: 0.1.27.
 */
import { createRequire } from "node:module";
import { Ajv2020 } from "ajv/dist/2020.js";
import { InvalidRequestError } from "../errors.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { FIRST_SPECIAL_ID, RETURN } from "../harmony/tokens.ts";

// deno-lint-ignore no-explicit-any
type Xg = any;

/** GPT-2's byte → printable character map: byte-level BPE vocabularies are written in it. */
function byteToUnicode(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return table;
}

/** A compiled grammar (shared, cached) from which matchers are made. */
export interface CompiledGrammar {
  readonly key: string;
  readonly handle: Xg;
}

/** The cache key of a grammar. */
export function grammarKey(schema: unknown): string {
  return schema === undefined ? "json_object" : JSON.stringify(schema);
}

/** One request's grammar state, used where the grammar lives (the worker): accepts tokens, masks the next one. */
export interface SyncMatcher {
  /** Feeds a sampled token; false when the grammar rejects it. */
  accept(tokenId: number): boolean;
  /** The allowed next tokens: bit (id & 31) of word (id >> 5). */
  mask(): Int32Array;
  /** The grammar is complete (it accepted its stop token). */
  readonly terminated: boolean;
  /** Back to the start, for another use of the same grammar. */
  reset(): void;
  dispose(): void;
}

/** The structured-output engine for one tokenizer. */
export class StructuredOutputs {
  readonly #xg: Xg;
  readonly #compiler: Xg;
  readonly #cache = new Map<string, Promise<CompiledGrammar>>();
  readonly #vocabSize: number;
  readonly compileTimesMs: { key: string; ms: number }[] = [];

  private constructor(xg: Xg, compiler: Xg, vocabSize: number, readonly cacheSize: number) {
    this.#xg = xg;
    this.#compiler = compiler;
    this.#vocabSize = vocabSize;
  }

  /** The vocabulary as xgrammar reads a byte-level BPE one: each token's bytes in GPT-2's printable alphabet. */
  static encodeVocab(tokenizer: Tokenizer, vocabSize: number): string[] {
    const map = byteToUnicode();
    const vocab: string[] = new Array(vocabSize);
    for (let id = 0; id < vocabSize; id++) {
      const bytes = id < FIRST_SPECIAL_ID ? tokenizer.tokenBytes(id) : undefined;
      // Special and reserved ids get "": xgrammar never allows them inside the grammar (the stop token aside).
      vocab[id] = bytes ? Array.from(bytes, (b) => map[b]).join("") : "";
    }
    return vocab;
  }

  /** Loads xgrammar and indexes the vocabulary (≈0.5 s for 201,088 tokens). */
  static async create(vocab: readonly string[], cacheSize = 64): Promise<StructuredOutputs> {
    const g = globalThis as Record<string, unknown>;
    g.require ??= createRequire(import.meta.url);
    g.__filename ??= import.meta.filename;
    g.__dirname ??= import.meta.dirname;
    await import("@mlc-ai/web-xgrammar");
    const xg = g.xgrammar as Xg;
    const info = await xg.TokenizerInfo.createTokenizerInfo([...vocab], "byte_level", false, vocab.length, [RETURN]);
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, true);
    return new StructuredOutputs(xg, compiler, vocab.length, cacheSize);
  }

  /**
   * A grammar for a JSON Schema, or for any JSON value (`schema` undefined). 400 naming `param` when invalid
   * (`checked`: the schema already passed checkSchema).
   */
  compile(schema: unknown, param: string, checked = false): Promise<CompiledGrammar> {
    const key = grammarKey(schema);
    const cached = this.#cache.get(key);
    if (cached) {
      this.#cache.delete(key); // LRU: most recent last
      this.#cache.set(key, cached);
      return cached;
    }
    const started = performance.now();
    const compiled = (async () => {
      if (schema !== undefined && !checked) checkSchema(schema, param); // `checked`: the caller ran it (remote.ts)
      const fatal: string[] = [];
      try {
        const handle = await quietly(
          fatal,
          () =>
            schema === undefined
              ? this.#compiler.compileBuiltinJSONGrammar()
              : this.#compiler.compileJSONSchema(key, false, undefined, undefined, true),
        );
        this.compileTimesMs.push({ key: key.slice(0, 80), ms: performance.now() - started });
        return { key, handle };
      } catch (err) {
        this.#cache.delete(key);
        const reason = fatal.find((line) => line.includes("[FATAL]"))?.replace(/^.*?\d+: /, "") ??
          (err instanceof Error ? err.message : String(err)).split("\n")[0];
        throw new InvalidRequestError(`The schema cannot be used: ${reason}`, param);
      }
    })();
    this.#cache.set(key, compiled);
    while (this.#cache.size > this.cacheSize) this.#cache.delete(this.#cache.keys().next().value!);
    return compiled;
  }

  /** A fresh matcher for a compiled grammar; `stopToken` ends it (default `<|return|>`; tool arguments: `<|call|>`). */
  async matcher(grammar: CompiledGrammar, stopToken = RETURN): Promise<SyncMatcher> {
    const matcher = await this.#xg.GrammarMatcher.createGrammarMatcher(grammar.handle, [stopToken]);
    const words = Math.ceil(this.#vocabSize / 32);
    const vocabSize = this.#vocabSize;
    return {
      accept: (tokenId) => matcher.acceptToken(tokenId),
      mask: () => {
        if (matcher.isTerminated()) return new Int32Array(words); // nothing may follow (asking would abort)
        const vector = matcher.handle.GetNextTokenBitmask(vocabSize);
        const out = new Int32Array(words);
        for (let i = 0; i < words; i++) out[i] = vector.get(i);
        vector.delete();
        return out;
      },
      get terminated() {
        return matcher.isTerminated();
      },
      reset: () => matcher.reset(),
      dispose: () => matcher.dispose(),
    };
  }
}

/** Rejects what is not a JSON Schema (by the draft 2020-12 meta-schema, references resolved) before xgrammar sees it. */
export function checkSchema(schema: unknown, param: string): void {
  if (typeof schema !== "object" && typeof schema !== "boolean") {
    throw new InvalidRequestError("The schema must be a JSON object", param);
  }
  try {
    new Ajv2020({ strict: false, validateFormats: false }).compile(schema as object);
  } catch (err) {
    throw new InvalidRequestError(`The schema is invalid: ${(err as Error).message}`, param);
  }
}

/**
 * Runs a grammar compilation with xgrammar's own fatal messages kept out of the server's stderr: its WebAssembly
 * prints "[FATAL] …" and "Aborted()" through console.error before it throws. Those lines go to `fatal` (for the 400's
 * message); anything else passes through. The compilation runs synchronously inside the call, so nothing else logs
 * in between.
 */
async function quietly<T>(fatal: string[], run: () => Promise<T>): Promise<T> {
  const original = console.error;
  console.error = (...args: unknown[]) => {
    const text = args.map(String).join(" ");
    if (/^\[FATAL\]|^Aborted\(/.test(text)) fatal.push(text);
    else original(...args);
  };
  try {
    return await run();
  } finally {
    console.error = original;
  }
}
