/**
 * Server settings: one typed, readonly value parsed once at start-up.
 *
 * Precedence, lowest first: built-in defaults < config file (`configs/server.json` or `--config FILE`)
 * < environment (`GPT_OSS_*`) < command-line flags. The chosen profile (configs/profiles.json) supplies the
 * scheduler settings; any of them can be overridden by the file's `scheduler` object, the environment or a flag.
 */
import { z } from "zod";
import { ConfigFileError, UsageError } from "./errors.ts";

export const PROFILE_NAMES = ["latency_first", "quality_first"] as const;
export const BACKEND_CHOICES = ["auto", "reference", "webgpu", "native", "cuda"] as const;
export const DTYPE_CHOICES = ["auto", "f32", "f16"] as const;
export const WEIGHTS_DTYPE_CHOICES = ["bf16", "q8"] as const;
export const GPU_MODES = ["single", "tensor", "pipeline", "auto"] as const;
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export const LOG_FORMATS = ["json", "pretty"] as const;
export const REASONING_EFFORTS = ["low", "medium", "high"] as const;
export const PREFILL_PRIORITIES = ["decode_first", "prefill_first"] as const;

export type ProfileName = typeof PROFILE_NAMES[number];
export type BackendChoice = typeof BACKEND_CHOICES[number];
export type DtypeChoice = typeof DTYPE_CHOICES[number];
export type LogLevel = typeof LOG_LEVELS[number];
export type LogFormat = typeof LOG_FORMATS[number];
export type ReasoningEffort = typeof REASONING_EFFORTS[number];

const positiveInt = z.number().int().min(1);

/** The scheduler knobs a profile sets. */
export const SchedulerSettingsSchema = z.object({
  description: z.string().optional(),
  defaultModel: z.string().min(1),
  maxNumSeqs: positiveInt,
  maxNumBatchedTokens: positiveInt,
  prefillChunkSize: positiveInt,
  prefillPriority: z.enum(PREFILL_PRIORITIES),
  defaultReasoningEffort: z.enum(REASONING_EFFORTS),
  defaultMaxTokens: positiveInt,
  maxQueuedRequests: positiveInt,
  maxQueuedTokens: positiveInt,
}).strict();
export type SchedulerSettings = Readonly<z.infer<typeof SchedulerSettingsSchema>>;

/** configs/profiles.json: every profile name maps to complete scheduler settings. */
export const ProfilesSchema = z.object({
  latency_first: SchedulerSettingsSchema,
  quality_first: SchedulerSettingsSchema,
}).strict();
export type Profiles = z.infer<typeof ProfilesSchema>;

/** Settings a layer (file, env, flags) may set; every field optional. */
const SettingsLayerSchema = z.object({
  model: z.string().min(1),
  host: z.string().min(1),
  port: z.number().int().min(0).max(65535),
  autoPort: z.boolean(),
  forcePort: z.boolean(),
  profile: z.enum(PROFILE_NAMES),
  backend: z.enum(BACKEND_CHOICES),
  dtype: z.enum(DTYPE_CHOICES),
  weightsDtype: z.enum(WEIGHTS_DTYPE_CHOICES),
  threads: positiveInt,
  tensorParallelSize: positiveInt,
  pipelineParallelSize: positiveInt,
  gpuMode: z.enum(GPU_MODES),
  largeRequestTokens: positiveInt,
  largeRequestKvMb: positiveInt,
  apiKey: z.string().min(1),
  adminKey: z.string().min(1),
  logLevel: z.enum(LOG_LEVELS),
  logFormat: z.enum(LOG_FORMATS),
  servedModelName: z.string().min(1),
  drainTimeoutMs: z.number().int().min(0),
  maxBodyBytes: positiveInt,
  corsOrigins: z.array(z.string().min(1)),
  currentDate: z.string().regex(/^\d{4}-\d{2}-\d{2}$/, "expected a date as YYYY-MM-DD"),
  modelCacheDir: z.string().min(1),
  kvCacheBytes: positiveInt,
  traceSampleRate: z.number().min(0).max(1),
  traceSlowMs: z.number().int().min(0),
  logContent: z.boolean(),
  metricsVllmNames: z.boolean(),
  responseStore: z.string().min(1),
  responseTtlSeconds: positiveInt,
  scheduler: SchedulerSettingsSchema.partial(),
}).partial().strict();
type SettingsLayer = z.infer<typeof SettingsLayerSchema>;

/** The parsed server configuration. Immutable. */
export interface ServerConfig {
  /** `--model` as given (a preset name, a Hub id or a directory); undefined means the profile's default. */
  readonly model: string | undefined;
  readonly host: string;
  /** 0 asks the OS for any free port. */
  readonly port: number;
  readonly autoPort: boolean;
  readonly forcePort: boolean;
  readonly profile: ProfileName;
  readonly backend: BackendChoice;
  /** Matmul arithmetic on GPU backends: auto = f16 where the device has it (WebGPU shader-f16), else f32. */
  readonly dtype: DtypeChoice;
  /** Native CPU backend: "q8" = 8-bit matmul weights and activations (docs/backends.md); "bf16" = exact. */
  readonly weightsDtype: (typeof WEIGHTS_DTYPE_CHOICES)[number];
  /** Native CPU threads; undefined = OMP_NUM_THREADS if set, else one per physical core. */
  readonly threads: number | undefined;
  /** Ranks the model is split over (tensor parallelism; CPU ranks in one process for now). */
  readonly tensorParallelSize: number;
  /** Stages the layers are split over (pipeline parallelism; CPU stages in one process for now). */
  readonly pipelineParallelSize: number;
  /** "auto": with a tensor-parallel group, a single-rank engine too, and large requests routed to the group. */
  readonly gpuMode: (typeof GPU_MODES)[number];
  /** Large-request routing: prompts longer than this go to the group. */
  readonly largeRequestTokens: number;
  /** Large-request routing: requests whose KV cache would exceed this many MB go to the group. */
  readonly largeRequestKvMb: number;
  readonly apiKey: string | undefined;
  readonly adminKey: string | undefined;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  readonly servedModelName: string | undefined;
  /** How long in-flight requests may run after SIGTERM/SIGINT before the process exits. */
  readonly drainTimeoutMs: number;
  readonly maxBodyBytes: number;
  readonly corsOrigins: readonly string[];
  /** Pins the harmony "Current date" line (tests, reproducible prefix caching); today's UTC date when unset. */
  readonly currentDate: string | undefined;
  /** Where the built-in demo model is generated; undefined means the user's cache directory. */
  readonly modelCacheDir: string | undefined;
  /** KV cache budget in bytes (blocks are carved from it at start-up). */
  readonly kvCacheBytes: number;
  /** Tail sampling: share of normal traces kept (errors and slow requests are always kept). */
  readonly traceSampleRate: number;
  /** Tail sampling: requests at least this slow are always kept. */
  readonly traceSlowMs: number;
  /** Log prompts and completions (off by default). */
  readonly logContent: boolean;
  /** Also export the gateway gauges under vLLM's `vllm:` names. */
  readonly metricsVllmNames: boolean;
  /**
   * Responses API store: a SQLite file, a postgres:// URL, or "off"; undefined = responses.sqlite in the user's
   * data directory.
   */
  readonly responseStore: string | undefined;
  /** How long a stored response lives. */
  readonly responseTtlSeconds: number;
  /** The file the settings came from, if any. */
  readonly configFile: string | undefined;
  /** The profile's scheduler settings with every override applied. */
  readonly scheduler: SchedulerSettings;
}

export const DEFAULTS = {
  host: "127.0.0.1",
  port: 8000,
  autoPort: false,
  forcePort: false,
  profile: "latency_first",
  backend: "auto",
  dtype: "auto",
  weightsDtype: "bf16",
  tensorParallelSize: 1,
  pipelineParallelSize: 1,
  gpuMode: "single",
  largeRequestTokens: 8000,
  largeRequestKvMb: 6000,
  logLevel: "info",
  logFormat: "json",
  drainTimeoutMs: 30_000,
  maxBodyBytes: 8 * 1024 * 1024,
  corsOrigins: [],
  kvCacheBytes: 2 * 1024 ** 3,
  traceSampleRate: 0.03,
  traceSlowMs: 10_000,
  logContent: false,
  metricsVllmNames: false,
  responseTtlSeconds: 30 * 24 * 3600,
} as const satisfies SettingsLayer;

type ValueKind =
  | { kind: "string" }
  | { kind: "boolean" }
  | { kind: "int"; min: number; max: number }
  | { kind: "choice"; choices: readonly string[] }
  | { kind: "list" }
  | { kind: "date" }
  | { kind: "fraction" };

/** One command-line flag of `serve`, with its environment variable and the setting it writes. */
export interface FlagSpec {
  readonly flag: string;
  /** The setting it writes: a ServerConfig key, `scheduler.<field>`, or a command's own option name. */
  readonly key: string;
  readonly value: ValueKind;
  readonly help: string;
  /** Environment variable; undefined when the setting has none. */
  readonly env?: string;
}

function envName(flag: string): string {
  return "GPT_OSS_" + flag.toUpperCase().replaceAll("-", "_");
}

function spec(flag: string, key: FlagSpec["key"], value: ValueKind, help: string, withEnv = true): FlagSpec {
  return { flag, key, value, help, env: withEnv ? envName(flag) : undefined };
}

const STRING: ValueKind = { kind: "string" };
const BOOLEAN: ValueKind = { kind: "boolean" };

/** Every flag of `serve`, in the order `--help` lists them. */
export const SERVE_FLAGS: readonly FlagSpec[] = [
  spec("model", "model", STRING, "20b, 120b, a Hub id (openai/gpt-oss-20b) or a checkpoint directory"),
  spec("host", "host", STRING, "Address to listen on (default 127.0.0.1)"),
  spec("port", "port", { kind: "int", min: 0, max: 65535 }, "Port to listen on (default 8000; 0 = any free port)"),
  spec("auto-port", "autoPort", BOOLEAN, "If the port is busy, take the next free one"),
  spec("force-port", "forcePort", BOOLEAN, "If another gpt-oss-deno server holds the port, stop it first"),
  spec("profile", "profile", { kind: "choice", choices: PROFILE_NAMES }, "Scheduler profile (configs/profiles.json)"),
  spec("backend", "backend", { kind: "choice", choices: BACKEND_CHOICES }, "Compute backend (auto = probe)"),
  spec(
    "dtype",
    "dtype",
    { kind: "choice", choices: DTYPE_CHOICES },
    "GPU weight×activation arithmetic (auto = f16 where supported)",
  ),
  spec(
    "weights-dtype",
    "weightsDtype",
    { kind: "choice", choices: WEIGHTS_DTYPE_CHOICES },
    "Native CPU: q8 = 8-bit matmul weights and activations (faster, not exact)",
  ),
  spec("threads", "threads", { kind: "int", min: 1, max: 4096 }, "Native CPU threads (default: physical cores)"),
  spec(
    "tensor-parallel-size",
    "tensorParallelSize",
    { kind: "int", min: 1, max: 64 },
    "Split the model over N ranks (native or reference backend; threads shared among them)",
  ),
  spec(
    "pipeline-parallel-size",
    "pipelineParallelSize",
    { kind: "int", min: 1, max: 64 },
    "Split the layers over N stages (native or reference backend; threads shared among them)",
  ),
  spec(
    "gpu-mode",
    "gpuMode",
    { kind: "choice", choices: GPU_MODES },
    "single: one device; tensor / pipeline: a group over the devices found; auto: ordinary requests on single-device " +
      "engines, large ones on a tensor-parallel group (with --tensor-parallel-size: the group's size)",
  ),
  spec(
    "large-request-tokens",
    "largeRequestTokens",
    { kind: "int", min: 1, max: 1 << 30 },
    "With --gpu-mode auto: prompts longer than this go to the group (default 8000)",
  ),
  spec(
    "large-request-kv-mb",
    "largeRequestKvMb",
    { kind: "int", min: 1, max: 1 << 30 },
    "With --gpu-mode auto: requests whose KV cache would exceed this many MB go to the group (default 6000)",
  ),
  spec("config", "config", STRING, "Settings file (default configs/server.json)"),
  spec("api-key", "apiKey", STRING, "Require a bearer key on every endpoint but /health (several: comma-separated)"),
  spec("admin-key", "adminKey", STRING, "Key for /admin endpoints"),
  spec("log-level", "logLevel", { kind: "choice", choices: LOG_LEVELS }, "Lowest level that is logged"),
  spec("log-format", "logFormat", { kind: "choice", choices: LOG_FORMATS }, "One JSON object per line, or pretty"),
  spec("served-model-name", "servedModelName", STRING, "Model id reported by the API"),
  spec("max-num-seqs", "scheduler.maxNumSeqs", { kind: "int", min: 1, max: 1 << 20 }, "Sequences per step"),
  spec(
    "max-num-batched-tokens",
    "scheduler.maxNumBatchedTokens",
    { kind: "int", min: 1, max: 1 << 24 },
    "Token budget per step",
  ),
  spec("prefill-chunk-size", "scheduler.prefillChunkSize", { kind: "int", min: 1, max: 1 << 24 }, "Prefill chunk"),
  spec(
    "reasoning-effort",
    "scheduler.defaultReasoningEffort",
    { kind: "choice", choices: REASONING_EFFORTS },
    "Default reasoning effort",
  ),
  spec("drain-timeout-ms", "drainTimeoutMs", { kind: "int", min: 0, max: 3_600_000 }, "Shutdown drain deadline"),
  spec("max-body-bytes", "maxBodyBytes", { kind: "int", min: 1, max: 1 << 30 }, "Largest request body"),
  spec("cors-origins", "corsOrigins", { kind: "list" }, "Comma-separated origins allowed by CORS (off by default)"),
  spec("current-date", "currentDate", { kind: "date" }, "Pin the prompt's current date (YYYY-MM-DD)"),
  spec("model-cache-dir", "modelCacheDir", STRING, "Where the built-in demo model is generated"),
  spec("kv-cache-bytes", "kvCacheBytes", { kind: "int", min: 1, max: 2 ** 50 }, "KV cache budget in bytes"),
  spec("trace-sample-rate", "traceSampleRate", { kind: "fraction" }, "Share of normal traces exported (0..1)"),
  spec("trace-slow-ms", "traceSlowMs", { kind: "int", min: 0, max: 86_400_000 }, "Always export traces this slow"),
  spec("log-content", "logContent", BOOLEAN, "Log prompts and completions"),
  spec("metrics-vllm-names", "metricsVllmNames", BOOLEAN, "Also export queue/running/KV gauges under vLLM's names"),
  spec(
    "response-store",
    "responseStore",
    STRING,
    "Responses API store: a SQLite file, a postgres:// URL, or off (default: responses.sqlite in the data dir)",
  ),
  spec(
    "response-ttl",
    "responseTtlSeconds",
    { kind: "int", min: 1, max: 10 * 365 * 24 * 3600 },
    "Seconds a stored response is kept (default 30 days)",
  ),
];

function describeKind(kind: ValueKind): string {
  switch (kind.kind) {
    case "string":
      return "expected a non-empty string";
    case "boolean":
      return "expected true or false";
    case "int":
      return `expected an integer from ${kind.min} to ${kind.max}`;
    case "choice":
      return `valid choices are ${kind.choices.join(", ")}`;
    case "list":
      return "expected a comma-separated list";
    case "date":
      return "expected a date as YYYY-MM-DD";
    case "fraction":
      return "expected a number from 0 to 1";
  }
}

/** Parses one textual value (from a flag or the environment); `source` names it in the error. */
export function parseValue(spec: FlagSpec, raw: string | boolean, source: string): unknown {
  const fail = () => new UsageError(`Invalid value "${raw}" for ${source}: ${describeKind(spec.value)}`);
  const kind = spec.value;
  if (kind.kind === "boolean") {
    if (typeof raw === "boolean") return raw;
    if (["1", "true", "yes", "on"].includes(raw.toLowerCase())) return true;
    if (["0", "false", "no", "off", ""].includes(raw.toLowerCase())) return false;
    throw fail();
  }
  if (typeof raw === "boolean") throw fail();
  switch (kind.kind) {
    case "string":
      if (raw.length === 0) throw fail();
      return raw;
    case "int": {
      if (!/^-?\d+$/.test(raw.trim())) throw fail();
      const n = Number(raw);
      if (!Number.isSafeInteger(n) || n < kind.min || n > kind.max) throw fail();
      return n;
    }
    case "choice":
      if (!kind.choices.includes(raw)) throw fail();
      return raw;
    case "list":
      return raw.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
    case "date":
      if (!/^\d{4}-\d{2}-\d{2}$/.test(raw) || Number.isNaN(Date.parse(raw + "T00:00:00Z"))) throw fail();
      return raw;
    case "fraction": {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(n) || n < 0 || n > 1) throw fail();
      return n;
    }
  }
}

function setPath(layer: Record<string, unknown>, key: string, value: unknown): void {
  if (key.startsWith("scheduler.")) {
    const scheduler = (layer.scheduler ??= {}) as Record<string, unknown>;
    scheduler[key.slice("scheduler.".length)] = value;
  } else {
    layer[key] = value;
  }
}

function formatZodIssues(error: z.ZodError): string {
  return error.issues.map((issue) => {
    const field = issue.path.length > 0 ? issue.path.join(".") : "(top level)";
    return `field "${field}": ${issue.message}`;
  }).join("; ");
}

/** Parses a settings file's text; throws ConfigFileError naming the file, the field and the problem. */
export function parseSettingsFile(text: string, path: string): SettingsLayer {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigFileError(
      `Invalid config file "${path}": not valid JSON (${(err as Error).message})`,
      path,
      { cause: err },
    );
  }
  const parsed = SettingsLayerSchema.safeParse(json);
  if (!parsed.success) {
    throw new ConfigFileError(`Invalid config file "${path}": ${formatZodIssues(parsed.error)}`, path);
  }
  return parsed.data;
}

/** Parses configs/profiles.json's text. */
export function parseProfiles(text: string, path: string): Profiles {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigFileError(`Invalid profiles file "${path}": not valid JSON`, path, { cause: err });
  }
  const parsed = ProfilesSchema.safeParse(json);
  if (!parsed.success) {
    throw new ConfigFileError(`Invalid profiles file "${path}": ${formatZodIssues(parsed.error)}`, path);
  }
  return parsed.data;
}

/** Inputs of {@link loadServerConfig}; main.ts supplies the real environment and file reader. */
export interface ConfigSources {
  /** Flag values already split by the CLI parser: flag name → raw value. */
  readonly flags: Readonly<Record<string, string | boolean>>;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Reads a text file; returns undefined when it does not exist. */
  readonly readTextFile: (path: string) => string | undefined;
  /** The default settings file, read when neither `--config` nor GPT_OSS_CONFIG is given (if it exists). */
  readonly defaultConfigPath: string;
  readonly profilesPath: string;
}

/**
 * Builds the ServerConfig from defaults, file, environment and flags. Throws UsageError or ConfigFileError.
 * Longer than 80 lines: it lists every setting once in the frozen result, one line per field.
 */
export function loadServerConfig(sources: ConfigSources): ServerConfig {
  const envLayer: Record<string, unknown> = {};
  const flagLayer: Record<string, unknown> = {};
  let configPath: string | undefined;
  let explicitConfig = false;
  for (const flagSpec of SERVE_FLAGS) {
    const envValue = flagSpec.env ? sources.env[flagSpec.env] : undefined;
    const flagValue = sources.flags[flagSpec.flag];
    if (flagSpec.key === "config") {
      const raw = flagValue ?? envValue;
      if (raw !== undefined) {
        configPath = parseValue(flagSpec, raw, flagValue !== undefined ? "--config" : flagSpec.env!) as string;
        explicitConfig = true;
      }
      continue;
    }
    if (envValue !== undefined && envValue !== "") {
      setPath(envLayer, flagSpec.key, parseValue(flagSpec, envValue, `environment variable ${flagSpec.env}`));
    }
    if (flagValue !== undefined) {
      setPath(flagLayer, flagSpec.key, parseValue(flagSpec, flagValue, `--${flagSpec.flag}`));
    }
  }

  configPath ??= sources.defaultConfigPath;
  const fileText = sources.readTextFile(configPath);
  if (fileText === undefined && explicitConfig) {
    throw new ConfigFileError(`Cannot read config file "${configPath}": no such file`, configPath);
  }
  const fileLayer = fileText === undefined ? {} : parseSettingsFile(fileText, configPath);

  const profilesText = sources.readTextFile(sources.profilesPath);
  if (profilesText === undefined) {
    throw new ConfigFileError(
      `Cannot read profiles file "${sources.profilesPath}": no such file`,
      sources.profilesPath,
    );
  }
  const profiles = parseProfiles(profilesText, sources.profilesPath);

  const layers = [DEFAULTS as SettingsLayer, fileLayer, envLayer as SettingsLayer, flagLayer as SettingsLayer];
  const merged: Record<string, unknown> = {};
  let schedulerOverrides: Record<string, unknown> = {};
  for (const layer of layers) {
    for (const [key, value] of Object.entries(layer)) {
      if (key === "scheduler") schedulerOverrides = { ...schedulerOverrides, ...(value as object) };
      else if (value !== undefined) merged[key] = value;
    }
  }
  const final = merged as SettingsLayer & typeof DEFAULTS;
  const scheduler = Object.freeze({ ...profiles[final.profile], ...schedulerOverrides }) as SchedulerSettings;
  return Object.freeze({
    model: final.model,
    host: final.host,
    port: final.port,
    autoPort: final.autoPort,
    forcePort: final.forcePort,
    profile: final.profile,
    backend: final.backend,
    dtype: final.dtype,
    weightsDtype: final.weightsDtype,
    threads: final.threads,
    tensorParallelSize: final.tensorParallelSize,
    pipelineParallelSize: final.pipelineParallelSize,
    gpuMode: final.gpuMode,
    largeRequestTokens: final.largeRequestTokens,
    largeRequestKvMb: final.largeRequestKvMb,
    apiKey: final.apiKey,
    adminKey: final.adminKey,
    logLevel: final.logLevel,
    logFormat: final.logFormat,
    servedModelName: final.servedModelName,
    drainTimeoutMs: final.drainTimeoutMs,
    maxBodyBytes: final.maxBodyBytes,
    corsOrigins: Object.freeze([...final.corsOrigins]),
    currentDate: final.currentDate,
    modelCacheDir: final.modelCacheDir,
    kvCacheBytes: final.kvCacheBytes,
    traceSampleRate: final.traceSampleRate,
    traceSlowMs: final.traceSlowMs,
    logContent: final.logContent,
    metricsVllmNames: final.metricsVllmNames,
    responseStore: final.responseStore,
    responseTtlSeconds: final.responseTtlSeconds,
    configFile: fileText === undefined ? undefined : configPath,
    scheduler,
  });
}

/** The config with secrets replaced, for logs and the debug bundle. */
export function redactConfig(config: ServerConfig): Record<string, unknown> {
  return {
    ...config,
    apiKey: config.apiKey === undefined ? undefined : "[redacted]",
    adminKey: config.adminKey === undefined ? undefined : "[redacted]",
    responseStore: config.responseStore?.replace(/\/\/([^:/@]+):[^@]*@/, "//$1:[redacted]@"),
  };
}
