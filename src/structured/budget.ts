/**
 * A reasoning budget for any request (`max_reasoning_tokens`): the answer opens an analysis message, which holds plain
 * text only; after `budget` tokens `<|end|>` is forced, then `<|start|>assistant<|channel|>`, and from there `inner`
 * (e.g. the tool_choice guide, which takes that header as its cue) or the model decides. A model that ends its
 * analysis sooner goes on the same way. Structured outputs have their own variant (guide.ts) that also forces the
 * final channel.
 */
import type { GuideStep, TokenGuide } from "../harmony/tool_guide.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { CHANNEL, END, MESSAGE, START } from "../harmony/tokens.ts";
import { analysisMask } from "./guide.ts";

export function reasoningBudgetGuide(
  tokenizer: Tokenizer,
  vocabSize: number,
  budget: number,
  inner: TokenGuide | undefined,
  onForcedClose?: () => void,
): TokenGuide {
  const free = analysisMask(vocabSize);
  let queue = budget === 0 ? [] : [CHANNEL, ...tokenizer.encode("analysis"), MESSAGE];
  let phase: "open" | "analysis" | "closing" | "inner" = budget === 0 ? "inner" : "open";
  let count = 0, seen = 0;
  const consume = (id: number) => {
    if (phase === "open" && queue.length === 0) phase = "analysis";
    else if (phase === "analysis") {
      if (id !== END) count++;
      else {
        phase = "closing";
        queue = [START, ...tokenizer.encode("assistant"), CHANNEL];
      }
    } else if (phase === "closing" && queue.length === 0) phase = "inner";
  };
  return {
    next(generated): GuideStep {
      for (; seen < generated.length; seen++) consume(generated[seen]);
      if (queue.length > 0) {
        const id = queue[0];
        queue = queue.slice(1);
        return id;
      }
      if (phase === "analysis") {
        if (count < budget) return { mask: free };
        onForcedClose?.();
        return END;
      }
      return inner?.next(generated);
    },
    dispose: () => inner?.dispose?.(),
  };
}
