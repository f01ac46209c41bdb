import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { StructuredOutputs } from "./xgrammar.ts";

/** A byte vocabulary (ids 0–255 are the bytes, in GPT-2's printable alphabet) plus specials up to 200,003. */
async function tinyEngine() {
  const vocab: string[] = new Array(200_064).fill("");
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    vocab[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return await StructuredOutputs.create(vocab);
}

const allowed = (mask: Int32Array) => {
  const ids: number[] = [];
  for (let id = 0; id < mask.length * 32; id++) if ((mask[id >> 5] >>> (id & 31)) & 1) ids.push(id);
  return ids;
};

Deno.test("xgrammar: a boolean schema allows t/f first, <|return|> only when complete; no mask after the end", async () => {
  const engine = await tinyEngine();
  const grammar = await engine.compile({ type: "boolean" }, "p");
  const matcher = await engine.matcher(grammar);
  assertEquals(allowed(matcher.mask()), ["f".charCodeAt(0), "t".charCodeAt(0)]);
  for (const ch of "tru") assert(matcher.accept(ch.charCodeAt(0)));
  assertEquals(allowed(matcher.mask()), ["e".charCodeAt(0)]);
  assert(matcher.accept("e".charCodeAt(0)));
  assertEquals(allowed(matcher.mask()), [200_002], "the answer is complete: only <|return|>");
  assert(!matcher.accept("x".charCodeAt(0)), "the grammar rejects more text");
  assert(matcher.accept(200_002));
  assert(matcher.terminated);
  assertEquals(allowed(matcher.mask()), [], "asking after the end gives an empty mask instead of aborting");
  matcher.dispose();
  const cached = await engine.compile({ type: "boolean" }, "p");
  assertEquals(cached, grammar, "compiled once per schema");
});
