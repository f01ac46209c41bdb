/**
 * Structured output for GPT-OSS (harmony): the analysis message is free text (no harmony markup inside it), then the
 * final message's header is forced (`<|start|>assistant<|channel|>final<|message|>`) and its tokens are masked by the
 * grammar, `<|return|>` allowed only where the grammar is complete. A reasoning budget closes the analysis (`<|end|>`
 * forced) after `maxReasoningTokens`; 0 skips it (the answer comes first). Tool calls are not offered here: a request
 * with a response format gets its answer on the final channel.
 *
 * The grammar lives in a worker: `prepare` (called by the engine while the step runs) feeds it the answer's new tokens
 * and fetches the next mask; `next` then answers at once.
 */
import type { GuideStep, TokenGuide } from "../harmony/tool_guide.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { CHANNEL, END, FIRST_SPECIAL_ID, MESSAGE, RETURN, START } from "../harmony/tokens.ts";
import type { GrammarMatcher } from "./remote.ts";

/** Options of {@link structuredGuide}. */
export interface StructuredGuideOptions {
  readonly tokenizer: Tokenizer;
  readonly vocabSize: number;
  readonly matcher: GrammarMatcher;
  /** Analysis tokens allowed before `<|end|>` is forced; undefined = no limit, 0 = no analysis. */
  readonly maxReasoningTokens?: number;
  /** Called when the budget closes an analysis. */
  readonly onForcedClose?: () => void;
}

/** A guide with its counters, for tests and metrics. */
export interface StructuredGuide extends TokenGuide {
  readonly state: { phase: "header" | "analysis" | "final"; reasoningTokens: number; forcedClose: boolean };
}

/** Plain text and `<|end|>`: what an analysis message may contain. */
export function analysisMask(vocabSize: number): Int32Array {
  const mask = new Int32Array(Math.ceil(vocabSize / 32));
  for (let id = 0; id < Math.min(FIRST_SPECIAL_ID, vocabSize); id++) mask[id >> 5] |= 1 << (id & 31);
  mask[END >> 5] |= 1 << (END & 31);
  return mask;
}

export function structuredGuide(options: StructuredGuideOptions): StructuredGuide {
  const { tokenizer, matcher } = options;
  const budget = options.maxReasoningTokens;
  const finalHeader = [CHANNEL, ...tokenizer.encode("final"), MESSAGE];
  const state: StructuredGuide["state"] = { phase: "header", reasoningTokens: 0, forcedClose: false };
  // Tokens to force next, and the phase that follows them.
  let queue = budget === 0 ? finalHeader : [CHANNEL, ...tokenizer.encode("analysis"), MESSAGE];
  let after: "analysis" | "final" = budget === 0 ? "final" : "analysis";
  let seen = 0;
  let disposed = false;
  let grammar: { mask: Int32Array; terminated: boolean } | undefined; // the mask for the next answer token
  let broken = false;
  const free = analysisMask(options.vocabSize);

  /** Moves the phase over one generated id; returns it when it belongs to the answer (the grammar's input). */
  const consume = (id: number): number | undefined => {
    if (state.phase === "header") {
      // A token we forced; after the last one, the message's body begins.
      if (queue.length === 0) state.phase = after;
      return undefined;
    }
    if (state.phase === "analysis") {
      if (id !== END) {
        state.reasoningTokens++;
        return undefined;
      }
      state.phase = "header";
      queue = [START, ...tokenizer.encode("assistant"), ...finalHeader];
      after = "final";
      return undefined;
    }
    return id;
  };

  return {
    state,
    dispose: () => {
      if (disposed) return;
      disposed = true;
      matcher.dispose();
    },
    async prepare(generated) {
      const answer: number[] = [];
      for (; seen < generated.length; seen++) {
        const id = consume(generated[seen]);
        if (id !== undefined) answer.push(id);
      }
      if (state.phase !== "final" || (grammar?.terminated ?? false)) return;
      try {
        grammar = await matcher.advance(answer);
      } catch {
        broken = true; // the grammar worker failed: the answer ends here rather than run unconstrained
      }
    },
    next(generated): GuideStep {
      for (; seen < generated.length; seen++) consume(generated[seen]); // without prepare(): phases only
      if (queue.length > 0) {
        const id = queue[0];
        queue = queue.slice(1);
        return id;
      }
      if (state.phase === "analysis") {
        if (budget !== undefined && state.reasoningTokens >= budget) {
          state.forcedClose = true;
          options.onForcedClose?.();
          return END;
        }
        return { mask: free };
      }
      if (broken) return RETURN;
      if (!grammar || grammar.terminated) return undefined;
      return { mask: grammar.mask };
    },
  };
}
