import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { StopStringMatcher } from "./stop_strings.ts";

Deno.test("StopStringMatcher cuts at a stop string split across pieces and holds back possible prefixes", () => {
  const m = new StopStringMatcher(["STOP", "\n\n"]);
  assertEquals(m.push("Hello ST"), "Hello ");
  assertEquals(m.push("OR"), "STOR"); // "STOR" can no longer become "STOP"
  assertEquals(m.push("Y x S"), "Y x ");
  assertEquals(m.push("TOP and more"), "");
  assertEquals(m.stopped, true);
  assertEquals(m.push("ignored"), "");
  const n = new StopStringMatcher(["END"]);
  assertEquals(n.push("abc E"), "abc ");
  assertEquals(n.flush(), "E");
  assertEquals(new StopStringMatcher([]).push("free"), "free");
});
