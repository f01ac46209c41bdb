/**
 * Forced decoding for tool_choice "required" and a named function (harmony.md §12.1): once the model has finished
 * its analysis message and opens the next one (`<|end|><|start|>assistant<|channel|>`), force the tokens of
 * `commentary to=functions.NAME <|constrain|>json<|message|>` (named, or "required" with a single tool) or of
 * `commentary to=functions.` (required with several tools: the model then picks the name itself; the name is not
 * restricted to the declared tools in this version). A first message on the final channel is accepted as is.
 */
import type { Tokenizer } from "./tokenizer.ts";
import { CHANNEL, CONSTRAIN, END, MESSAGE, START } from "./tokens.ts";

/** Chooses forced tokens while a request generates. */
export interface TokenGuide {
  /** The token to force next, given what was generated so far, or undefined to sample freely. */
  next(generated: readonly number[]): number | undefined;
}

function endsWith(ids: readonly number[], suffix: readonly number[]): boolean {
  if (ids.length < suffix.length) return false;
  for (let i = 0; i < suffix.length; i++) if (ids[ids.length - suffix.length + i] !== suffix[i]) return false;
  return true;
}

/** A guide for tool_choice "required" or `{name}`; undefined when nothing needs forcing. */
export function toolChoiceGuide(
  tokenizer: Tokenizer,
  choice: "required" | { name: string },
  toolNames: readonly string[],
): TokenGuide {
  const name = typeof choice === "object" ? choice.name : toolNames.length === 1 ? toolNames[0] : undefined;
  const forced = name !== undefined
    ? [
      ...tokenizer.encode(`commentary to=functions.${name}`),
      ...tokenizer.encode(" "),
      CONSTRAIN,
      ...tokenizer.encode("json"),
      MESSAGE,
    ]
    : tokenizer.encode("commentary to=functions.");
  const trigger = [END, START, ...tokenizer.encode("assistant"), CHANNEL];
  const finalFirst = [CHANNEL, ...tokenizer.encode("final")];
  let position = -1; // index into `forced` while forcing
  let finished = false;
  return {
    next(generated) {
      if (finished) return undefined;
      if (position < 0) {
        if (generated.length === finalFirst.length && endsWith(generated, finalFirst)) finished = true;
        if (finished || !endsWith(generated, trigger)) return undefined;
        position = 0;
      }
      const id = forced[position++];
      if (position >= forced.length) finished = true;
      return id;
    },
  };
}
