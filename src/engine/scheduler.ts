/**
 * The scheduler: pure. From the running sequences and the waiting queue it plans one step under a token budget
 * and a sequence limit: running decodes first (or prefills first, per profile), then prefill chunks, oldest first.
 */

/** What the scheduler needs to know of a sequence. */
export interface SchedulableSequence {
  readonly id: string;
  /** Tokens the model has to see before sampling: the prompt, then each sampled token. */
  readonly numTokens: number;
  /** Tokens already in the KV cache. */
  readonly numComputed: number;
}

/** Scheduler knobs (from the profile). */
export interface SchedulerLimits {
  readonly maxNumSeqs: number;
  readonly maxNumBatchedTokens: number;
  readonly prefillChunkSize: number;
  readonly prefillPriority: "decode_first" | "prefill_first";
}

/** One sequence's share of a step. */
export interface PlannedChunk {
  readonly id: string;
  readonly numTokens: number;
  /** True when this chunk reaches the end of what is known, so the step samples a token for it. */
  readonly samples: boolean;
}

/** The plan of one step. */
export interface StepPlan {
  readonly chunks: readonly PlannedChunk[];
  /** Waiting sequences admitted by this plan (they join the running set). */
  readonly admitted: readonly string[];
  readonly numTokens: number;
}

/** Plans one step. `running` keeps its order (oldest first); `waiting` is the queue in arrival order. */
export function planStep(
  running: readonly SchedulableSequence[],
  waiting: readonly SchedulableSequence[],
  limits: SchedulerLimits,
): StepPlan {
  const chunks: PlannedChunk[] = [];
  const admitted: string[] = [];
  let budget = limits.maxNumBatchedTokens;
  const take = (seq: SchedulableSequence): boolean => {
    const remaining = seq.numTokens - seq.numComputed;
    if (remaining <= 0 || budget <= 0 || chunks.length >= limits.maxNumSeqs) return false;
    const size = remaining === 1 ? 1 : Math.min(remaining, limits.prefillChunkSize, budget);
    if (size > budget) return false;
    chunks.push({ id: seq.id, numTokens: size, samples: size === remaining });
    budget -= size;
    return true;
  };
  const decodes = running.filter((s) => s.numTokens - s.numComputed === 1);
  const prefills = running.filter((s) => s.numTokens - s.numComputed > 1);
  const order = limits.prefillPriority === "decode_first" ? [...decodes, ...prefills] : [...prefills, ...decodes];
  for (const seq of order) take(seq);
  // New sequences join while there is room for them.
  for (const seq of waiting) {
    if (running.length + admitted.length >= limits.maxNumSeqs || budget <= 0) break;
    if (take(seq)) admitted.push(seq.id);
    else break;
  }
  return { chunks, admitted, numTokens: limits.maxNumBatchedTokens - budget };
}
