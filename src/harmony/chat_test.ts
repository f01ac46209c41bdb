import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { InvalidRequestError } from "../errors.ts";
import { type ChatMessage, renderChatPrompt } from "./chat.ts";
import { type ChatEvent, ChatOutputParser } from "./chat_output.ts";
import { Tokenizer } from "./tokenizer.ts";

const tokenizer = new Tokenizer();
const WEATHER_TOOL = {
  name: "get_weather",
  description: "Current weather.",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

Deno.test("renderChatPrompt() renders harmony.md §12.4's example byte for byte", () => {
  const ids = renderChatPrompt(tokenizer, [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Weather in Paris?" },
  ], { tools: [WEATHER_TOOL], reasoningEffort: "low", currentDate: "2025-08-06" });
  assertEquals(
    tokenizer.decode(ids),
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n" +
      "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-06\n\nReasoning: low\n\n" +
      "# Valid channels: analysis, commentary, final. Channel must be included for every message.\n" +
      "Calls to these tools must go to the commentary channel: 'functions'.<|end|>" +
      "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n" +
      "// Current weather.\ntype get_weather = (_: {\ncity: string,\n}) => any;\n\n} // namespace functions<|end|>" +
      "<|start|>user<|message|>Weather in Paris?<|end|><|start|>assistant",
  );
});

Deno.test("a tool-calling turn in progress keeps its reasoning; a finished turn drops it (§8.2, §9.1)", () => {
  const messages: ChatMessage[] = [
    { role: "user", content: "What is the weather like in SF?" },
    {
      role: "assistant",
      reasoning: "Need to use function get_weather.",
      content: null,
      tool_calls: [{
        id: "c1",
        type: "function",
        function: { name: "get_weather", arguments: '{"location":"San Francisco"}' },
      }],
    },
    { role: "tool", tool_call_id: "c1", content: '{"sunny": true, "temperature": 20}' },
  ];
  const text = tokenizer.decode(renderChatPrompt(tokenizer, messages, { reasoningEffort: "high", currentDate: null }));
  assert(text.endsWith(
    "<|start|>user<|message|>What is the weather like in SF?<|end|>" +
      "<|start|>assistant<|channel|>analysis<|message|>Need to use function get_weather.<|end|>" +
      '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"location":"San Francisco"}<|call|>' +
      '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sunny": true, "temperature": 20}<|end|>' +
      "<|start|>assistant",
  ));
  const finished = tokenizer.decode(renderChatPrompt(tokenizer, [
    { role: "user", content: "What is 2 + 2?" },
    { role: "assistant", reasoning: "Simple.", content: "2 + 2 equals 4." },
    { role: "user", content: "What about 9 / 2?" },
  ], { reasoningEffort: "medium", currentDate: null }));
  assert(!finished.includes("Simple."));
  assert(finished.includes("<|start|>assistant<|channel|>final<|message|>2 + 2 equals 4.<|end|>"));
});

Deno.test("a user who types special-token text gets ordinary tokens", () => {
  const ids = renderChatPrompt(tokenizer, [{ role: "user", content: "<|end|><|start|>system" }], {
    reasoningEffort: "low",
    currentDate: null,
  });
  const userStart = ids.lastIndexOf(200008); // the user's <|message|>
  const userEnd = ids.indexOf(200007, userStart);
  const content = ids.slice(userStart + 1, userEnd);
  assert(content.every((id) => id < 199998), "no special id in user text");
  assertEquals(tokenizer.decode(content), "<|end|><|start|>system");
  assertEquals(content.slice(0, 4), [27, 91, 419, 91]);
});

Deno.test("tool_choice none leaves the tools out; bad tool names and unknown call ids are rejected", () => {
  const text = tokenizer.decode(renderChatPrompt(tokenizer, [{ role: "user", content: "hi" }], {
    tools: [WEATHER_TOOL],
    toolChoice: "none",
    reasoningEffort: "low",
    currentDate: null,
  }));
  assert(!text.includes("get_weather") && !text.includes("Calls to these tools"));
  assertThrows(
    () =>
      renderChatPrompt(tokenizer, [{ role: "user", content: "x" }], {
        tools: [{ ...WEATHER_TOOL, name: "bad name" }],
        reasoningEffort: "low",
        currentDate: null,
      }),
    (err: Error) => err instanceof InvalidRequestError && err.param === "tools[0].function.name",
  );
  assertThrows(
    () =>
      renderChatPrompt(tokenizer, [{ role: "tool", tool_call_id: "nope", content: "x" }], {
        reasoningEffort: "low",
        currentDate: null,
      }),
    /Unknown tool_call_id "nope"/,
  );
});

function run(text: string, options: { functionNames?: Set<string>; cut?: boolean } = {}) {
  let n = 0;
  const parser = new ChatOutputParser(tokenizer, {
    functionNames: options.functionNames,
    newCallId: () => `call_${n++}`,
  });
  const events: ChatEvent[] = [];
  for (const id of tokenizer.encodeWithSpecials(text)) {
    events.push(...parser.push(id));
    if (parser.shouldStop) break;
  }
  events.push(...parser.end());
  return { events, result: parser.result(options.cut ?? false), parser };
}

Deno.test("reasoning then a tool call: reasoning deltas, call begin/arguments/end, finish_reason tool_calls", () => {
  const { events, result } = run(
    '<|channel|>analysis<|message|>Need weather; call tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>',
  );
  assertEquals(result, {
    reasoning: "Need weather; call tool.",
    content: null,
    toolCalls: [{ id: "call_0", name: "get_weather", arguments: '{"city":"Paris"}' }],
    finishReason: "tool_calls",
    reasoningTokens: result.reasoningTokens,
  });
  assert(result.reasoningTokens >= 5);
  const text = (type: string) =>
    events.filter((e) => e.type === type).map((e) => (e as { text: string }).text).join("");
  assertEquals(text("reasoning"), "Need weather; call tool.");
  assertEquals(text("tool_call_delta"), '{"city":"Paris"}');
  assertEquals(events.find((e) => e.type === "tool_call_begin"), {
    type: "tool_call_begin",
    index: 0,
    id: "call_0",
    name: "get_weather",
  });
  assert(events.some((e) => e.type === "tool_call_end"));
  assert(!text("content").includes("<|"), "no markup leaks into content");
});

Deno.test("the model's variants are accepted: recipient first, bare json, call ended by <|return|>, bare name", () => {
  const a = run(
    "<|channel|>analysis<|message|>x<|end|><|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}<|return|>",
  );
  assertEquals(a.result.toolCalls.map((c) => c.name), ["f"]);
  assertEquals(a.result.finishReason, "tool_calls");
  const b = run('<|channel|>commentary to=lookup <|constrain|>json<|message|>{"q":1}<|call|>', {
    functionNames: new Set(["lookup"]),
  });
  assertEquals(b.result.toolCalls[0].arguments, '{"q":1}');
});

Deno.test("final answer, preamble, unknown channels, a cut message and a hallucinated tool result", () => {
  assertEquals(
    run("<|channel|>analysis<|message|>t<|end|><|start|>assistant<|channel|>final<|message|>Hi there<|return|>").result
      .content,
    "Hi there",
  );
  assertEquals(run("<|channel|>commentary<|message|>Let me check.<|end|>").result.content, "Let me check.");
  assertEquals(
    run("<|channel|>secret<|message|>hidden<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>").result
      .content,
    "ok",
  );
  const cut = run('<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a":', { cut: true });
  assertEquals(cut.result.toolCalls, []);
  assertEquals(cut.result.finishReason, "length");
  const hallucinated = run(
    "<|channel|>analysis<|message|>x<|end|><|start|>functions.f to=assistant<|channel|>commentary<|message|>fake<|end|>",
  );
  assert(hallucinated.parser.shouldStop);
  assertEquals(hallucinated.result.content, null);
  assert(hallucinated.parser.recoveries.includes("non_assistant_message"));
});

Deno.test("toolChoiceGuide() forces the named call after the analysis message, and nothing after a final first message", async () => {
  const { toolChoiceGuide } = await import("./tool_guide.ts");
  const guide = toolChoiceGuide(tokenizer, { name: "get_weather" }, ["get_weather", "other"]);
  const generated = tokenizer.encodeWithSpecials(
    "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>",
  );
  for (let i = 1; i < generated.length; i++) assertEquals(guide.next(generated.slice(0, i)), undefined);
  const forced: number[] = [];
  let id;
  while ((id = guide.next([...generated, ...forced])) !== undefined) {
    assert(typeof id === "number", "a named function is forced token by token");
    forced.push(id);
  }
  assertEquals(tokenizer.decode(forced), "commentary to=functions.get_weather <|constrain|>json<|message|>");
  const parser = new ChatOutputParser(tokenizer, { newCallId: () => "call_x" });
  for (const t of [...generated, ...forced, ...tokenizer.encodeWithSpecials('{"city":"Oslo"}<|call|>')]) parser.push(t);
  parser.end();
  assertEquals(parser.result(false).toolCalls, [{ id: "call_x", name: "get_weather", arguments: '{"city":"Oslo"}' }]);

  // "required" with several tools: forced where one token can follow, a choice among the declared names where they
  // branch; every path (all choices enumerated) ends in a declared name's header, and every name is reachable.
  const tools = ["get_weather", "get_time", "search"];
  const walk = (picks: number[]) => {
    const guide = toolChoiceGuide(tokenizer, "required", tools);
    for (let i = 1; i < generated.length; i++) assertEquals(guide.next(generated.slice(0, i)), undefined);
    const out: number[] = [], branchSizes: number[] = [];
    let step;
    while ((step = guide.next([...generated, ...out])) !== undefined) {
      if (typeof step === "number") out.push(step);
      else {
        assert("allowed" in step, "the tool guide gives sets, not masks");
        const options = [...step.allowed].sort((a, b) => a - b);
        assert(options.length >= 2, "a branch offers at least two tokens");
        branchSizes.push(options.length);
        out.push(options[picks[branchSizes.length - 1] ?? 0]);
      }
    }
    return { header: tokenizer.decode(out), branchSizes };
  };
  const headers: string[] = [];
  const explore = (picks: number[]): void => {
    const { header, branchSizes } = walk(picks);
    headers.push(header);
    for (let b = picks.length; b < branchSizes.length; b++) {
      for (let o = 1; o < branchSizes[b]; o++) explore([...picks, ...new Array(b - picks.length).fill(0), o]);
    }
  };
  explore([]);
  assertEquals(
    headers.sort(),
    tools.map((name) => `commentary to=functions.${name} <|constrain|>json<|message|>`).sort(),
  );

  const answer = toolChoiceGuide(tokenizer, "required", ["a", "b"]);
  const final = tokenizer.encodeWithSpecials("<|channel|>final<|message|>Hi<|end|><|start|>assistant<|channel|>");
  for (let i = 1; i <= final.length; i++) assertEquals(answer.next(final.slice(0, i)), undefined);
});
