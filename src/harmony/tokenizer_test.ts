import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { InvalidRequestError } from "../errors.ts";
import { bpeCost, MAX_BPE_COST, MAX_CACHED_PIECE, mergeCacheSize, Tokenizer } from "./tokenizer.ts";

const tokenizer = new Tokenizer();

Deno.test("long pieces stay out of the BPE merge cache (a hostile text cannot grow it by megabytes)", () => {
  const before = mergeCacheSize();
  for (let i = 0; i < 50; i++) tokenizer.encode(`${i}${"%|".repeat(5_000)}`); // 50 distinct 10,000-char pieces
  assert(mergeCacheSize() - before < 50, `the cache grew by ${mergeCacheSize() - before} entries`);
  tokenizer.encode(" zyzzyvaqx"); // a short new piece is still cached
  assert(mergeCacheSize() > before || before >= 100_000);
  assert(MAX_CACHED_PIECE <= 64);
});

Deno.test("a run too long for the BPE library is a 400-class error, not a crash", () => {
  assertThrows(() => tokenizer.encode("%|".repeat(200_000)), (err: Error) => err instanceof InvalidRequestError);
  assertEquals(tokenizer.decode(tokenizer.encode("hello world")), "hello world");
});

Deno.test("text whose BPE work would be quadratic in a long run is refused before the library sees it", () => {
  for (const text of ["{".repeat(1_500_000), "a".repeat(60_000), " ".repeat(100_000) + "x"]) {
    assertThrows(() => tokenizer.encode(text), (err: Error) => err instanceof InvalidRequestError);
    // Refused by the linear precheck, before the library's quadratic work.
    assert(bpeCost(text) > MAX_BPE_COST, `${text.length}: cost ${bpeCost(text)}`);
  }
  // Long text of ordinary words is fine, whatever its length.
  const prose = "the quick brown fox jumps over the lazy dog ".repeat(20_000); // 880,000 characters
  assert(bpeCost(prose) < MAX_BPE_COST);
  assertEquals(tokenizer.encode(prose).length, 9 * 20_000 + 1);
});
