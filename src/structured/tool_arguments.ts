/**
 * Strict tool calls: once the model has written a call's header (`… to=functions.NAME … <|message|>`) for a tool
 * declared with `strict: true`, the arguments are masked by that tool's `parameters` grammar and `<|call|>` is allowed
 * only where the arguments are complete. Everything else is left to `inner` (the tool_choice guide that forces the
 * header for "required" or a named tool) or to the model.
 */
import type { GuideStep, TokenGuide } from "../harmony/tool_guide.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { MESSAGE, START } from "../harmony/tokens.ts";
import type { GrammarMatcher } from "./xgrammar.ts";

export function strictToolGuide(
  tokenizer: Tokenizer,
  matchers: ReadonlyMap<string, GrammarMatcher>,
  inner: TokenGuide | undefined,
): TokenGuide {
  let seen = 0;
  let headerStart = 0; // where the message being generated began (after its <|start|>, or at 0)
  let active: GrammarMatcher | undefined;
  let disposed = false;
  const consume = (generated: readonly number[], i: number) => {
    const id = generated[i];
    if (active) {
      active.accept(id);
      if (active.terminated) active = undefined;
      return;
    }
    if (id === START) headerStart = i + 1;
    else if (id === MESSAGE) {
      const header = tokenizer.decode(generated.slice(headerStart, i));
      const name = /to=functions\.([^\s<]+)/.exec(header)?.[1];
      const matcher = name === undefined ? undefined : matchers.get(name);
      if (matcher) {
        matcher.reset();
        active = matcher;
      }
    }
  };
  return {
    next(generated): GuideStep {
      for (; seen < generated.length; seen++) consume(generated, seen);
      if (active) return { mask: active.mask() };
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
