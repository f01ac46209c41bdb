/** The probe's fit check: a model a WebGPU adapter cannot hold is refused with why, before anything is loaded. */
import { deepStrictEqual as assertEquals, match as assertMatch, ok as assert, rejects } from "node:assert/strict";
import { fitRefusal, type ProbeResult, selectBackend } from "../src/backends/select.ts";
import type { WebGpuInfo } from "../src/backends/webgpu/webgpu_backend.ts";
import { Checkpoint, modelFootprint } from "../src/checkpoint/checkpoint.ts";
import { presetConfig } from "../src/tools/synthetic.ts";
import { GOLDEN_ROOT } from "./helpers/golden.ts";
import { runCli } from "./helpers/server.ts";
import { ensureRuntimeDir } from "../src/backends/webgpu/device.ts";

const GIB = 1024 ** 3;

function adapter(overrides: Partial<WebGpuInfo>): WebGpuInfo {
  return {
    description: "Test GPU",
    isFallbackAdapter: false,
    maxStorageBufferBindingSize: 128 * 1024 ** 2,
    maxBufferSize: 2 * GIB - 1,
    shaderF16: false,
    ...overrides,
  };
}

function probes(info: WebGpuInfo): ProbeResult[] {
  return [
    { name: "webgpu", available: true, reason: "test adapter", dtype: "f32", adapter: info },
    { name: "reference", available: true, reason: "always", dtype: "f32" },
  ];
}

const need20b = modelFootprint(presetConfig("20b"));

Deno.test("the footprint of the 20b preset matches the release's tensor bytes; its largest row is one expert's gate_up blocks", () => {
  assertEquals(need20b.weightBytes, 13_761_264_768);
  assertEquals(need20b.largestRow, {
    tensor: "model.layers.0.mlp.experts.gate_up_proj_blocks",
    bytes: 5760 * 90 * 16,
  });
  // The golden checkpoint's footprint is what its files hold.
  const checkpoint = Checkpoint.open(`${GOLDEN_ROOT}/tiny`);
  assertEquals(modelFootprint(checkpoint.config).weightBytes, checkpoint.totalBytes());
  checkpoint.close();
});

Deno.test("a row larger than the adapter's storage binding is refused, naming the tensor and the limit", () => {
  const small = adapter({ maxStorageBufferBindingSize: 4 * 1024 ** 2 });
  const refusal = fitRefusal(probes(small)[0], { need: need20b, kvCacheBytes: GIB });
  assertMatch(
    refusal!,
    /does not fit on the WebGPU adapter "Test GPU": one row of tensor "model.layers.0.mlp.experts.gate_up_proj_blocks" is 8294400 bytes/,
  );
  assertMatch(refusal!, /maxStorageBufferBindingSize is 4194304 bytes/);
  // 128 MiB (the usual limit) holds every 20b row.
  assertEquals(fitRefusal(probes(adapter({}))[0], { need: need20b, kvCacheBytes: GIB }), undefined);
});

Deno.test("a software adapter's buffers are host memory: weights + KV beyond it are refused; a real GPU is not judged by it", () => {
  const fit = { need: need20b, kvCacheBytes: 2 * GIB, hostMemoryBytes: 8 * GIB };
  assertMatch(
    fitRefusal(probes(adapter({ isFallbackAdapter: true }))[0], fit)!,
    /weights 12\.82 GiB \+ KV cache 2\.00 GiB exceed the 8\.00 GiB of host memory/,
  );
  assertEquals(fitRefusal(probes(adapter({ isFallbackAdapter: false }))[0], fit), undefined);
  assertEquals(
    fitRefusal(probes(adapter({ isFallbackAdapter: true }))[0], { ...fit, hostMemoryBytes: 24 * GIB }),
    undefined,
  );
  // Other backends have nothing to check before loading.
  assertEquals(fitRefusal(probes(adapter({}))[1], fit), undefined);
});

Deno.test("auto skips a candidate the model does not fit on; an explicit choice fails with the reason", async () => {
  const list = probes(adapter({ maxStorageBufferBindingSize: 4 * 1024 ** 2 }));
  const fit = { need: need20b, kvCacheBytes: GIB };
  const { backend, probe } = await selectBackend("auto", list, fit);
  assertEquals(backend.name, "reference");
  assertEquals(probe.name, "reference");
  backend.dispose();
  await rejects(
    selectBackend("webgpu", list, fit),
    /does not fit on the WebGPU adapter "Test GPU": one row of tensor "model.layers.0.mlp.experts.gate_up_proj_blocks"/,
  );
});

ensureRuntimeDir(); // Mesa's Vulkan loader wants one (else it complains on stderr)
const gpu = await (globalThis.navigator as Navigator & { gpu?: GPU }).gpu?.requestAdapter();
if (!gpu?.info.isFallbackAdapter) {
  console.log("skip: serve --backend webgpu host-memory refusal (no software WebGPU adapter here)");
}

Deno.test({
  name: "serve --backend webgpu on a software adapter refuses a KV budget beyond host memory, in one line, exit 2",
  ignore: !gpu?.info.isFallbackAdapter,
  async fn() {
    const result = await runCli([
      "--backend",
      "webgpu",
      "--model",
      `${GOLDEN_ROOT}/tiny`,
      "--port",
      "0",
      "--kv-cache-bytes",
      String(2 ** 50),
    ]);
    assertEquals(result.code, 2, result.stderr);
    const lines = result.stderr.trim().split("\n");
    assertEquals(lines.length, 1, result.stderr);
    assertMatch(
      lines[0],
      /^error: The model does not fit on the WebGPU adapter ".*": weights .* \+ KV cache 1048576\.00 GiB exceed/,
    );
    assert(!/Traceback|at /.test(result.stderr));
  },
});
