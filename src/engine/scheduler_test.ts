import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { planStep, type SchedulerLimits } from "./scheduler.ts";

const limits: SchedulerLimits = {
  maxNumSeqs: 4,
  maxNumBatchedTokens: 16,
  prefillChunkSize: 8,
  prefillPriority: "decode_first",
};

Deno.test("planStep() splits a long prompt across steps in prefill chunks", () => {
  const first = planStep([{ id: "a", numTokens: 20, numComputed: 0 }], limits);
  assertEquals(first.chunks, [{ id: "a", numTokens: 8, samples: false }]);
  const last = planStep([{ id: "a", numTokens: 20, numComputed: 16 }], limits);
  assertEquals(last.chunks, [{ id: "a", numTokens: 4, samples: true }]);
});

Deno.test("planStep() puts running decodes first, then prefills, under the token budget", () => {
  const running = [
    { id: "p", numTokens: 30, numComputed: 0 },
    { id: "d1", numTokens: 11, numComputed: 10 },
    { id: "d2", numTokens: 5, numComputed: 4 },
    { id: "p2", numTokens: 9, numComputed: 0 },
  ];
  const plan = planStep(running, limits);
  assertEquals(plan.chunks.map((c) => [c.id, c.numTokens]), [["d1", 1], ["d2", 1], ["p", 8], ["p2", 6]]);
  assertEquals(plan.numTokens, 16);
  const prefillFirst = planStep(running.slice(0, 3), { ...limits, prefillPriority: "prefill_first" });
  assertEquals(prefillFirst.chunks.map((c) => c.id), ["p", "d1", "d2"]);
});

Deno.test("planStep() plans at most maxNumSeqs sequences", () => {
  const running = Array.from({ length: 6 }, (_, i) => ({ id: `r${i}`, numTokens: 2, numComputed: 1 }));
  const plan = planStep(running, limits);
  assertEquals(plan.chunks.map((c) => c.id), ["r0", "r1", "r2", "r3"]);
});
