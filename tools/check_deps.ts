/**
 * `deno task check:deps`: layers import downward only. Every module under src/ belongs to a layer (by its top-level
 * folder or file); a static or dynamic import of a module in a higher layer fails the check, one line per import.
 *
 *   0 errors, version, formats   1 config, cli   2 obs, harmony   3 backends   4 model   5 checkpoint
 *   6 engine   7 api, server   8 tools   9 main
 *
 * Inside backends/, the implementations (reference/, native/, webgpu/) import only backend.ts and lower layers;
 * select.ts (the probe) is the one module that knows them all.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize, relative } from "node:path";

const LAYERS: Record<string, number> = {
  errors: 0,
  version: 0,
  formats: 0,
  config: 1,
  cli: 1,
  obs: 2,
  harmony: 2,
  structured: 2,
  backends: 3,
  model: 4,
  checkpoint: 5,
  engine: 6,
  store: 6,
  api: 7,
  server: 7,
  tools: 8,
  main: 9,
};

const BACKEND_IMPLEMENTATIONS = ["reference", "native", "webgpu"];

/** The modules under a directory (tests beside the code are not part of any layer: they may import anything). */
export function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...walk(path));
    else if (name.endsWith(".ts") && !name.endsWith("_test.ts")) out.push(path);
  }
  return out;
}

/** The layer's name of a path relative to src/ (e.g. "engine/engine.ts" → "engine", "main.ts" → "main"). */
function layerOf(path: string): string {
  const first = path.split("/")[0];
  return first.replace(/\.ts$/, "");
}

/** Relative import specifiers: `from "./x.ts"` (imports and re-exports), `import("./x.ts")`, `import "./x.ts"`. */
export function importsOf(source: string): string[] {
  const found: string[] = [];
  const pattern = /(?:\bfrom\s+|\bimport\s*\(\s*|\bimport\s+)["'](\.{1,2}\/[^"']+)["']/g;
  for (const match of source.matchAll(pattern)) found.push(match[1]);
  return found;
}

/** The violations of one module (path relative to src/), as readable lines. */
export function violations(path: string, source: string): string[] {
  const from = layerOf(path);
  const out: string[] = [];
  for (const specifier of importsOf(source)) {
    const target = normalize(join(dirname(path), specifier));
    if (target.startsWith("..")) continue; // outside src/ (kernels, ffi): not a layer
    const to = layerOf(target);
    if (!(from in LAYERS) || !(to in LAYERS)) {
      out.push(`src/${path}: "${specifier}" — ${!(from in LAYERS) ? from : to} is in no layer (tools/check_deps.ts)`);
    } else if (LAYERS[to] > LAYERS[from]) {
      out.push(`src/${path}: imports ${to} (layer ${LAYERS[to]}) from ${from} (layer ${LAYERS[from]}): "${specifier}"`);
    } else if (from === "backends" && to === "backends") {
      const a = path.split("/")[1], b = target.split("/")[1];
      if (BACKEND_IMPLEMENTATIONS.includes(a) && BACKEND_IMPLEMENTATIONS.includes(b) && a !== b) {
        out.push(`src/${path}: backend ${a} imports backend ${b}: "${specifier}"`);
      }
    }
  }
  return out;
}

if (import.meta.main) {
  const root = normalize(join(dirname(new URL(import.meta.url).pathname), "..", "src"));
  const problems = walk(root).flatMap((file) => violations(relative(root, file), readFileSync(file, "utf8")));
  for (const line of problems) console.error(line);
  if (problems.length > 0) {
    console.error(`check:deps: ${problems.length} upward import(s)`);
    Deno.exit(1);
  }
  console.log("check:deps: every import goes downward");
}
