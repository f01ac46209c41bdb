/**
 * The device layout of --gpu-mode on fake device lists (4 and 8 H100s, 2 small GPUs, one CPU socket): which devices
 * get single engines and which form the tensor-parallel group, and why; CPU sockets from /proc/cpuinfo; and
 * `deno task probe` printing the devices and the plan.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { cpuSockets, type DeviceInfo } from "../src/backends/devices.ts";
import { modelFootprint } from "../src/checkpoint/checkpoint.ts";
import { planLayout, tensorSizes } from "../src/engine/layout.ts";
import { presetConfig } from "../src/tools/synthetic.ts";

const GIB = 2 ** 30;
const gpus = (n: number, gib: number): DeviceInfo[] =>
  Array.from({ length: n }, (_, i) => ({
    id: `cuda:${i}`,
    kind: "cuda",
    index: i,
    name: "NVIDIA H100",
    memoryBytes: gib * GIB,
    detail: { compute_capability: "9.0" },
  }));
const need = (preset: "20b" | "120b", kvGib = 2) => ({
  weightBytes: modelFootprint(presetConfig(preset)).weightBytes,
  kvCacheBytes: kvGib * GIB,
});

Deno.test("tensor group sizes: 2, 4 and 8 split gpt-oss (heads 64, KV heads 8, vocab); 3, 5, 6 and 7 do not", () => {
  assertEquals(tensorSizes(presetConfig("20b"), 8), [2, 4, 8]);
});

Deno.test("auto on 4 × 80 GB with the 20b: singles on cuda:0-1, a TP=2 group on cuda:2-3", () => {
  const plan = planLayout(gpus(4, 80), presetConfig("20b"), need("20b"), "auto");
  assertEquals(plan.singles, ["cuda:0", "cuda:1"]);
  assertEquals(plan.group, { kind: "tensor", devices: ["cuda:2", "cuda:3"] });
});

Deno.test("auto on 2 GPUs: the group spans both and shares cuda:0 with the single engine", () => {
  const plan = planLayout(gpus(2, 80), presetConfig("20b"), need("20b"), "auto");
  assertEquals(plan.singles, ["cuda:0"]);
  assertEquals(plan.group, { kind: "tensor", devices: ["cuda:0", "cuda:1"] });
  assert(plan.notes.some((n) => /cuda:0 is shared/.test(n)));
});

Deno.test("a model too big for one device: the smallest tensor group it fits on serves everything", () => {
  // 120b ≈ 61 GiB of weights + 16 GiB of KV: not one 80 GB device (72 GiB usable), but two.
  const plan = planLayout(gpus(8, 80), presetConfig("120b"), need("120b", 16), "auto");
  assertEquals(plan.singles, []);
  assertEquals(plan.group, { kind: "tensor", devices: ["cuda:0", "cuda:1"] });
  assert(plan.notes.some((n) => /does not fit one device: a tensor group of 2/.test(n)), plan.notes.join("; "));
});

Deno.test("tensor and pipeline modes take the most devices that split the model; single takes the first", () => {
  const config = presetConfig("120b");
  assertEquals(planLayout(gpus(8, 80), config, need("120b"), "tensor").group?.devices.length, 8);
  assertEquals(planLayout(gpus(6, 80), config, need("120b"), "tensor").group?.devices.length, 4);
  assertEquals(planLayout(gpus(3, 80), config, need("120b"), "pipeline").group, {
    kind: "pipeline",
    devices: ["cuda:0", "cuda:1", "cuda:2"],
  });
  const single = planLayout(gpus(2, 24), config, need("120b"), "single");
  assertEquals([single.singles, single.group], [["cuda:0"], undefined]);
  assert(/does not fit cuda:0 \(24\.0 GiB\)/.test(single.notes[0]), single.notes[0]);
});

Deno.test("one CPU socket: auto plans a single engine and says why there is no group", () => {
  const socket = cpuSockets("processor\t: 0\nmodel name\t: AMD EPYC\nphysical id\t: 0\ncore id\t: 0\n", 24 * GIB);
  const plan = planLayout(socket, presetConfig("20b"), need("20b"), "auto");
  assertEquals([plan.singles, plan.group], [["cpu:0"], undefined]);
  assertEquals(plan.notes, ["1 device(s): no tensor-parallel group"]);
});

Deno.test("CPU sockets from /proc/cpuinfo: physical ids, cores and hardware threads", () => {
  const block = (p: number, socket: number, core: number) =>
    `processor\t: ${p}\nmodel name\t: Xeon\nphysical id\t: ${socket}\ncore id\t\t: ${core}\n`;
  // 2 sockets × 2 cores × 2 threads.
  const text = [0, 1, 2, 3, 4, 5, 6, 7].map((p) => block(p, p >> 2, (p >> 1) & 1)).join("\n");
  const sockets = cpuSockets(text, 64 * GIB);
  assertEquals(sockets.map((s) => [s.id, s.detail, s.memoryBytes / GIB]), [
    ["cpu:0", { cores: 2, threads: 4 }, 32],
    ["cpu:1", { cores: 2, threads: 4 }, 32],
  ]);
});

Deno.test("deno task probe prints the devices found and the plan for a model and mode", async () => {
  const main = new URL("../src/main.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "probe", "--model", "120b", "--gpu-mode", "tensor"],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  const report = JSON.parse(new TextDecoder().decode(out.stdout));
  assert(report.devices.length >= 1 && report.devices.every((d: DeviceInfo) => d.memoryBytes > 0));
  assertEquals(report.plan.model, "120b");
  assertEquals(report.plan.mode, "tensor");
  assertEquals(report.plan.weightBytes, modelFootprint(presetConfig("120b")).weightBytes);
  assert(typeof report.cuda.reason === "string" && report.cuda.reason.length > 0);
});
