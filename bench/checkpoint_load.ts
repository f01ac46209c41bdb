/**
 * Checkpoint load benchmark (a script, not a test):
 *   deno run -A bench/checkpoint_load.ts --dir /path/to/checkpoint [--modes mmap,read]
 * Loads the checkpoint into the form the reference backend computes from, in a fresh child process per mode, and
 * reports throughput as a ratio to `cat` of the same files from the page cache (goal ≥ 0.8) and peak RSS as a ratio to
 * the checkpoint size (goal ≤ 1.1). Generate a checkpoint first, e.g.
 *   deno task make-model --preset 20b --out /data/presets/20b
 */
import { parseArgs } from "node:util";
import { createReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { loadWeights } from "../src/checkpoint/load_weights.ts";

function peakRssBytes(): number {
  const status = Deno.readTextFileSync("/proc/self/status");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

async function child(dir: string, mode: string): Promise<void> {
  const started = performance.now();
  const checkpoint = Checkpoint.open(dir, { mmap: mode === "mmap", populate: true });
  const weights = await loadWeights(checkpoint, createReferenceBackend());
  const seconds = (performance.now() - started) / 1000;
  // Keep the weights alive until RSS is read.
  const tensors = weights.layers.length;
  console.log(JSON.stringify({ mode, seconds, bytes: checkpoint.totalBytes(), peakRss: peakRssBytes(), tensors }));
}

async function timeCat(files: string[]): Promise<number> {
  const started = performance.now();
  const status = await new Deno.Command("sh", {
    args: ["-c", `cat ${files.map((f) => `'${f}'`).join(" ")} > /dev/null`],
  })
    .output();
  if (!status.success) throw new Error("cat failed");
  return (performance.now() - started) / 1000;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { dir: { type: "string" }, modes: { type: "string" }, child: { type: "string" } },
  });
  if (!values.dir) throw new Error("Give --dir DIR (a checkpoint; see the header of this file)");
  if (values.child) return await child(values.dir, values.child);
  const files = [...Deno.readDirSync(values.dir)].filter((e) => e.name.endsWith(".safetensors"))
    .map((e) => `${values.dir}/${e.name}`);
  const fileBytes = files.reduce((s, f) => s + Deno.statSync(f).size, 0);
  await timeCat(files); // warm the page cache
  const catSeconds = await timeCat(files);
  console.log(`checkpoint: ${values.dir} (${(fileBytes / 1e9).toFixed(2)} GB in ${files.length} files)`);
  console.log(`cat from page cache: ${catSeconds.toFixed(2)} s = ${(fileBytes / 1e9 / catSeconds).toFixed(2)} GB/s`);
  for (const mode of (values.modes ?? "mmap,read").split(",")) {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", import.meta.filename!, "--dir", values.dir, "--child", mode],
      stderr: "inherit",
    }).output();
    const result = JSON.parse(new TextDecoder().decode(output.stdout).trim().split("\n").pop()!);
    const throughputRatio = catSeconds / result.seconds;
    console.log(
      `${mode.padEnd(5)} load: ${result.seconds.toFixed(2)} s = ${
        (result.bytes / 1e9 / result.seconds).toFixed(2)
      } GB/s; ` +
        `throughput / cat = ${throughputRatio.toFixed(2)} (goal >= 0.8); ` +
        `peak RSS ${(result.peakRss / 1e9).toFixed(2)} GB = ${
          (result.peakRss / fileBytes).toFixed(2)
        } x checkpoint (goal <= 1.1)`,
    );
  }
}

await main();
