import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { InvalidRequestError } from "../errors.ts";
import { MAX_CACHED_PIECE, mergeCacheSize, Tokenizer } from "./tokenizer.ts";

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
