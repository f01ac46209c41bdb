/** The official harmony vectors (../shared/harmony-vectors): rendering byte for byte and token for token, parsing. */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { HarmonyParser, type ParsedMessage } from "../src/harmony/parse.ts";
import {
  type HarmonyMessage,
  renderConversation,
  renderForCompletion,
  renderMessage,
  type Role,
} from "../src/harmony/render.ts";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { END } from "../src/harmony/tokens.ts";

const ROOT = new URL("../../shared/harmony-vectors/", import.meta.url).pathname;
const vectors = JSON.parse(Deno.readTextFileSync(`${ROOT}vectors.json`));
const tokenizer = new Tokenizer();

function expectedText(file: string): string {
  return Deno.readTextFileSync(`${ROOT}${file}`).trimEnd();
}

function plain(message: ParsedMessage): Record<string, unknown> {
  const { endToken: _end, ...rest } = message;
  return rest;
}

function parseAll(ids: number[], initialRole: Role | null, endOfStream: boolean, onDelta?: (t: string) => void) {
  const parser = new HarmonyParser(tokenizer, initialRole ? { initialRole } : {});
  for (const id of ids) {
    for (const event of parser.push(id)) if (event.type === "delta") onDelta?.(event.text);
  }
  if (endOfStream) parser.end();
  return parser.messages.map(plain);
}

Deno.test("tokenizer check values: ordinary text never yields special ids", () => {
  for (const check of vectors.tokenizerChecks) {
    assertEquals(tokenizer.encode(check.text), check.ordinaryIds);
    if (check.specialIds) assertEquals(tokenizer.encodeWithSpecials(check.text), check.specialIds);
  }
});

for (const vector of vectors.vectors) {
  Deno.test(`harmony vector ${vector.file} (${vector.operation})`, () => {
    const expected = expectedText(vector.file);
    const messages = vector.messages as HarmonyMessage[];
    const rule = vector.autoDropAnalysis ? "harmony-lib" : "none";
    switch (vector.operation) {
      case "renderForCompletion":
      case "renderConversation": {
        const ids = vector.operation === "renderForCompletion"
          ? renderForCompletion(tokenizer, messages, { rule, nextRole: vector.nextRole })
          : renderConversation(tokenizer, messages, rule);
        if (vector.compare.includes("text")) assertEquals(tokenizer.decode(ids), expected);
        if (vector.compare.includes("tokens")) assertEquals(ids, tokenizer.encodeWithSpecials(expected));
        break;
      }
      case "renderMessageAndParse": {
        const ids = renderMessage(tokenizer, messages[0]);
        assertEquals(ids[ids.length - 1], END);
        assertEquals(tokenizer.decode(ids.slice(0, -1)), expected);
        assertEquals(parseAll(tokenizer.encodeWithSpecials(expected), null, true), messages);
        break;
      }
      case "parseCompletion": {
        const ids = vector.input === "tokenIds"
          ? expected.split(/\s+/).map(Number)
          : tokenizer.encodeWithSpecials(expected);
        if (vector.expectedDecodedText) assertEquals(tokenizer.decode(ids), vector.expectedDecodedText);
        assertEquals(parseAll(ids, vector.initialRole, vector.endOfStream), vector.expectedMessages);
        break;
      }
      default:
        throw new Error(`unknown operation ${vector.operation}`);
    }
  });
}

for (const c of vectors.inlineParseCases) {
  Deno.test(`harmony parse case ${c.name}`, () => {
    const ids = c.text !== undefined ? tokenizer.encodeWithSpecials(c.text) : [
      ...tokenizer.encodeWithSpecials(c.tokenIds.prefixText),
      ...c.tokenIds.ids,
      ...tokenizer.encodeWithSpecials(c.tokenIds.suffixText),
    ];
    const deltas: string[] = [];
    const messages = parseAll(ids, c.initialRole, c.endOfStream, (t) => deltas.push(t));
    assertEquals(messages, c.expectedMessages);
    if (c.expectedDeltas) assertEquals(deltas, c.expectedDeltas);
    if (c.alsoRenderBack) {
      assertEquals(renderMessage(tokenizer, messages[0] as unknown as HarmonyMessage).slice(0, -1), ids.slice(0, -1));
    }
  });
}
