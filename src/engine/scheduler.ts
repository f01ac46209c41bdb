/**
 * The scheduler: pure. From the running sequences it plans one step under a token budget and a sequence limit:
 * running decodes first (or prefills first, per profile), then prefill chunks, oldest first. Admission (which waiting
 * request joins the running set) is the engine's, because it depends on free KV blocks and the prefix cache.
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
  readonly numTokens: number;
}

/** Plans one step. `running` keeps its order (oldest first). */
export function planStep(running: readonly SchedulableSequence[], limits: SchedulerLimits): StepPlan {
  const chunks: PlannedChunk[] = [];
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
  return { chunks, numTokens: limits.maxNumBatchedTokens - budget };
}
