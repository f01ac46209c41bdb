/** Our tokenizer against OpenAI's tiktoken core (WASM): identical ids on a few MB of mixed text. */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { get_encoding } from "tiktoken";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { mixedText } from "./helpers/mixed_text.ts";

Deno.test("encode() equals tiktoken o200k_base on 3 MB of mixed text (English, code, CJK, emoji, whitespace)", () => {
  const tokenizer = new Tokenizer();
  const reference = get_encoding("o200k_base");
  try {
    const text = mixedText(3_000_000, 42);
    // Chunks of varied size so chunk edges land everywhere; each compared on its own.
    let offset = 0;
    let chunks = 0;
    let tokens = 0;
    while (offset < text.length) {
      const size = 500 + ((offset * 7919) % 6000);
      let end = Math.min(text.length, offset + size);
      if (end < text.length && /[\uDC00-\uDFFF]/.test(text[end])) end++; // never split a surrogate pair
      const chunk = text.slice(offset, end);
      // tiktoken: no special token allowed, none disallowed, so "<|endoftext|>" is ordinary text as in ours.
      const expected = Array.from(reference.encode(chunk, [], []));
      const actual = tokenizer.encode(chunk);
      assertEquals(actual, expected, `chunk at ${offset}`);
      assertEquals(tokenizer.decode(actual), chunk);
      tokens += actual.length;
      chunks++;
      offset = end;
    }
    console.log(`compared ${chunks} chunks, ${tokens} tokens, ${(text.length / 1e6).toFixed(1)}M characters`);
  } finally {
    reference.free();
  }
});
