/** Command-line parsing: commands, flags and the help text. Pure: main.ts passes Deno.args in. */
import { parseArgs } from "node:util";
import { type FlagSpec, GPU_MODES, SERVE_FLAGS } from "./config.ts";
import { UsageError } from "./errors.ts";
import { SERVER_NAME, VERSION } from "./version.ts";

export const COMMANDS = ["serve", "make-model", "probe"] as const;
export type Command = typeof COMMANDS[number];

/** Flags of `make-model`. */
export const MAKE_MODEL_FLAGS: readonly FlagSpec[] = [
  {
    flag: "preset",
    key: "preset",
    value: { kind: "choice", choices: ["tiny", "mini", "20b", "120b", "tiny-random"] },
    help: "Checkpoint shape",
  },
  { flag: "seed", key: "seed", value: { kind: "int", min: 0, max: 2 ** 31 - 1 }, help: "Random seed (default 0)" },
  { flag: "out", key: "out", value: { kind: "string" }, help: "Output directory" },
];

/** Flags of `probe`. */
export const PROBE_FLAGS: readonly FlagSpec[] = [
  {
    flag: "model",
    key: "model",
    value: { kind: "choice", choices: ["20b", "120b", "mini"] },
    help: "Plan the device layout for this model's shape (default 20b)",
  },
  {
    flag: "gpu-mode",
    key: "gpuMode",
    value: { kind: "choice", choices: GPU_MODES },
    help: "Plan for this --gpu-mode (default auto)",
  },
];

const FLAGS_BY_COMMAND: Record<Command, readonly FlagSpec[]> = {
  "serve": SERVE_FLAGS,
  "make-model": MAKE_MODEL_FLAGS,
  "probe": PROBE_FLAGS,
};

/** What the command line asked for. */
export interface CommandLine {
  readonly command: Command;
  /** Raw flag values by flag name (strings, or true for boolean flags). */
  readonly flags: Readonly<Record<string, string | boolean>>;
  readonly help: boolean;
  readonly version: boolean;
}

/** Splits argv into a command and its flags. Throws UsageError with a one-line message. */
export function parseCommandLine(args: readonly string[]): CommandLine {
  let command: Command = "serve";
  let rest = [...args];
  if (rest.length > 0 && !rest[0].startsWith("-")) {
    if (!(COMMANDS as readonly string[]).includes(rest[0])) {
      throw new UsageError(`Unknown command "${rest[0]}": valid commands are ${COMMANDS.join(", ")}`);
    }
    command = rest[0] as Command;
    rest = rest.slice(1);
  }
  const specs = FLAGS_BY_COMMAND[command];
  const options: Record<string, { type: "string" | "boolean" }> = {
    help: { type: "boolean" },
    version: { type: "boolean" },
  };
  for (const s of specs) options[s.flag] = { type: s.value.kind === "boolean" ? "boolean" : "string" };

  let parsed;
  try {
    parsed = parseArgs({ args: rest, options, strict: true, allowPositionals: false });
  } catch (err) {
    throw new UsageError(rewordParseError(err as Error, specs, command));
  }
  const flags: Record<string, string | boolean> = {};
  for (const [name, value] of Object.entries(parsed.values)) {
    if (name === "help" || name === "version" || value === undefined) continue;
    // A repeated flag: the last one wins, as in most CLIs.
    flags[name] = Array.isArray(value) ? value[value.length - 1] : value;
  }
  return { command, flags, help: parsed.values.help === true, version: parsed.values.version === true };
}

function rewordParseError(err: Error, specs: readonly FlagSpec[], command: Command): string {
  const message = err.message;
  const unknown = /Unknown option '([^']+)'/.exec(message);
  if (unknown) {
    const valid = ["--help", "--version", ...specs.map((s) => `--${s.flag}`)].join(", ");
    return `Unknown flag "${unknown[1]}" for "${command}": valid flags are ${valid}`;
  }
  const missing = /Option '(?:-\w, )?(--[\w-]+) <value>' argument missing/.exec(message);
  if (missing) return `Missing value for ${missing[1]}`;
  const positional = /Unexpected argument '([^']+)'/.exec(message);
  if (positional) return `Unexpected argument "${positional[1]}" for "${command}": flags take the form --name value`;
  const booleanValue = /Option '(--[\w-]+)' does not take an argument/.exec(message);
  if (booleanValue) return `Flag ${booleanValue[1]} takes no value`;
  return message.split("\n")[0];
}

/** The `--help` text of one command. */
export function helpText(command: Command): string {
  const specs = FLAGS_BY_COMMAND[command];
  const width = Math.max(...specs.map((s) => s.flag.length), 7) + 4;
  const lines = [
    `${SERVER_NAME} ${VERSION}: an OpenAI-compatible inference server for GPT-OSS models`,
    "",
    `Usage: deno task serve [flags]      (command "${command}")`,
    `Commands: ${COMMANDS.join(", ")} (serve is the default)`,
    "",
    "Flags:",
  ];
  for (const s of specs) {
    const env = s.env ? `  [env ${s.env}]` : "";
    lines.push(`  --${s.flag.padEnd(width)}${s.help}${env}`);
  }
  lines.push(`  --${"help".padEnd(width)}Show this help`);
  lines.push(`  --${"version".padEnd(width)}Print the version`);
  return lines.join("\n");
}
