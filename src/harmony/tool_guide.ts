/**
 * Forced decoding for tool_choice "required" and a named function (harmony.md §12.1): once the model has finished
 * its analysis message and opens the next one (`<|end|><|start|>assistant<|channel|>`), it must write
 * `commentary to=functions.NAME <|constrain|>json<|message|>` where NAME is the named function or, for "required",
 * one of the declared tools. The candidate headers, tokenized as the named case is, form a token trie: where one
 * token can follow it is forced, where the names branch the model samples among the branches only (so it picks the
 * tool, and cannot pick an undeclared one). A first message on the final channel is accepted as is.
 */
import type { Tokenizer } from "./tokenizer.ts";
import { CHANNEL, CONSTRAIN, END, MESSAGE, START } from "./tokens.ts";

/**
 * What a guide wants at the next position: a forced token, a set to sample within, a bitmask over the vocabulary
 * (bit id & 31 of word id >> 5: a grammar's allowed tokens), or nothing (sample freely).
 */
export type GuideStep =
  | number
  | { readonly allowed: ReadonlySet<number> }
  | { readonly mask: Int32Array }
  | undefined;

/** Chooses forced tokens while a request generates. */
export interface TokenGuide {
  /** The constraint on the next token, given what was generated so far (each call sees one more token). */
  next(generated: readonly number[]): GuideStep;
  /**
   * Gets ready to answer {@link next} for `generated` (e.g. a grammar's mask computed in a worker); the engine calls
   * it while the step's forward pass runs and awaits it before sampling. Never rejects.
   */
  prepare?(generated: readonly number[]): Promise<void>;
  /** Frees what the guide holds outside the JS heap; the engine calls it once when the request ends. */
  dispose?(): void;
}

function endsWith(ids: readonly number[], suffix: readonly number[]): boolean {
  if (ids.length < suffix.length) return false;
  for (let i = 0; i < suffix.length; i++) if (ids[ids.length - suffix.length + i] !== suffix[i]) return false;
  return true;
}

interface TrieNode {
  readonly children: Map<number, TrieNode>;
}

/** A guide for tool_choice "required" (any of `toolNames`) or `{name}`. */
export function toolChoiceGuide(
  tokenizer: Tokenizer,
  choice: "required" | { name: string },
  toolNames: readonly string[],
): TokenGuide {
  const names = typeof choice === "object" ? [choice.name] : [...new Set(toolNames)];
  const root: TrieNode = { children: new Map() };
  for (const name of names) {
    const header = [
      ...tokenizer.encode(`commentary to=functions.${name}`),
      ...tokenizer.encode(" "),
      CONSTRAIN,
      ...tokenizer.encode("json"),
      MESSAGE,
    ];
    let node = root;
    for (const id of header) {
      let child = node.children.get(id);
      if (!child) node.children.set(id, child = { children: new Map() });
      node = child;
    }
  }
  const trigger = [END, START, ...tokenizer.encode("assistant"), CHANNEL];
  const finalFirst = [CHANNEL, ...tokenizer.encode("final")];
  let node: TrieNode | undefined; // set while guiding: the header tokens so far end here
  let finished = names.length === 0;
  return {
    next(generated) {
      if (finished) return undefined;
      if (node === undefined) {
        if (generated.length === finalFirst.length && endsWith(generated, finalFirst)) finished = true;
        if (finished || !endsWith(generated, trigger)) return undefined;
        node = root;
      } else {
        // The token chosen at the previous step (forced or sampled within the branches).
        node = node.children.get(generated[generated.length - 1]);
        if (node === undefined || node.children.size === 0) {
          finished = true;
          return undefined;
        }
      }
      if (node.children.size === 1) return node.children.keys().next().value!;
      return { allowed: new Set(node.children.keys()) };
    },
  };
}
