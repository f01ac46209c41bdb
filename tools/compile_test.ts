import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { extractForDlopen } from "../src/backends/native/library.ts";
import { compileArgs, includeList } from "./compile.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** Every file outside src/ that the server's modules open by a path relative to themselves. */
function runtimePaths(): string[] {
  const found = new Set<string>();
  const walk = (dir: string) => {
    for (const entry of Deno.readDirSync(`${ROOT}${dir}`)) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) walk(path);
      else if (path.endsWith(".ts") && !path.endsWith("_test.ts")) {
        const text = Deno.readTextFileSync(`${ROOT}${path}`);
        for (const m of text.matchAll(/new URL\("([^"]+)", (?:import\.meta\.url|ROOT)\)/g)) {
          const base = m[0].includes("ROOT") ? new URL("src/", `file://${ROOT}`) : new URL(path, `file://${ROOT}`);
          const target = fileURLToPath(new URL(m[1], base)).slice(ROOT.length);
          if (!target.startsWith("src/")) found.add(target);
        }
      }
    }
  };
  walk("src");
  walk("kernels/webgpu");
  return [...found].sort();
}

Deno.test("deno task compile embeds every file the server opens at run time", () => {
  const include = includeList(() => true);
  const uncovered = runtimePaths().filter((p) =>
    // ffi/build.sh only builds a missing library: a compiled binary carries the library itself.
    p !== "ffi/build.sh" && p !== "" && !include.some((dir) => p === dir || p.startsWith(`${dir}/`))
  );
  assertEquals(uncovered, []);
  assert(runtimePaths().some((p) => p.endsWith(".wgsl")), "the scan sees the WGSL kernels");
  assert(runtimePaths().includes("build/libgptoss_cpu.so"));
  const args = compileArgs("out/bin", ["kernels/webgpu", "configs"]);
  assertEquals(args.slice(-3), ["--output", "out/bin", "src/main.ts"]);
  assert(args.includes("--unstable-no-legacy-abort"), "the binary aborts requests as the server expects");
});

Deno.test("extractForDlopen copies an embedded library to the cache once, named by its content", () => {
  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeFileSync(`${dir}/libx.so`, new Uint8Array([1, 2, 3, 4]));
    const first = extractForDlopen(`${dir}/libx.so`, `${dir}/cache`);
    assert(first.startsWith(`${dir}/cache/gpt-oss-deno/lib/`) && first.endsWith("-libx.so"));
    assertEquals([...Deno.readFileSync(first)], [1, 2, 3, 4]);
    const mtime = Deno.statSync(first).mtime;
    assertEquals(extractForDlopen(`${dir}/libx.so`, `${dir}/cache`), first);
    assertEquals(Deno.statSync(first).mtime, mtime, "not rewritten");
    Deno.writeFileSync(`${dir}/libx.so`, new Uint8Array([9]));
    assert(extractForDlopen(`${dir}/libx.so`, `${dir}/cache`) !== first, "new content, new name");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

/** Builds the binary once (a few seconds); where `deno compile` cannot fetch its runtime, says why. */
async function tryCompile(): Promise<{ dir: string; out: string } | string> {
  const dir = Deno.makeTempDirSync();
  const out = `${dir}/gpt-oss-deno`;
  const built = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "tools/compile.ts", out],
    cwd: ROOT,
    stderr: "piped",
  }).output();
  if (built.success) return { dir, out };
  Deno.removeSync(dir, { recursive: true });
  return new TextDecoder().decode(built.stderr).trim();
}

const compiled = await tryCompile();
if (typeof compiled === "string") {
  // Only a failure to fetch the runtime is a reason to skip; anything else is a broken compile.
  assert(/compile failed: .*(sending request|download|dns error|denort)/i.test(compiled), compiled);
  console.log(`compiled binary: its run test is skipped: ${compiled}`);
}

Deno.test({
  name: "the compiled binary starts and answers --version",
  ignore: typeof compiled === "string",
  fn: async () => {
    const { dir, out } = compiled as { dir: string; out: string };
    try {
      const run = await new Deno.Command(out, { args: ["--version"], stdout: "piped" }).output();
      assert(run.success && /gpt-oss-deno/.test(new TextDecoder().decode(run.stdout)));
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
