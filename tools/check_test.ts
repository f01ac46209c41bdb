import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { importsOf, violations } from "./check_deps.ts";
import { MAX_FUNCTION_LINES, shapeProblems } from "./check_shape.ts";

Deno.test("check:deps finds static, dynamic, bare and re-export imports, and flags the upward ones", () => {
  const source = [
    'import { a } from "./a.ts";',
    'export { b } from "../engine/b.ts";',
    'import "../api/side_effect.ts";',
    'const m = await import("../tools/synthetic.ts");',
    'import { z } from "zod";',
  ].join("\n");
  assertEquals(importsOf(source), ["./a.ts", "../engine/b.ts", "../api/side_effect.ts", "../tools/synthetic.ts"]);
  const found = violations("model/x.ts", source);
  assertEquals(found.length, 3);
  assert(found[0].includes("imports engine (layer 6) from model (layer 4)"));
  assertEquals(violations("main.ts", source.replace(`import { a } from "./a.ts";`, "").replaceAll("../", "./")), []);
  assertEquals(violations("backends/webgpu/x.ts", 'import "../native/y.ts";').length, 1);
  assertEquals(violations("backends/select.ts", 'import "./native/y.ts";'), []);
});

Deno.test("check:shape flags long functions without a reason and module-level let", () => {
  const body = Array.from({ length: MAX_FUNCTION_LINES }, (_, i) => `  const x${i} = ${i};`).join("\n");
  const long = `export function big(\n  a: number,\n): number {\n${body}\n  return a;\n}\n`;
  assertEquals(shapeProblems(long).map(([line]) => line), [1]);
  assertEquals(shapeProblems(`/** Longer than 80 lines: a table. */\n${long}`), []);
  assertEquals(shapeProblems(`function small() {\n  return 1;\n}\nlet cache = 1;\n`).map(([l]) => l), [4]);
  const method = `class A {\n  run(): void {\n${body}\n  }\n}\n`;
  assertEquals(shapeProblems(method).map(([line]) => line), [2]);
});
