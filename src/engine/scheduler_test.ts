import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { planStep, type SchedulerLimits } from "./scheduler.ts";

const limits: SchedulerLimits = {
  maxNumSeqs: 4,
  maxNumBatchedTokens: 16,
  prefillChunkSize: 8,
  prefillPriority: "decode_first",
};

Deno.test("planStep() splits a long prompt across steps in prefill chunks", () => {
  const waiting = [{ id: "a", numTokens: 20, numComputed: 0 }];
  const first = planStep([], waiting, limits);
  assertEquals(first.chunks, [{ id: "a", numTokens: 8, samples: false }]);
  assertEquals(first.admitted, ["a"]);
  const last = planStep([{ id: "a", numTokens: 20, numComputed: 16 }], [], limits);
  assertEquals(last.chunks, [{ id: "a", numTokens: 4, samples: true }]);
});

Deno.test("planStep() puts running decodes first, then prefills, under the token budget and sequence limit", () => {
  const running = [
    { id: "p", numTokens: 30, numComputed: 0 },
    { id: "d1", numTokens: 11, numComputed: 10 },
    { id: "d2", numTokens: 5, numComputed: 4 },
  ];
  const waiting = [{ id: "w1", numTokens: 9, numComputed: 0 }, { id: "w2", numTokens: 3, numComputed: 0 }];
  const plan = planStep(running, waiting, limits);
  assertEquals(plan.chunks.map((c) => [c.id, c.numTokens]), [["d1", 1], ["d2", 1], ["p", 8], ["w1", 6]]);
  assertEquals(plan.admitted, ["w1"]);
  assertEquals(plan.numTokens, 16);
  const prefillFirst = planStep(running, [], { ...limits, prefillPriority: "prefill_first" });
  assertEquals(prefillFirst.chunks.map((c) => c.id), ["p", "d1", "d2"]);
});

Deno.test("planStep() admits nobody when the running set is full", () => {
  const running = Array.from({ length: 4 }, (_, i) => ({ id: `r${i}`, numTokens: 2, numComputed: 1 }));
  const plan = planStep(running, [{ id: "w", numTokens: 3, numComputed: 0 }], limits);
  assertEquals(plan.admitted, []);
  assertEquals(plan.chunks.length, 4);
});
