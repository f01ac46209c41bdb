/**
 * Structured outputs for the endpoints: which constraint a request asks for (`response_format` json_schema /
 * json_object, Responses `text.format`, or vLLM's `guided_json` / `guided_choice`), compiled once per schema
 * (src/structured/xgrammar.ts caches them), and one grammar guide per choice; tools declared `strict: true` get
 * their arguments constrained to their `parameters`. Refused: `guided_regex` (the grammar engine build we use has no
 * regex front end), and a response format together with a forced tool call.
 */
import { InvalidRequestError } from "../errors.ts";
import type { TokenGuide } from "../harmony/tool_guide.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { CALL } from "../harmony/tokens.ts";
import { structuredGuide } from "../structured/guide.ts";
import { strictToolGuide } from "../structured/tool_arguments.ts";
import { RemoteGrammars } from "../structured/remote.ts";
import type { ServingModel } from "./serving.ts";

/** What to constrain the answer to: a JSON Schema, or (schema undefined) any JSON object/value. */
export interface StructuredSpec {
  readonly schema: unknown;
  /** The request field to name in errors. */
  readonly param: string;
}

/** One grammar worker per tokenizer, started on first use (≈0.5 s to index the vocabulary there). */
const engines = new WeakMap<Tokenizer, RemoteGrammars>();

function engineFor(model: ServingModel): RemoteGrammars {
  let engine = engines.get(model.tokenizer);
  if (!engine) {
    engine = new RemoteGrammars(model.tokenizer, model.engine.vocabSize);
    engines.set(model.tokenizer, engine);
  }
  return engine;
}

/** The fields a chat request may constrain its answer with. */
export interface StructuredFields {
  readonly response_format?: { type: string; json_schema?: { schema?: unknown } };
  readonly guided_json?: unknown;
  readonly guided_choice?: readonly string[];
  readonly guided_regex?: unknown;
}

/** The constraint a chat request asks for, if any. */
export function chatStructuredSpec(request: StructuredFields): StructuredSpec | undefined {
  if (request.guided_regex !== undefined) {
    throw new InvalidRequestError("guided_regex is not supported: use guided_json or response_format", "guided_regex");
  }
  if (request.guided_json !== undefined) {
    const schema = typeof request.guided_json === "string" ? parseSchema(request.guided_json) : request.guided_json;
    return { schema, param: "guided_json" };
  }
  if (request.guided_choice !== undefined) {
    return { schema: { enum: request.guided_choice }, param: "guided_choice" };
  }
  const format = request.response_format;
  if (format?.type === "json_object") return { schema: undefined, param: "response_format" };
  if (format?.type === "json_schema") {
    if (format.json_schema?.schema === undefined) {
      throw new InvalidRequestError("response_format.json_schema.schema is required", "response_format");
    }
    return { schema: format.json_schema.schema, param: "response_format" };
  }
  return undefined;
}

function parseSchema(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new InvalidRequestError("guided_json is not valid JSON", "guided_json");
  }
}

/** Compiles the constraint (400 naming the field when the schema cannot be used) and makes `count` guides. */
export async function structuredGuides(
  model: ServingModel,
  spec: StructuredSpec,
  count: number,
  options: { maxReasoningTokens?: number; onForcedClose?: () => void },
): Promise<TokenGuide[]> {
  const engine = engineFor(model);
  const grammar = await engine.compile(spec.schema, spec.param);
  return await Promise.all(Array.from({ length: count }, async () =>
    structuredGuide({
      tokenizer: model.tokenizer,
      vocabSize: model.engine.vocabSize,
      matcher: await engine.matcher(grammar),
      maxReasoningTokens: options.maxReasoningTokens,
      onForcedClose: options.onForcedClose,
    })));
}

/** A tool declared with `strict: true`. */
export interface StrictTool {
  readonly name: string;
  readonly parameters: unknown;
  /** The request field to name in errors (`tools[2].function.parameters`). */
  readonly param: string;
}

/** Wraps each choice's guide (or none) so that strict tools' arguments follow their schemas. */
export async function strictToolGuides(
  model: ServingModel,
  tools: readonly StrictTool[],
  inner: readonly (TokenGuide | undefined)[],
): Promise<TokenGuide[]> {
  const engine = engineFor(model);
  const grammars = await Promise.all(tools.map((t) => engine.compile(t.parameters ?? { type: "object" }, t.param)));
  return await Promise.all(inner.map(async (guide) => {
    const matchers = new Map(
      await Promise.all(tools.map(async (t, i) => [t.name, await engine.matcher(grammars[i], CALL)] as const)),
    );
    return strictToolGuide(model.tokenizer, matchers, guide);
  }));
}
