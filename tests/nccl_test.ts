/**
 * Devices and collectives at the native ABI without a GPU: the CPU library refuses them in one line; the CUDA library
 * loads NCCL with dlopen, checks its symbols and version, and says what is missing in one line. Stand-in NCCL
 * libraries (built here with cc) play the real one's exported C ABI; the collectives themselves need GPUs
 * (bench/cuda_check.sh runs them on a lent machine).
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert/strict";
import { HostCommunicator } from "../src/backends/communicator.ts";
import { createNativeBackend, CUDA_LIBRARY_PATH, loadNativeLibrary } from "../src/backends/native/native_backend.ts";
import { listCudaDevices, NcclCommunicator, ncclUniqueId, openNccl } from "../src/backends/native/nccl.ts";
import { gptossFlagDevice } from "../src/backends/native/ffi.ts";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { BackendError } from "../src/errors.ts";

const loads = (path?: string) => {
  try {
    loadNativeLibrary(path ? { path } : {}).close();
    return true;
  } catch (err) {
    console.log(`skipped: ${(err as Error).message}`);
    return false;
  }
};
const cpuBuilt = loads();
const cudaBuilt = loads(CUDA_LIBRARY_PATH);

Deno.test({
  name: "the CPU library refuses devices and collectives in one line, and a context on device 1",
  ignore: !cpuBuilt,
  fn: async () => {
    const library = loadNativeLibrary();
    try {
      assertThrows(() => listCudaDevices(library), /device_count: the CPU library has no CUDA devices or NCCL/);
      assertThrows(
        () => openNccl(library, ""),
        (err: Error) =>
          err instanceof BackendError &&
          /nccl_open: the CPU library has no CUDA devices .*GPTOSS_UNSUPPORTED/.test(err.message),
      );
      const out = new BigUint64Array(1);
      assertEquals(library.symbols.gptoss_context_create(1, gptossFlagDevice(1), null, out), 1);
      assert(
        /one device \(device 1 asked for\)/.test(
          Deno.UnsafePointerView.getCString(library.symbols.gptoss_last_error(null)!),
        ),
      );
      assertEquals(library.symbols.gptoss_context_create(1, 0, null, out), 0);
      const ctx = Deno.UnsafePointer.create(out[0]);
      assertEquals(await library.symbols.gptoss_comm_barrier(ctx, null), 4); // GPTOSS_UNSUPPORTED
      assert(/comm_barrier: the CPU library has no NCCL/.test(
        Deno.UnsafePointerView.getCString(library.symbols.gptoss_last_error(ctx)!),
      ));
      library.symbols.gptoss_context_destroy(ctx);
    } finally {
      library.close();
    }
  },
});

/** A stand-in libnccl: `version` from ncclGetVersion, every symbol we resolve unless named in `omit`. */
async function fakeNccl(dir: string, name: string, version: number, omit: string[] = []): Promise<string> {
  const functions: Record<string, string> = {
    ncclGetVersion: `int ncclGetVersion(int* v) { *v = ${version}; return 0; }`,
    ncclGetUniqueId: "int ncclGetUniqueId(char* id) { for (int i = 0; i < 128; i++) id[i] = (char)(i * 7); return 0; }",
    ncclCommInitRank: "int ncclCommInitRank(void** c, int n, ...) { (void)n; *c = 0; return 5; }",
    ncclCommDestroy: "int ncclCommDestroy(void* c) { (void)c; return 0; }",
    ncclAllReduce: "int ncclAllReduce(void) { return 5; }",
    ncclAllGather: "int ncclAllGather(void) { return 5; }",
    ncclBroadcast: "int ncclBroadcast(void) { return 5; }",
    ncclGetErrorString: 'const char* ncclGetErrorString(int r) { return r == 5 ? "invalid usage" : "?"; }',
  };
  const source = `${dir}/${name}.c`, library = `${dir}/${name}.so`;
  await Deno.writeTextFile(
    source,
    Object.entries(functions).filter(([f]) => !omit.includes(f)).map(([, body]) => body).join("\n"),
  );
  const cc = await new Deno.Command("cc", { args: ["-shared", "-fPIC", "-o", library, source], stderr: "piped" })
    .output();
  assert(cc.success, new TextDecoder().decode(cc.stderr));
  return library;
}

Deno.test({
  name: "the CUDA library loads NCCL with dlopen: missing library, missing symbol, old version, then a good one",
  ignore: !cudaBuilt,
  fn: async () => {
    const library = loadNativeLibrary({ path: CUDA_LIBRARY_PATH });
    const dir = await Deno.makeTempDir({ prefix: "gptoss-nccl-" });
    try {
      assertThrows(
        () => openNccl(library, `${dir}/libnccl.so.2`),
        (err: Error) =>
          err instanceof BackendError && !err.message.includes("\n") &&
          /cannot load NCCL \(.*libnccl\.so\.2: cannot open shared object file.*\): install NCCL 2\.12\+/.test(
            err.message,
          ),
      );
      assertThrows(() => ncclUniqueId(library), /NCCL is not open \(call gptoss_nccl_open first\)/);
      const partial = await fakeNccl(dir, "partial", 22304, ["ncclBroadcast"]);
      assertThrows(() => openNccl(library, partial), /partial\.so lacks ncclBroadcast \(not an NCCL library/);
      const old = await fakeNccl(dir, "old", 21003);
      assertThrows(() => openNccl(library, old), /old\.so is NCCL 21003; gpt-oss-deno needs 2\.12 \(21200\) or newer/);
      const good = await fakeNccl(dir, "good", 22304);
      assertEquals(openNccl(library, good), 22304);
      assertEquals([...ncclUniqueId(library)], Array.from({ length: 128 }, (_, i) => (i * 7) & 0xff));
      // Joining needs a context, which needs a device: with none, the reason is the probe's one line.
      const out = new BigUint64Array(1);
      assertEquals(await library.symbols.gptoss_comm_init(null, new Uint8Array(128), 128n, 2, 0, out), 1);
      // No device here: the device list is empty or the driver's absence, said in one line.
      try {
        assertEquals(listCudaDevices(library), []);
      } catch (err) {
        assert(/^no CUDA driver: [^\n]+$/.test((err as Error).message), (err as Error).message);
      }
    } finally {
      library.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A CUDA device and an NCCL to join it with, or why not (printed: the GPU test below then skips). */
const gpuNccl = (() => {
  if (!cudaBuilt) return "the CUDA library is not built";
  const library = loadNativeLibrary({ path: CUDA_LIBRARY_PATH });
  try {
    if (listCudaDevices(library).length === 0) return "no CUDA device";
    openNccl(library);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  } finally {
    library.close();
  }
})();
if (gpuNccl) console.log(`NCCL on a CUDA device: skipped: ${gpuNccl}`);

Deno.test({
  name: "on a CUDA device with NCCL: one rank's all-reduce, all-gather, broadcast and barrier (TP needs two devices)",
  ignore: gpuNccl !== undefined,
  fn: async () => {
    const backend = createNativeBackend({ library: loadNativeLibrary({ path: CUDA_LIBRARY_PATH }), name: "cuda" });
    const comm = await NcclCommunicator.create([backend]);
    try {
      const x = backend.alloc([2, 3], "f32");
      backend.write(x, Float32Array.of(1, 2, 3, 4, 5, 6));
      await comm.allReduceSum([backend], [x]);
      assertEquals([...await backend.read(x)], [1, 2, 3, 4, 5, 6]);
      assertEquals([...await comm.allGatherColumns([backend], [x], 2)], [1, 2, 3, 4, 5, 6]);
      await comm.broadcast([backend], [x], 0);
      await comm.barrier();
      assertEquals([...await backend.read(x)], [1, 2, 3, 4, 5, 6]);
    } finally {
      comm.dispose();
      backend.dispose();
    }
  },
});

Deno.test("NcclCommunicator joins CUDA backends only; the host communicator is the CPU ranks' transport", async () => {
  await assertRejects(
    () => NcclCommunicator.create([createReferenceBackend(), createReferenceBackend()]),
    (err: Error) => err instanceof BackendError && /NCCL joins CUDA backends only/.test(err.message),
  );
  assertEquals(new HostCommunicator(2).transport, "host");
});
