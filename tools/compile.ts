/**
 * `deno task compile`: one executable (build/gpt-oss-deno) with the app, its npm packages and every file the server
 * reads at run time embedded: the WGSL kernels, configs/, and the native libraries that are built (dlopen needs a real
 * file, so the server copies an embedded library to its cache directory on first use: library.ts). `deno compile`
 * downloads its runtime (denort) unless DENORT_BIN names one; where that download is impossible it fails with one line.
 */
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** What the binary embeds, relative to the repository root (optional native libraries only when built). */
export function includeList(exists: (path: string) => boolean = (p) => existsAt(`${ROOT}${p}`)): string[] {
  // The grammar worker is loaded by URL at run time (new Worker), so it is included by name.
  const always = ["kernels/webgpu", "configs", "src/structured/grammar_worker.ts"];
  const libraries = ["build/libgptoss_cpu.so", "build/libgptoss_cuda.so"].filter(exists);
  return [...always, ...libraries];
}

function existsAt(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The `deno compile` arguments. */
export function compileArgs(output: string, include = includeList()): string[] {
  return [
    "compile",
    "--allow-all",
    "--unstable-no-legacy-abort",
    ...include.flatMap((path) => ["--include", path]),
    "--output",
    output,
    "src/main.ts",
  ];
}

if (import.meta.main) {
  const output = Deno.args[0] ?? "build/gpt-oss-deno";
  const result = await new Deno.Command(Deno.execPath(), {
    args: compileArgs(output),
    cwd: ROOT,
    stderr: "piped",
    env: { NO_COLOR: "1" }, // plain text to quote from
  })
    .output();
  const stderr = new TextDecoder().decode(result.stderr);
  if (!result.success) {
    const lines = stderr.split("\n").map((l) => l.trim());
    const error = lines.find((l) => /^error/i.test(l)) ?? "deno compile exited with an error";
    // The cause that says why (e.g. the runtime download that this machine cannot reach), on the same line.
    const cause = lines.find((l) => /sending request|download|dns error|denort/i.test(l) && !/^Download /.test(l));
    console.error(`compile failed: ${error}${cause ? ` (${cause.replace(/^\d+: /, "")})` : ""}`);
    Deno.exit(1);
  }
  console.error(`built ${output}`);
}
