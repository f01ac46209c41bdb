/** Fuzzing the harmony parsers: 10,000 random and mutated completions never throw; streaming equals one-shot. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ChatOutputParser } from "../src/harmony/chat_output.ts";
import { HarmonyParser, parseCompletion } from "../src/harmony/parse.ts";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { rng } from "./helpers/random.ts";

const tokenizer = new Tokenizer();

const REAL_OUTPUTS = [
  '<|channel|>analysis<|message|>User asks for weather in Paris. Use get_weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris","unit":"celsius"}<|call|>',
  "<|channel|>analysis<|message|>Simple arithmetic: 2+2=4.<|end|><|start|>assistant<|channel|>final<|message|>2 + 2 = 4. 💖 東京<|return|>",
  '<|channel|>commentary<|message|>Let me look that up.<|end|><|start|>assistant to=functions.search<|channel|>commentary json<|message|>{"q": "deno"}<|call|>',
  "<|channel|>analysis<|message|>Thinking…\n\nStep 1.<|end|><|start|>assistant<|channel|>final<|message|>Done.<|end|>",
];

const SPECIALS = [199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200018, 201087];

function mutate(base: number[], random: () => number): number[] {
  const int = (n: number) => Math.floor(random() * n);
  const ids = [...base];
  const edits = 1 + int(6);
  for (let e = 0; e < edits; e++) {
    const at = int(ids.length + 1);
    switch (int(7)) {
      case 0:
        ids.splice(at, 0, SPECIALS[int(SPECIALS.length)]);
        break;
      case 1:
        ids.splice(at, 1 + int(4));
        break;
      case 2:
        ids.splice(at, 0, int(201088));
        break;
      case 3:
        ids.splice(at, 0, [-1, 201088, 1e9, 0.5, NaN][int(5)]);
        break;
      case 4:
        ids.length = Math.min(ids.length, at); // truncation, as max_tokens does
        break;
      case 5: {
        const start = int(ids.length);
        ids.splice(at, 0, ...ids.slice(start, start + int(10)));
        break;
      }
      default:
        ids.splice(at, 0, 9552, 31446); // partial UTF-8 bytes
    }
  }
  return ids;
}

function randomSequence(random: () => number): number[] {
  const length = Math.floor(random() * 60);
  return Array.from(
    { length },
    () => random() < 0.3 ? SPECIALS[Math.floor(random() * SPECIALS.length)] : Math.floor(random() * 200000),
  );
}

Deno.test("fuzz: 10,000 token sequences through both parsers; none throws; streamed deltas equal the one-shot parse", () => {
  const random = rng(7);
  const bases = REAL_OUTPUTS.map((text) => tokenizer.encodeWithSpecials(text));
  let recoveries = 0;
  for (let i = 0; i < 10_000; i++) {
    const ids = i % 4 === 0 ? randomSequence(random) : mutate(bases[i % bases.length], random);
    const initialRole = i % 2 === 0 ? "assistant" as const : undefined;

    const parser = new HarmonyParser(tokenizer, { initialRole });
    const deltas = new Map<number, string>();
    const onEvents = (events: ReturnType<HarmonyParser["push"]>) => {
      for (const event of events) {
        if (event.type === "delta") deltas.set(event.index, (deltas.get(event.index) ?? "") + event.text);
        if (event.type === "recovery") recoveries++;
      }
    };
    for (const id of ids) onEvents(parser.push(id));
    onEvents(parser.end());
    const oneShot = parseCompletion(tokenizer, ids, { initialRole });
    assertEquals(parser.messages, oneShot, `case ${i}`);
    parser.messages.forEach((m, index) =>
      assertEquals(deltas.get(index) ?? "", m.content, `case ${i} message ${index}`)
    );

    const chat = new ChatOutputParser(tokenizer, { functionNames: new Set(["search"]) });
    const args = new Map<number, string>();
    const callIds = new Map<string, number>();
    for (const id of ids) {
      for (const event of chat.push(id)) {
        if (event.type === "tool_call_begin") callIds.set(event.id, event.index);
        if (event.type === "tool_call_delta") args.set(event.index, (args.get(event.index) ?? "") + event.text);
      }
    }
    chat.end();
    for (const call of chat.result(false).toolCalls) {
      assertEquals(args.get(callIds.get(call.id)!) ?? "", call.arguments, `case ${i}: streamed arguments`);
    }
  }
  assert(recoveries > 1000, `recoveries exercised: ${recoveries}`);
});
