/** The native ABI: the TS symbol table equals the header; bad input at the boundary gives typed errors. */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert/strict";
import type { Backend, DeviceTensor } from "../src/backends/backend.ts";
import { createNativeBackend, CUDA_LIBRARY_PATH, loadNativeLibrary } from "../src/backends/native/native_backend.ts";
import { probeBackends } from "../src/backends/select.ts";
import { GPTOSS_ABI_VERSION, SYMBOLS } from "../src/backends/native/ffi.ts";
import { BackendError } from "../src/errors.ts";

const HEADER = Deno.readTextFileSync(new URL("../ffi/include/gptoss.h", import.meta.url));
const nativeAvailable = (() => {
  try {
    loadNativeLibrary().close();
    return true;
  } catch (err) {
    console.log(`native ABI tests skipped: ${(err as Error).message}`);
    return false;
  }
})();

/** C parameter type → the Deno FFI type our table must use for it. */
function ffiType(cType: string): string[] {
  const t = cType.replace(/\bconst\b/g, "").replace(/\s+/g, " ").trim();
  if (t.endsWith("*")) {
    // Handles and returned strings are pointers; caller-provided arrays, strings and structs are buffers.
    return /^(gptoss_context|gptoss_tensor|gptoss_kv_pool|gptoss_comm) ?\*$/.test(t)
      ? ["pointer"]
      : ["buffer", "pointer"];
  }
  return [
    {
      "int32_t": "i32",
      "int64_t": "i64",
      "uint32_t": "u32",
      "uint64_t": "u64",
      "size_t": "usize",
      "float": "f32",
      "void": "void",
      "gptoss_status": "i32",
    }[t] ?? `unknown C type ${t}`,
  ];
}

function headerFunctions(): Map<string, { result: string; params: string[] }> {
  const functions = new Map<string, { result: string; params: string[] }>();
  const source = HEADER.replace(/\/\*[\s\S]*?\*\//g, "");
  for (const match of source.matchAll(/^([\w\s*]+?)\s*\b(gptoss_\w+)\s*\(([^)]*)\);/gm)) {
    const params = match[3].trim() === "void" || match[3].trim() === ""
      ? []
      : match[3].split(",").map((p) => p.trim().replace(/\s*\b\w+$/, "").trim());
    functions.set(match[2], { result: match[1].trim(), params });
  }
  return functions;
}

Deno.test("the TS symbol table matches ffi/include/gptoss.h: names, parameter and result types", () => {
  const header = headerFunctions();
  assert(header.size >= 20, `parsed ${header.size} functions`);
  assertEquals([...header.keys()].sort(), Object.keys(SYMBOLS).sort());
  for (const [name, { result, params }] of header) {
    const symbol = SYMBOLS[name as keyof typeof SYMBOLS] as Deno.ForeignFunction;
    assertEquals(symbol.parameters.length, params.length, `${name}: parameter count`);
    params.forEach((p, i) => {
      const allowed = ffiType(p);
      assert(
        allowed.includes(symbol.parameters[i] as string),
        `${name} parameter ${i} (${p}) bound as ${symbol.parameters[i]}`,
      );
    });
    assert(ffiType(result).includes(symbol.result as string), `${name} result (${result}) bound as ${symbol.result}`);
  }
  assert(
    new RegExp(`#define GPTOSS_ABI_VERSION ${GPTOSS_ABI_VERSION}\\b`).test(HEADER),
    "ABI version constant matches",
  );
});

/** Shape and dtype errors are refused at enqueue with a BackendError naming the op (CPU and CUDA alike). */
function assertEnqueueChecks(backend: Backend, x: DeviceTensor): void {
  const weight = backend.upload({ dtype: "bf16", shape: [3, 5], data: new Uint8Array(30) });
  assertThrows(
    () => backend.ops.matmul(backend.alloc([2, 3], "f32"), x, weight),
    (err: Error) =>
      err instanceof BackendError && err.op === "matmul" &&
      /matmul_f32_bf16w: .*does not match weight/.test(err.message),
  );
  assertThrows(
    () => backend.ops.rmsnorm(x, x, backend.alloc([8], "f32"), 1e-5),
    (err: Error) => err instanceof BackendError && /expected dtype bf16/.test(err.message),
  );
}

/** A token id outside the table fails at flush with `message`, and the backend keeps working. x is [2, 8]. */
async function assertBadEmbedIdAtFlush(backend: Backend, x: DeviceTensor, message: RegExp): Promise<void> {
  const table = backend.upload({ dtype: "bf16", shape: [10, 8], data: new Uint8Array(160) });
  const ids = backend.alloc([2], "i32");
  backend.write(ids, Int32Array.from([3, 99]));
  backend.ops.embed(x, table, ids);
  await assertRejects(() => backend.flush(), (err: Error) => err instanceof BackendError && message.test(err.message));
  backend.write(ids, Int32Array.from([3, 4]));
  backend.ops.embed(x, table, ids);
  await backend.flush();
}

Deno.test({
  name: "bad input at the boundary: wrong shapes and dtypes, null handles, bad ids → BackendError naming the op",
  ignore: !nativeAvailable,
  fn: async () => {
    const backend = createNativeBackend({ numThreads: 1 });
    const x = backend.alloc([2, 8], "f32");
    assertEnqueueChecks(backend, x);
    const library = loadNativeLibrary();
    const status = library.symbols.gptoss_add(null, null, null, null);
    assertEquals(status, 1); // GPTOSS_INVALID_ARGUMENT, no crash
    const out = new BigUint64Array(1);
    library.symbols.gptoss_context_create(1, 0, null, out);
    const ctx = Deno.UnsafePointer.create(out[0]);
    assertEquals(library.symbols.gptoss_add(ctx, null, null, null), 1);
    assert(/null handle/.test(Deno.UnsafePointerView.getCString(library.symbols.gptoss_last_error(ctx)!)));
    library.symbols.gptoss_context_destroy(ctx);
    library.close();
    await assertBadEmbedIdAtFlush(backend, x, /embed_f32_bf16w: token id 99/);
    backend.dispose();
  },
});

Deno.test({
  name: "a library of another ABI version is refused with a typed error",
  ignore: !nativeAvailable,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      // A stub exporting every symbol, whose version query answers 999.
      const stubs = Object.keys(SYMBOLS).map((name) =>
        name === "gptoss_abi_version"
          ? "unsigned gptoss_abi_version(void) { return 999; }"
          : `int ${name}() { return 0; }`
      );
      await Deno.writeTextFile(`${dir}/stub.c`, stubs.join("\n") + "\n");
      const build = await new Deno.Command("cc", {
        args: ["-shared", "-fPIC", "-o", `${dir}/libstub.so`, `${dir}/stub.c`],
      }).output();
      assert(build.success, new TextDecoder().decode(build.stderr));
      assertThrows(
        () => loadNativeLibrary({ path: `${dir}/libstub.so` }),
        (err: Error) =>
          err instanceof BackendError &&
          new RegExp(`speaks ABI version 999; these bindings need version ${GPTOSS_ABI_VERSION}`).test(err.message),
      );
      assertThrows(
        () => loadNativeLibrary({ path: `${dir}/missing.so` }),
        (err: Error) =>
          err instanceof BackendError && /is not built \(build it with: deno task build:native\)/.test(err.message),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

const cudaBuilt = (() => {
  try {
    Deno.statSync(CUDA_LIBRARY_PATH);
    return true;
  } catch {
    console.log("CUDA library tests skipped: build/libgptoss_cuda.so is not built (needs nvcc: deno task build:cuda)");
    return false;
  }
})();

/** Whether a CUDA device answers (the probe's verdict), asked once; undefined when the library is not built. */
const cudaDevice = cudaBuilt ? (await probeBackends()).find((p) => p.name === "cuda")!.available : undefined;
if (cudaDevice === true) console.log("CUDA no-device test skipped: a CUDA device is present here");
if (cudaDevice === false) console.log("CUDA device test skipped: no CUDA device answers here");

Deno.test({
  name: "the CUDA library exports the same symbol table and ABI version, and reports a missing device cleanly",
  ignore: cudaDevice !== false,
  fn: async () => {
    const library = loadNativeLibrary({ path: CUDA_LIBRARY_PATH }); // every symbol of SYMBOLS resolves
    try {
      assertEquals(library.symbols.gptoss_abi_version(), GPTOSS_ABI_VERSION);
      assertEquals(Deno.UnsafePointerView.getCString(library.symbols.gptoss_backend_kind()!), "cuda");
      const out = new BigUint64Array(1);
      assertEquals(library.symbols.gptoss_context_create(1, 0, null, out), 5); // GPTOSS_NO_DEVICE
      const message = Deno.UnsafePointerView.getCString(library.symbols.gptoss_last_error(null)!);
      assert(/^no CUDA device: /.test(message), message);
      const probe = (await probeBackends()).find((p) => p.name === "cuda")!;
      assertEquals(probe.available, false);
      assertEquals(probe.reason, message);
    } finally {
      library.close();
    }
  },
});

Deno.test({
  name: "on a CUDA device: the probe picks cuda first, ops run, and a bad id or block table is a status, not a crash",
  ignore: cudaDevice !== true,
  fn: async () => {
    const probes = await probeBackends();
    assertEquals(probes[0].name, "cuda");
    assert(probes[0].available, probes[0].reason);
    const backend = createNativeBackend({
      library: loadNativeLibrary({ path: CUDA_LIBRARY_PATH }),
      name: "cuda",
    });
    try {
      assertEquals(backend.kind, "cuda");
      // Shapes and dtypes are checked at enqueue, as on the CPU.
      const x = backend.alloc([2, 8], "f32");
      assertEnqueueChecks(backend, x);
      // A block id outside the pool: refused at enqueue (a kernel would read outside the KV memory).
      const pool = backend.createKvPool({
        numLayers: 1,
        numKeyValueHeads: 1,
        headDim: 8,
        blockSize: 4,
        numFullBlocks: 2,
        numSlidingBlocks: 0,
        layerWindows: [0],
      });
      const q = backend.alloc([1, 8], "f32"), kv = backend.alloc([1, 8], "f32");
      const sinks = backend.upload({ dtype: "bf16", shape: [1], data: new Uint8Array(2) });
      const batch = {
        numTokens: 1,
        segments: [{
          rowOffset: 0,
          numTokens: 1,
          startPosition: 0,
          fullBlocks: Int32Array.of(7),
          slidingBlocks: new Int32Array(0),
        }],
      };
      assertThrows(
        () =>
          backend.ops.attention(backend.alloc([1, 8], "f32"), q, kv, kv, {
            layer: 0,
            numHeads: 1,
            numKeyValueHeads: 1,
            headDim: 8,
            window: 0,
            sinks,
            pool,
            batch,
          }),
        (err: Error) => err instanceof BackendError && /invalid block id/.test(err.message),
      );
      // An embedding id outside the table: the kernel reports it, flush fails naming the op, the context survives.
      await assertBadEmbedIdAtFlush(backend, x, /embed_f32_bf16w: a token id is outside/);
      assertEquals(Array.from(await backend.read(x)), new Array(16).fill(0));
    } finally {
      backend.dispose();
    }
  },
});

Deno.test({
  name: "the CPU library takes the widest vector path this CPU has; the context's isa caps it, once per process",
  ignore: !nativeAvailable,
  fn: async () => {
    // The conformance suite runs the default path and each forced narrower one; this pins down that the default
    // really is the widest (so on a VNNI CPU the integer MXFP4 dot is what the default run checks).
    const flags = new Set(
      /^flags\s*:(.*)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1].trim().split(/\s+/) ?? [],
    );
    // AMX also needs Linux to grant the tile state to the process (a sandbox may refuse): ask as the library does,
    // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) through libc's syscall().
    const amxGranted = (() => {
      const libc = Deno.dlopen("libc.so.6", { syscall: { parameters: ["i64", "i64", "i64"], result: "i64" } });
      try {
        return libc.symbols.syscall(158n, 0x1023n, 18n) === 0n;
      } finally {
        libc.close();
      }
    })();
    const widest = flags.has("avx512f") && flags.has("avx512bw")
      ? (flags.has("avx512_vnni")
        ? (amxGranted && ["amx_tile", "amx_bf16", "avx512_bf16", "avx512vbmi"].every((f) => flags.has(f))
          ? "cpu/avx512-amx"
          : "cpu/avx512-vnni")
        : "cpu/avx512")
      : flags.has("avx2") && flags.has("fma")
      ? "cpu/avx2"
      : "cpu/scalar";
    // Each in a fresh process (the path is fixed per process): the kind of a backend created with `isa`, then what
    // a second context asking for another path gets.
    const kindWith = async (isa?: string, second?: string) => {
      const script = `import { createNativeBackend } from ${
        JSON.stringify(new URL("../src/backends/native/native_backend.ts", import.meta.url).href)
      };
        const isa = ${JSON.stringify(isa ?? null)} ?? undefined, second = ${JSON.stringify(second ?? null)};
        console.log(createNativeBackend({ numThreads: 1, isa }).kind);
        if (second) try { createNativeBackend({ numThreads: 1, isa: second }); console.log("created"); }
        catch (err) { console.log(err.message); }`;
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["eval", script],
        env: { NO_COLOR: "1" },
        stdout: "piped",
      }).output();
      return new TextDecoder().decode(out.stdout).trim();
    };
    assertEquals(await kindWith(), widest);
    assertEquals(await kindWith("scalar"), "cpu/scalar");
    if (widest === "cpu/avx512-amx") assertEquals(await kindWith("avx512-vnni"), "cpu/avx512-vnni");
    if (widest.startsWith("cpu/avx512-")) assertEquals(await kindWith("avx512"), "cpu/avx512");
    const [kind, refusal] = (await kindWith("scalar", "avx2")).split("\n");
    assertEquals(kind, "cpu/scalar");
    assert(/the CPU path is fixed for this process .*asked for "avx2", fixed at scalar/.test(refusal), refusal);
    assert(/unknown CPU path/.test((await kindWith(undefined, "avx9")).split("\n")[1]));
  },
});
