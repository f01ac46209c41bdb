import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { jsonDepth, pushAll } from "./json_depth.ts";

Deno.test("jsonDepth measures nesting without recursion, stopping past the limit", () => {
  assertEquals(jsonDepth(3, 10), 0);
  assertEquals(jsonDepth({ a: [1, { b: {} }] }, 10), 4);
  let deep: unknown = {};
  for (let i = 0; i < 100_000; i++) deep = { x: deep };
  assertEquals(jsonDepth(deep, 64), 65);
});

Deno.test("pushAll appends millions of items (push(...) would overflow the stack)", () => {
  const big = new Array(3_000_000).fill(7);
  assertEquals(pushAll([1], big).length, 3_000_001);
});
