/**
 * Strict tool calls: once the model has written a call's header (`… to=functions.NAME … <|message|>`) for a tool
 * declared strict, the arguments are masked by that tool's `parameters` grammar and `<|call|>` is allowed only where the
 * arguments are complete. Everything else is left to `inner` (the tool_choice guide that forces the header for
 * "required" or a named tool, or a reasoning budget) or to the model. Grammars live in the worker (see guide.ts).
 */
import type { GuideStep, TokenGuide } from "../harmony/tool_guide.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { CALL, MESSAGE, START } from "../harmony/tokens.ts";
import type { GrammarMatcher } from "./remote.ts";

export function strictToolGuide(
  tokenizer: Tokenizer,
  matchers: ReadonlyMap<string, GrammarMatcher>,
  inner: TokenGuide | undefined,
): TokenGuide {
  let seen = 0;
  let headerStart = 0; // where the message being generated began (after its <|start|>, or at 0)
  let active: GrammarMatcher | undefined;
  let grammar: { mask: Int32Array; terminated: boolean } | undefined;
  let broken = false;
  let disposed = false;
  /** Moves over one generated id; returns it when it is part of a strict call's arguments. */
  const consume = (generated: readonly number[], i: number): number | undefined => {
    const id = generated[i];
    if (active) {
      if (id === CALL) active = undefined; // the call is complete (the grammar allowed <|call|> only then)
      return id;
    }
    if (id === START) headerStart = i + 1;
    else if (id === MESSAGE) {
      const header = tokenizer.decode(generated.slice(headerStart, i));
      const name = /to=functions\.([^\s<]+)/.exec(header)?.[1];
      const matcher = name === undefined ? undefined : matchers.get(name);
      if (matcher) {
        matcher.reset();
        active = matcher;
        grammar = undefined;
      }
    }
    return undefined;
  };
  return {
    async prepare(generated) {
      const wasActive = active;
      const args: number[] = [];
      for (; seen < generated.length; seen++) {
        const id = consume(generated, seen);
        if (id !== undefined && id !== CALL) args.push(id);
      }
      await inner?.prepare?.(generated);
      if (!active) return;
      try {
        grammar = await active.advance(wasActive === active ? args : []);
      } catch {
        broken = true;
      }
    },
    next(generated): GuideStep {
      for (; seen < generated.length; seen++) consume(generated, seen);
      if (active) return broken ? CALL : grammar ? { mask: grammar.mask } : undefined;
      return inner?.next(generated);
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      for (const m of matchers.values()) m.dispose();
      inner?.dispose?.();
    },
  };
}
