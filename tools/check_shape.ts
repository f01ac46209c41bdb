/**
 * `deno task check:shape`: the shape rules of STYLE.md that a formatter cannot enforce, over src/ (tests excluded):
 * - no function or method longer than 80 lines unless the comment above it says why ("longer than 80 lines: …");
 * - no module-level mutable state (`let` at the top level of a module).
 * Functions are found by their first line (function declarations, methods, arrow functions assigned to a name)
 * and end at the first line that closes them at the same indentation, which `deno fmt` guarantees.
 */
import { readFileSync } from "node:fs";
import { join, normalize, relative } from "node:path";
import { walk } from "./check_deps.ts";

export const MAX_FUNCTION_LINES = 80;

const START = new RegExp(
  String.raw`^(\s*)(?:export\s+)?(?:default\s+)?(?:async\s+)?(?:function\*?\s+[\w$]+|` +
    String
      .raw`(?:(?:public|private|protected|static|readonly|override|get|set|async)\s+)*#?[\w$]+\s*(?:<[^>]*>)?\s*\(|` +
    String.raw`(?:const|let)\s+[\w$]+(?:\s*:\s*[^=]+)?\s*=\s*(?:async\s+)?(?:function|\(|[\w$]+\s*=>))`,
);
const KEYWORDS = /^\s*(?:if|for|while|switch|catch|return|else|do|try|await|throw|new|typeof|yield)\b/;

/** Problems in one module's source, as [line number, message]. */
export function shapeProblems(source: string): [number, string][] {
  const lines = source.split("\n");
  const problems: [number, string][] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (/^let\s/.test(line) || /^export\s+let\s/.test(line)) {
      problems.push([i + 1, "module-level mutable state (`let` at the top level)"]);
    }
    const match = START.exec(line);
    if (!match || KEYWORDS.test(line)) continue;
    const indent = match[1];
    let open = i;
    if (/\(\s*$/.test(line)) {
      // A signature over several lines: it closes with ")… {" at the same indentation.
      open = i + 1;
      while (open < lines.length && open < i + 20 && !lines[open].startsWith(`${indent})`)) open++;
    }
    if (open >= lines.length || !/\{\s*$/.test(lines[open])) continue;
    let end = open + 1;
    while (end < lines.length && !new RegExp(`^${indent}\\}`).test(lines[end])) end++;
    const length = end - i + 1;
    if (length <= MAX_FUNCTION_LINES) continue;
    const above = lines.slice(Math.max(0, i - 8), i).join("\n");
    if (/longer than 80 lines/i.test(above)) continue;
    problems.push([i + 1, `${length} lines (over ${MAX_FUNCTION_LINES}; say why in a comment above, or split it)`]);
  }
  return problems;
}

if (import.meta.main) {
  const root = normalize(join(new URL(".", import.meta.url).pathname, "..", "src"));
  let count = 0;
  for (const file of walk(root)) {
    for (const [line, message] of shapeProblems(readFileSync(file, "utf8"))) {
      console.error(`src/${relative(root, file)}:${line}: ${message}`);
      count++;
    }
  }
  if (count > 0) {
    console.error(`check:shape: ${count} problem(s)`);
    Deno.exit(1);
  }
  console.log("check:shape: no long functions, no module-level mutable state");
}
