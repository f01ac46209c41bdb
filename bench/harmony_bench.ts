/**
 * Tokenizer and renderer speed. `deno bench -A bench/harmony_bench.ts`: encode 1 MB of mixed text with ours
 * (gpt-tokenizer BPE) and with tiktoken (OpenAI's Rust core as WASM) in the same run; the "encode" group reports
 * the ratio. Also: render a 50-message conversation with 10 tools.
 */
import { get_encoding } from "tiktoken";
import { type ChatMessage, renderChatPrompt } from "../src/harmony/chat.ts";
import { Tokenizer } from "../src/harmony/tokenizer.ts";
import { mixedText } from "../tests/helpers/mixed_text.ts";

const tokenizer = new Tokenizer();
const tiktoken = get_encoding("o200k_base");
const text = mixedText(1_000_000, 3);

Deno.bench({ name: "encode 1 MB mixed text: tiktoken (WASM)", group: "encode", baseline: true }, () => {
  tiktoken.encode(text, [], []);
});

Deno.bench({ name: "encode 1 MB mixed text: ours", group: "encode" }, () => {
  tokenizer.encode(text);
});

const tools = Array.from({ length: 10 }, (_, i) => ({
  name: `tool_${i}`,
  description: `Tool number ${i}: does something useful with its arguments.`,
  parameters: {
    type: "object",
    properties: {
      query: { type: "string", description: "What to look for" },
      limit: { type: "integer", default: 10 },
      mode: { type: "string", enum: ["fast", "slow"], default: "fast" },
      filters: {
        type: "array",
        items: { type: "object", properties: { key: { type: "string" }, value: { type: "string" } } },
      },
    },
    required: ["query"],
  },
}));
const messages: ChatMessage[] = [{ role: "system", content: "You are a helpful assistant." }];
for (let i = 0; messages.length < 50; i++) {
  messages.push({ role: "user", content: `Question ${i}: ${mixedText(300, i)}` });
  messages.push({
    role: "assistant",
    reasoning: "Thinking about it.",
    content: `Answer ${i}: ${mixedText(200, i + 100)}`,
  });
}

Deno.bench({ name: "render 50 messages with 10 tools", group: "render" }, () => {
  renderChatPrompt(tokenizer, messages, { tools, reasoningEffort: "medium", currentDate: "2025-06-28" });
});
