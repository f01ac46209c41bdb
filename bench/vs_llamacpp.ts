/**
 * Ours against llama.cpp on the CPU, side by side in one run (a script, not a test):
 *   deno run -A bench/vs_llamacpp.ts --llama-bin DIR --models DIR [--shapes mini,20b] [--rounds 3] [--threads 2]
 *     [--isa avx2] [--weights bf16,q8] [--decode 32] [--depth 4096] [--depth-shapes mini] [--out FILE]
 *   deno run -A bench/vs_llamacpp.ts --from run1.json,run2.json [--shapes mini] [--weights q8]
 * --from prints the table of runs saved with --out together, their rounds one after another.
 * --llama-bin holds an already built llama-bench and llama-batched-bench (this script neither fetches nor builds
 * llama.cpp; see bench/README.md). --models holds ours from `deno task make-model --preset P --out DIR/P` and
 * theirs from ../shared/anchors/llamacpp/make_gguf.py as DIR/gpt-oss-P-synth.gguf: the same shapes, synthetic weights.
 * Each round runs llama.cpp and ours (once per weights mode) back to back per shape, llama.cpp first in odd rounds and
 * last in even ones, so that a drift of the host's speed favours neither. Every table cell is the median of the rounds
 * with its range; each ratio is the median (and range) of the rounds' own ratios, ours / llama.cpp of the same round:
 * on a shared VM whose memory bandwidth moves between ~30 and ~55 GB/s over minutes, a pair measured a minute apart
 * shares its conditions, while medians taken separately need not. Memory bandwidth (bench/membw.c, the read rate) is
 * measured by every one of our runs; the decode ceiling is bandwidth ÷ the bytes our decode reads.
 */
import { parseArgs } from "node:util";

interface Sample {
  readonly round: number;
  readonly engine: string; // "llama.cpp" or "ours/<weights>"
  readonly shape: string;
  readonly metric: string;
  readonly value: number;
}

const PREFILL = [32, 128, 512];
const BATCHES = [4, 16];

async function run(command: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(command, { args, env, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${command} ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr).slice(-2000)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** llama-bench: prefill at each length, decode, and decode after `depth` tokens of context. */
async function llamaBench(bin: string, gguf: string, threads: number, decode: number, depth: number | undefined) {
  const base = ["-m", gguf, "-t", String(threads), "-r", "1", "-o", "json"];
  const rows: { n_prompt: number; n_gen: number; n_depth: number; avg_ts: number }[] = JSON.parse(
    await run(`${bin}/llama-bench`, [...base, "-p", PREFILL.join(","), "-n", String(decode)]),
  );
  if (depth) {
    rows.push(
      ...JSON.parse(await run(`${bin}/llama-bench`, [...base, "-p", "0", "-n", String(decode), "-d", String(depth)])),
    );
  }
  const samples: [string, number][] = [];
  for (const row of rows) {
    if (row.n_gen > 0 && row.n_depth > 0) samples.push([`decode @${row.n_depth}`, row.avg_ts]);
    else if (row.n_gen > 0) samples.push(["decode", row.avg_ts]);
    else samples.push([`prefill ${row.n_prompt}`, row.avg_ts]);
  }
  return samples;
}

/** llama-batched-bench: `b` sequences decoding together (tokens/s of the whole batch). */
async function llamaBatched(bin: string, gguf: string, threads: number, decode: number) {
  const text = await run(`${bin}/llama-batched-bench`, [
    "-m",
    gguf,
    "-t",
    String(threads),
    "-c",
    String(BATCHES.at(-1)! * (32 + decode) + 64),
    "-npp",
    "32",
    "-ntg",
    String(decode),
    "-npl",
    BATCHES.join(","),
    "--output-format",
    "jsonl",
  ]);
  const samples: [string, number][] = [];
  for (const line of text.split("\n").filter((l) => l.startsWith("{"))) {
    const row = JSON.parse(line);
    samples.push([`batched decode ${row.pl}`, row.speed_tg]);
  }
  return samples;
}

/** bench/model_speed.ts on the native backend. */
async function ours(
  dir: string,
  opts: { isa: string; threads: number; weights: string; decode: number; depth?: number },
) {
  const args = [
    "run",
    "-A",
    new URL("./model_speed.ts", import.meta.url).pathname,
    "--dir",
    dir,
    "--backend",
    "native",
    "--prompt",
    "32",
    "--decode",
    String(opts.decode),
    "--batch",
    [1, ...BATCHES].join(","),
    "--prefill",
    PREFILL.join(","),
    "--weights-dtype",
    opts.weights,
    "--threads",
    String(opts.threads),
    ...(opts.depth ? ["--depth", String(opts.depth)] : []),
  ];
  const report = JSON.parse(await run(Deno.execPath(), args, { GPTOSS_CPU_ISA: opts.isa }));
  const samples: [string, number][] = [];
  for (const r of report.runs) {
    samples.push([r.batch === 1 ? "decode" : `batched decode ${r.batch}`, r.decode_tokens_per_s]);
  }
  for (const p of report.prefill) samples.push([`prefill ${p.tokens}`, p.tokens_per_s]);
  if (report.decode_at_depth) {
    samples.push([`decode @${report.decode_at_depth.tokens}`, report.decode_at_depth.decode_tokens_per_s]);
  }
  samples.push(["bandwidth GB/s", report.bandwidth_gb_per_s]);
  samples.push(["decode / ceiling", report.batch1_decode_fraction_of_ceiling]);
  samples.push(["GB read per token", report.weight_bytes_per_token / 1e9]);
  return { samples, kind: report.kind as string };
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/** ours / llama.cpp per round where both measured the metric: the median and the range of those ratios. */
function pairedRatio(samples: Sample[], shape: string, metric: string, engine: string): string {
  const at = (e: string, round: number) =>
    samples.find((s) => s.engine === e && s.shape === shape && s.metric === metric && s.round === round)?.value;
  const ratios = [...new Set(samples.map((s) => s.round))]
    .map((round) => [at(engine, round), at("llama.cpp", round)])
    .filter(([mine, theirs]) => mine !== undefined && theirs)
    .map(([mine, theirs]) => mine! / theirs!);
  if (!ratios.length) return "—";
  const range = ratios.length > 1 ? ` (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})` : "";
  return median(ratios).toFixed(2) + range;
}

/** One markdown table per shape: metric × engine (median, range) and ours / llama.cpp per weights mode. */
function table(samples: Sample[], shape: string, weights: string[]): string {
  const of = (engine: string, metric: string) =>
    samples.filter((s) => s.engine === engine && s.shape === shape && s.metric === metric).map((s) => s.value);
  const cell = (values: number[]) =>
    values.length ? `${fmt(median(values))} (${fmt(Math.min(...values))}–${fmt(Math.max(...values))})` : "—";
  const metrics = [...new Set(samples.filter((s) => s.shape === shape).map((s) => s.metric))];
  const header = ["metric", "llama.cpp", ...weights.flatMap((w) => [`ours ${w}`, `ours ${w} / llama.cpp`])];
  const lines = [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`];
  for (const metric of metrics) {
    const row = [metric, cell(of("llama.cpp", metric))];
    for (const w of weights) row.push(cell(of(`ours/${w}`, metric)), pairedRatio(samples, shape, metric, `ours/${w}`));
    lines.push(`| ${row.join(" | ")} |`);
  }
  return lines.join("\n");
}

interface Options {
  bin: string;
  models: string;
  threads: number;
  rounds: number;
  shapes: string[];
  weights: string[];
  isa: string;
  decode: number;
  depth: number;
  depthShapes: string[];
}

/** Runs the rounds (see the header) and returns every sample with the native backend's kind. */
async function measure(o: Options): Promise<{ samples: Sample[]; kind: string }> {
  const samples: Sample[] = [];
  let kind = "";
  for (let round = 1; round <= o.rounds; round++) {
    for (const shape of o.shapes) {
      const depth = o.depthShapes.includes(shape) ? o.depth : undefined;
      const gguf = `${o.models}/gpt-oss-${shape}-synth.gguf`;
      const llama = async () => {
        console.error(`round ${round}: ${shape}: llama.cpp`);
        const theirs = [
          ...await llamaBench(o.bin, gguf, o.threads, o.decode, depth),
          ...await llamaBatched(o.bin, gguf, o.threads, o.decode),
        ];
        for (const [metric, value] of theirs) samples.push({ round, engine: "llama.cpp", shape, metric, value });
      };
      if (round % 2 === 1) await llama();
      for (const w of o.weights) {
        console.error(`round ${round}: ${shape}: ours (${w})`);
        const mine = await ours(`${o.models}/${shape}`, { ...o, weights: w, depth });
        kind = mine.kind;
        for (const [metric, value] of mine.samples) samples.push({ round, engine: `ours/${w}`, shape, metric, value });
      }
      if (round % 2 === 0) await llama();
    }
  }
  return { samples, kind };
}

/** Samples of earlier runs saved with --out, their rounds renumbered after one another. */
function loadRuns(files: string[]): { samples: Sample[]; kind: string } {
  const samples: Sample[] = [];
  let kind = "";
  for (const file of files) {
    const saved = JSON.parse(Deno.readTextFileSync(file)) as { samples: Sample[]; kind?: string };
    const offset = Math.max(0, ...samples.map((s) => s.round));
    samples.push(...saved.samples.map((s) => ({ ...s, round: s.round + offset })));
    kind = saved.kind ?? kind;
  }
  return { samples, kind };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "llama-bin": { type: "string" },
      models: { type: "string" },
      shapes: { type: "string", default: "mini,20b" },
      rounds: { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      isa: { type: "string", default: "avx2" },
      weights: { type: "string", default: "q8,bf16" },
      decode: { type: "string", default: "32" },
      depth: { type: "string", default: "4096" },
      "depth-shapes": { type: "string", default: "mini" },
      out: { type: "string" },
      from: { type: "string" },
    },
  });
  const shapes = values.shapes!.split(","), weights = values.weights!.split(","), threads = Number(values.threads);
  let run: { samples: Sample[]; kind: string };
  if (values.from) run = loadRuns(values.from.split(","));
  else {
    if (!values["llama-bin"] || !values.models) {
      throw new Error("Give --llama-bin DIR and --models DIR (see the header)");
    }
    run = await measure({
      bin: values["llama-bin"],
      models: values.models,
      threads,
      rounds: Number(values.rounds),
      shapes,
      weights,
      isa: values.isa!,
      decode: Number(values.decode),
      depth: Number(values.depth),
      depthShapes: values["depth-shapes"]!.split(","),
    });
  }
  const rounds = new Set(run.samples.map((s) => s.round)).size;
  const cpu = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? "unknown CPU";
  const report = [
    `# ours (native ${run.kind}, ${threads} threads) vs llama.cpp, ${rounds} rounds, ${new Date().toISOString()}`,
    `CPU: ${cpu}; tokens/s unless named otherwise; median (range); ratios: median (range) of each round's ours / llama.cpp.`,
    ...shapes.map((shape) => `\n## ${shape}\n\n${table(run.samples, shape, weights)}`),
  ].join("\n");
  console.log(report);
  if (values.out) await Deno.writeTextFile(values.out, JSON.stringify({ report, ...run }, null, 1));
}

await main();
