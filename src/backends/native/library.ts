/**
 * Finding, building and loading the native libraries. Loading has no side effects: a missing library is an error
 * that says how to build it; building is {@link buildNativeLibrary} (`deno task build:native`, or `serve` when the
 * CPU library is missing and a compiler is there — it logs that it does).
 */
import { createHash } from "node:crypto";
import { BackendError } from "../../errors.ts";
import { GPTOSS_ABI_VERSION, type GptossLibrary, SYMBOLS } from "./ffi.ts";

/** Where the CPU library is built (deno task build:native). */
export const NATIVE_LIBRARY_PATH = new URL("../../../build/libgptoss_cpu.so", import.meta.url).pathname;
/** The same ABI on NVIDIA GPUs (deno task build:cuda). */
export const CUDA_LIBRARY_PATH = new URL("../../../build/libgptoss_cuda.so", import.meta.url).pathname;
const BUILD_SCRIPT = new URL("../../../ffi/build.sh", import.meta.url).pathname;

/** Whether a library file is there. */
export function nativeLibraryExists(path = NATIVE_LIBRARY_PATH): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Builds the CPU library with ffi/build.sh (g++ with OpenMP); throws the compiler's first error line. */
export async function buildNativeLibrary(): Promise<void> {
  const result = await new Deno.Command("bash", { args: [BUILD_SCRIPT], stdout: "piped", stderr: "piped" }).output()
    .catch((err) => ({ success: false, stderr: new TextEncoder().encode((err as Error).message) }));
  if (!result.success) {
    const first = new TextDecoder().decode(result.stderr).split("\n").find((line) => line.trim() !== "") ?? "";
    throw new BackendError(`Cannot build the native library: ${first}`, "build");
  }
}

/**
 * A path dlopen can open for `path`: itself when it is a file on disk, else (a library embedded in a compiled binary,
 * readable only through Deno's file APIs) a copy in `cacheRoot`/gpt-oss-deno/lib named by its content hash, written
 * once (atomically: a temp file renamed) and reused.
 */
export function extractForDlopen(path: string, cacheRoot = defaultCacheRoot()): string {
  const bytes = Deno.readFileSync(path);
  const hash = createHash("sha256").update(bytes).digest("hex").slice(0, 16);
  const dir = `${cacheRoot}/gpt-oss-deno/lib`;
  const target = `${dir}/${hash}-${path.split("/").pop()}`;
  try {
    if (Deno.statSync(target).size === bytes.length) return target;
  } catch { /* not extracted yet */ }
  Deno.mkdirSync(dir, { recursive: true });
  const temp = `${target}.${Deno.pid}.tmp`;
  Deno.writeFileSync(temp, bytes, { mode: 0o755 });
  Deno.renameSync(temp, target);
  return target;
}

function defaultCacheRoot(): string {
  const home = Deno.env.get("HOME");
  return Deno.env.get("XDG_CACHE_HOME") ?? (home ? `${home}/.cache` : Deno.makeTempDirSync());
}

function open(path: string): GptossLibrary {
  // In a compiled binary the file exists for Deno (embedded) but not for the dynamic loader: load a copy.
  return Deno.dlopen(Deno.build.standalone ? extractForDlopen(path) : path, SYMBOLS);
}

/** Loads a library and checks its ABI version; never builds. */
export function loadNativeLibrary(options: { path?: string } = {}): GptossLibrary {
  const path = options.path ?? NATIVE_LIBRARY_PATH;
  if (!nativeLibraryExists(path)) {
    const how = path === CUDA_LIBRARY_PATH ? "deno task build:cuda" : "deno task build:native";
    throw new BackendError(`The native library "${path}" is not built (build it with: ${how})`, "load");
  }
  let library: GptossLibrary;
  try {
    library = open(path);
  } catch (err) {
    throw new BackendError(`Cannot load the native library "${path}": ${(err as Error).message}`, "load", {
      cause: err,
    });
  }
  const version = library.symbols.gptoss_abi_version();
  if (version !== GPTOSS_ABI_VERSION) {
    library.close();
    throw new BackendError(
      `The native library "${path}" speaks ABI version ${version}; these bindings need version ${GPTOSS_ABI_VERSION}` +
        " (rebuild it)",
      "load",
    );
  }
  return library;
}
