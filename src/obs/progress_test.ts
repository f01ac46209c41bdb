import { deepStrictEqual as assertEquals, match as assertMatch, ok as assert } from "node:assert/strict";
import { createLogger } from "./logger.ts";
import { createProgress, startTicker } from "./progress.ts";

Deno.test("createProgress() draws a bar with bytes, %, MB/s and ETA on a terminal", () => {
  let clock = 0;
  const drawn: string[] = [];
  const progress = createProgress({
    event: "model.load",
    logger: createLogger({ level: "info", format: "json", write: () => {} }),
    terminal: (text) => drawn.push(text),
    now: () => clock,
  });
  clock = 1000;
  progress(500_000_000, 2_000_000_000);
  clock = 4000;
  progress(2_000_000_000, 2_000_000_000);
  assertMatch(drawn[0], /model\.load \[#{8}-{22}\] 0\.50\/2\.00 GB 25% 500 MB\/s ETA 3s/);
  assert(drawn[1].endsWith("\n") && drawn[1].includes("100%"));
});

Deno.test("createProgress() logs JSON events about every 10% without a terminal", () => {
  const lines: string[] = [];
  const progress = createProgress({
    event: "model.load",
    logger: createLogger({ level: "info", format: "json", write: (line) => lines.push(line) }),
    now: () => 1000,
  });
  for (let done = 0; done <= 100; done += 5) progress(done, 100);
  const events = lines.map((l) => JSON.parse(l));
  assertEquals(events.every((e) => e.event === "model.load.progress"), true);
  assertEquals(events.map((e) => e.percent), [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
});

Deno.test("startTicker() redraws the elapsed seconds on a terminal and ends the line at stop; nothing without one", async () => {
  let clock = 0;
  const drawn: string[] = [];
  const stop = startTicker("native.build", (text) => drawn.push(text), 1, () => clock);
  clock = 2400;
  await new Promise<void>((resolve) => {
    const poll = setInterval(() => { // wait for one timer redraw (an event, not a duration)
      if (drawn.length >= 2) clearInterval(poll), resolve();
    }, 1);
  });
  clock = 41_000;
  stop();
  assertEquals(drawn[0], "\rnative.build … 0s");
  assert(drawn.includes("\rnative.build … 2s"), drawn.join("|"));
  assertEquals(drawn.slice(-2), ["\rnative.build … 41s", "\n"]);
  const quiet = startTicker("native.build", undefined);
  quiet(); // no terminal: nothing is drawn and nothing throws
});
