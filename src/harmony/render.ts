/**
 * Harmony rendering: messages → token ids, piece by piece (harmony.md §2–§9). Special tokens are inserted as ids
 * here and only here; every text piece goes through ordinary BPE.
 */
import { pushAll } from "../formats/json_depth.ts";
import { toTypeScript } from "./schema_ts.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { CALL, CHANNEL, CONSTRAIN, END, MESSAGE, START } from "./tokens.ts";

export type Role = "system" | "developer" | "user" | "assistant" | "tool";
export type ReasoningEffort = "low" | "medium" | "high";

/** A tool: name, description and optional JSON Schema of its parameters. */
export interface ToolDefinition {
  readonly name: string;
  readonly description: string;
  // deno-lint-ignore no-explicit-any
  readonly parameters?: any;
}

/** A namespace of tools (`functions`, `browser`, `python`). */
export interface ToolNamespace {
  readonly name: string;
  readonly description?: string | null;
  readonly tools: readonly ToolDefinition[];
}

/** The system message's fields (§3). */
export interface SystemContent {
  readonly modelIdentity?: string | null;
  readonly knowledgeCutoff?: string | null;
  /** YYYY-MM-DD; null leaves the line out. */
  readonly currentDate?: string | null;
  readonly reasoningEffort: ReasoningEffort;
  readonly validChannels: readonly string[];
  readonly channelRequired: boolean;
  /** Built-in tools (browser, python). */
  readonly toolNamespaces: readonly ToolNamespace[];
}

/** The developer message's fields (§4). */
export interface DeveloperContent {
  readonly instructions?: string | null;
  readonly toolNamespaces: readonly ToolNamespace[];
  /** `# Response Formats` entries (name, description, schema): §4, our settled shape. */
  readonly responseFormats?: readonly { name: string; description?: string; schema: unknown }[];
}

/** One harmony message. */
export interface HarmonyMessage {
  readonly role: Role;
  /** For tool results: the author shown instead of the role (`functions.get_weather`). */
  readonly name?: string;
  readonly recipient?: string;
  readonly channel?: string;
  /** `<|constrain|>json` (the marker is a special token) or a bare type such as `json`. */
  readonly contentType?: string;
  readonly content: string | { system: SystemContent } | { developer: DeveloperContent };
  /**
   * The ids this message was generated as (from `<|start|>` to its end token), when it is the model's own output
   * carried into a later turn: rendered as they are, so the prompt repeats exactly what was computed (prefix cache).
   */
  readonly tokens?: readonly number[];
}

/** Defaults of the system message (§3). */
export const DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI.";
export const DEFAULT_KNOWLEDGE_CUTOFF = "2024-06";
export const DEFAULT_CHANNELS: readonly string[] = ["analysis", "commentary", "final"];

/** Rust's `str::lines`: split on \n, drop one trailing \r per line, no extra line for a final \n. */
function lines(text: string): string[] {
  if (text.length === 0) return [];
  const parts = text.split("\n");
  if (parts[parts.length - 1] === "") parts.pop();
  return parts.map((line) => (line.endsWith("\r") ? line.slice(0, -1) : line));
}

/** The `# Tools` section (§5.1): namespaces sorted by name. */
export function renderToolsSection(namespaces: readonly ToolNamespace[]): string {
  const blocks = [...namespaces].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((ns) => {
    const pieces = [`## ${ns.name}\n`];
    const hasTools = ns.tools.length > 0;
    for (const line of lines(ns.description ?? "")) pieces.push(hasTools ? `// ${line}` : line);
    if (hasTools) {
      pieces.push(`namespace ${ns.name} {\n`);
      for (const tool of ns.tools) {
        for (const line of lines(tool.description)) pieces.push(`// ${line}`);
        pieces.push(
          tool.parameters === undefined || tool.parameters === null
            ? `type ${tool.name} = () => any;\n`
            : `type ${tool.name} = (_: ${toTypeScript(tool.parameters, "")}) => any;\n`,
        );
      }
      pieces.push(`} // namespace ${ns.name}`);
    }
    return pieces.join("\n");
  });
  return ["# Tools", ...blocks].join("\n\n");
}

/** The system message's text. `hasFunctionTools` adds the "Calls to these tools" line (§3 item 4). */
export function renderSystemText(content: SystemContent, hasFunctionTools: boolean): string {
  const identity = [
    content.modelIdentity,
    content.knowledgeCutoff ? `Knowledge cutoff: ${content.knowledgeCutoff}` : undefined,
    content.currentDate ? `Current date: ${content.currentDate}` : undefined,
  ].filter((line): line is string => typeof line === "string" && line.length > 0).join("\n");
  let channels = "";
  if (content.validChannels.length > 0) {
    channels = `# Valid channels: ${content.validChannels.join(", ")}.`;
    if (content.channelRequired) channels += " Channel must be included for every message.";
  }
  if (hasFunctionTools) channels += "\nCalls to these tools must go to the commentary channel: 'functions'.";
  const sections = [
    identity,
    `Reasoning: ${content.reasoningEffort}`,
    content.toolNamespaces.length > 0 ? renderToolsSection(content.toolNamespaces) : "",
    channels,
  ];
  return sections.filter((s) => s.length > 0).join("\n\n");
}

/** The developer message's text (§4). */
export function renderDeveloperText(content: DeveloperContent): string {
  const sections: string[] = [];
  if (content.instructions !== undefined && content.instructions !== null) {
    sections.push("# Instructions", content.instructions);
  }
  if (content.toolNamespaces.length > 0) sections.push(renderToolsSection(content.toolNamespaces));
  if (content.responseFormats && content.responseFormats.length > 0) {
    const formats = content.responseFormats.map((f) => {
      const description = f.description ? `// ${f.description}\n` : "";
      return `## ${f.name}\n\n${description}${JSON.stringify(f.schema)}`;
    });
    sections.push(["# Response Formats", ...formats].join("\n\n"));
  }
  return sections.join("\n\n");
}

function declaresFunctionTools(messages: readonly HarmonyMessage[]): boolean {
  return messages.some((m) =>
    typeof m.content === "object" && "developer" in m.content &&
    m.content.developer.toolNamespaces.some((ns) => ns.name === "functions" && ns.tools.length > 0)
  );
}

/** Renders one message (§2.1). `hasFunctionTools` matters only for a system message. */
export function renderMessage(tokenizer: Tokenizer, message: HarmonyMessage, hasFunctionTools = false): number[] {
  if (message.tokens) return [...message.tokens];
  const ids = [START];
  if (message.role === "tool") pushAll(ids, tokenizer.encode(message.name ?? "tool"));
  else {
    pushAll(ids, tokenizer.encode(message.role));
    if (message.name) pushAll(ids, tokenizer.encode(":" + message.name));
  }
  if (message.recipient && message.recipient !== "all") pushAll(ids, tokenizer.encode(" to=" + message.recipient));
  if (message.channel) ids.push(CHANNEL, ...tokenizer.encode(message.channel));
  if (message.contentType) {
    if (message.contentType.startsWith("<|constrain|>")) {
      const rest = message.contentType.slice("<|constrain|>".length);
      pushAll(pushAll(ids, tokenizer.encode(" ")), [CONSTRAIN]);
      pushAll(ids, tokenizer.encode(rest));
    } else {
      pushAll(ids, tokenizer.encode(" " + message.contentType));
    }
  }
  ids.push(MESSAGE);
  const content = message.content;
  const text = typeof content === "string"
    ? content
    : "system" in content
    ? renderSystemText(content.system, hasFunctionTools)
    : renderDeveloperText(content.developer);
  pushAll(ids, tokenizer.encode(text));
  ids.push(message.role === "assistant" && message.recipient && message.recipient !== "all" ? CALL : END);
  return ids;
}

/** How analysis messages of past turns are dropped (§8.2). */
export type DropAnalysis = "none" | "before-last-final" | "harmony-lib";

/** Applies a drop rule. "before-last-final" is ours (cookbook, vLLM); "harmony-lib" is the library's. */
export function dropAnalysis(messages: readonly HarmonyMessage[], rule: DropAnalysis): HarmonyMessage[] {
  if (rule === "none") return [...messages];
  const isFinal = (m: HarmonyMessage) => m.role === "assistant" && m.channel === "final";
  if (rule === "before-last-final") {
    let lastFinal = -1;
    messages.forEach((m, i) => {
      if (isFinal(m)) lastFinal = i;
    });
    return messages.filter((m, i) => !(i < lastFinal && m.role === "assistant" && m.channel === "analysis"));
  }
  const assistants = messages.filter((m) => m.role === "assistant");
  if (assistants.length === 0 || !isFinal(assistants[assistants.length - 1])) return [...messages];
  const firstFinal = messages.findIndex(isFinal);
  return messages.filter((m, i) => !(i < firstFinal && m.channel === "analysis"));
}

/** Renders a conversation (after the drop rule), nothing appended. */
export function renderConversation(
  tokenizer: Tokenizer,
  messages: readonly HarmonyMessage[],
  rule: DropAnalysis = "none",
): number[] {
  const kept = dropAnalysis(messages, rule);
  const hasFunctionTools = declaresFunctionTools(kept);
  return kept.flatMap((m) => renderMessage(tokenizer, m, hasFunctionTools));
}

/** Renders a conversation and appends `<|start|>` + the next role: the prompt for a completion (§9.1). */
export function renderForCompletion(
  tokenizer: Tokenizer,
  messages: readonly HarmonyMessage[],
  options: { rule?: DropAnalysis; nextRole?: Role } = {},
): number[] {
  return [
    ...renderConversation(tokenizer, messages, options.rule ?? "before-last-final"),
    START,
    ...tokenizer.encode(options.nextRole ?? "assistant"),
  ];
}
