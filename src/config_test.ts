import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import { parseCommandLine } from "./cli.ts";
import { type ConfigSources, loadServerConfig, SERVE_FLAGS } from "./config.ts";
import { ConfigFileError, UsageError } from "./errors.ts";

const PROFILES = Deno.readTextFileSync(new URL("../configs/profiles.json", import.meta.url));

function sources(overrides: Partial<ConfigSources> & { files?: Record<string, string> } = {}): ConfigSources {
  const files: Record<string, string> = { "/profiles.json": PROFILES, ...overrides.files };
  return {
    flags: {},
    env: {},
    readTextFile: (path) => files[path],
    defaultConfigPath: "/server.json",
    profilesPath: "/profiles.json",
    ...overrides,
  };
}

function configFromArgs(args: string[], extra: Partial<ConfigSources> & { files?: Record<string, string> } = {}) {
  return loadServerConfig(sources({ ...extra, flags: parseCommandLine(args).flags }));
}

Deno.test("loadServerConfig() without any input gives the documented defaults", () => {
  const config = loadServerConfig(sources());
  assertEquals(config.host, "127.0.0.1");
  assertEquals(config.port, 8000);
  assertEquals(config.profile, "latency_first");
  assertEquals(config.backend, "auto");
  assertEquals(config.scheduler.defaultModel, "20b");
  assertEquals(config.scheduler.defaultReasoningEffort, "low");
  assertEquals(config.model, undefined);
  assertEquals(Object.isFrozen(config), true);
});

Deno.test("every serve flag parses into its setting", () => {
  const cases: Array<[string[], (c: ReturnType<typeof configFromArgs>) => unknown, unknown]> = [
    [["--model", "120b"], (c) => c.model, "120b"],
    [["--host", "0.0.0.0"], (c) => c.host, "0.0.0.0"],
    [["--port", "9123"], (c) => c.port, 9123],
    [["--auto-port"], (c) => c.autoPort, true],
    [["--force-port"], (c) => c.forcePort, true],
    [["--profile", "quality_first"], (c) => c.profile, "quality_first"],
    [["--backend", "reference"], (c) => c.backend, "reference"],
    [["--api-key", "sk-1"], (c) => c.apiKey, "sk-1"],
    [["--admin-key", "adm"], (c) => c.adminKey, "adm"],
    [["--log-level", "debug"], (c) => c.logLevel, "debug"],
    [["--log-format", "pretty"], (c) => c.logFormat, "pretty"],
    [["--served-model-name", "m"], (c) => c.servedModelName, "m"],
    [["--max-num-seqs", "3"], (c) => c.scheduler.maxNumSeqs, 3],
    [["--max-num-batched-tokens", "77"], (c) => c.scheduler.maxNumBatchedTokens, 77],
    [["--prefill-chunk-size", "5"], (c) => c.scheduler.prefillChunkSize, 5],
    [["--reasoning-effort", "high"], (c) => c.scheduler.defaultReasoningEffort, "high"],
    [["--drain-timeout-ms", "1500"], (c) => c.drainTimeoutMs, 1500],
    [["--max-body-bytes", "1024"], (c) => c.maxBodyBytes, 1024],
    [["--cors-origins", "http://a, http://b"], (c) => c.corsOrigins, ["http://a", "http://b"]],
    [["--current-date", "2025-06-28"], (c) => c.currentDate, "2025-06-28"],
    [["--model-cache-dir", "/tmp/x"], (c) => c.modelCacheDir, "/tmp/x"],
    [["--kv-cache-bytes", "1048576"], (c) => c.kvCacheBytes, 1048576],
    [["--dtype", "f16"], (c) => c.dtype, "f16"],
    [["--trace-sample-rate", "0.5"], (c) => c.traceSampleRate, 0.5],
    [["--trace-slow-ms", "250"], (c) => c.traceSlowMs, 250],
    [["--log-content"], (c) => c.logContent, true],
    [["--weights-dtype", "q8"], (c) => c.weightsDtype, "q8"],
    [["--threads", "3"], (c) => c.threads, 3],
    [["--tensor-parallel-size", "2"], (c) => c.tensorParallelSize, 2],
    [["--pipeline-parallel-size", "2"], (c) => c.pipelineParallelSize, 2],
    [["--gpu-mode", "auto"], (c) => c.gpuMode, "auto"],
    [["--large-request-tokens", "100"], (c) => c.largeRequestTokens, 100],
    [["--large-request-kv-mb", "5"], (c) => c.largeRequestKvMb, 5],
    [["--response-store", "/tmp/r.sqlite"], (c) => c.responseStore, "/tmp/r.sqlite"],
    [["--response-ttl", "60"], (c) => c.responseTtlSeconds, 60],
    [["--metrics-vllm-names"], (c) => c.metricsVllmNames, true],
  ];
  const covered = new Set(cases.map(([args]) => args[0].slice(2)));
  for (const spec of SERVE_FLAGS) {
    if (spec.flag === "config") continue; // covered by the file tests below
    assertEquals(covered.has(spec.flag), true, `flag --${spec.flag} has no case`);
  }
  for (const [args, pick, expected] of cases) assertEquals(pick(configFromArgs(args)), expected, args.join(" "));
  const withFile = configFromArgs(["--config", "/other.json"], { files: { "/other.json": '{"port": 1234}' } });
  assertEquals(withFile.port, 1234);
  assertEquals(withFile.configFile, "/other.json");
});

Deno.test("settings follow defaults < file < env < flag", () => {
  const files = { "/server.json": '{"port": 8100, "host": "127.0.0.2", "logLevel": "warn", "backend": "reference"}' };
  const env = { GPT_OSS_PORT: "8200", GPT_OSS_HOST: "127.0.0.3" };
  const config = loadServerConfig(sources({ files, env, flags: parseCommandLine(["--port", "8300"]).flags }));
  assertEquals(config.port, 8300); // flag beats env and file
  assertEquals(config.host, "127.0.0.3"); // env beats file
  assertEquals(config.logLevel, "warn"); // file beats default
  assertEquals(config.backend, "reference");
  assertEquals(config.drainTimeoutMs, 30_000); // default
});

Deno.test("profile fields come from the profile and each can be overridden", () => {
  const quality = configFromArgs(["--profile", "quality_first"]);
  assertEquals(quality.scheduler.defaultModel, "120b");
  assertEquals(quality.scheduler.defaultReasoningEffort, "high");
  const files = {
    "/server.json": '{"profile": "quality_first", "scheduler": {"maxNumSeqs": 2, "defaultModel": "20b"}}',
  };
  const overridden = loadServerConfig(
    sources({ files, env: { GPT_OSS_PREFILL_CHUNK_SIZE: "64" }, flags: { "max-num-seqs": "4" } }),
  );
  assertEquals(overridden.scheduler.maxNumSeqs, 4);
  assertEquals(overridden.scheduler.defaultModel, "20b");
  assertEquals(overridden.scheduler.prefillChunkSize, 64);
  assertEquals(overridden.scheduler.maxNumBatchedTokens, 4096); // untouched profile value
});

Deno.test("bad flag values name the flag, the value and the valid choices", () => {
  const bad: Array<[string[], RegExp]> = [
    [["--port", "abc"], /Invalid value "abc" for --port: expected an integer from 0 to 65535/],
    [["--port", "70000"], /Invalid value "70000" for --port/],
    [["--profile", "fast"], /Invalid value "fast" for --profile: valid choices are latency_first, quality_first/],
    [["--backend", "tpu"], /valid choices are auto, reference, webgpu, native, cuda/],
    [["--log-level", "loud"], /valid choices are debug, info, warn, error/],
    [["--log-format", "xml"], /valid choices are json, pretty/],
    [["--current-date", "2025-13-45"], /expected a date as YYYY-MM-DD/],
    [["--max-num-seqs", "0"], /expected an integer from 1/],
    [["--trace-sample-rate", "2"], /Invalid value "2" for --trace-sample-rate: expected a number from 0 to 1/],
  ];
  for (const [args, pattern] of bad) {
    assertThrows(() => configFromArgs(args), (err: Error) => err instanceof UsageError && pattern.test(err.message));
  }
  assertThrows(() => parseCommandLine(["--nope"]), /Unknown flag "--nope" for "serve": valid flags are/);
  assertThrows(() => parseCommandLine(["--port"]), /Missing value for --port/);
  assertThrows(() => parseCommandLine(["launch"]), /Unknown command "launch": valid commands are serve/);
  assertThrows(
    () => loadServerConfig(sources({ env: { GPT_OSS_PORT: "x" } })),
    /Invalid value "x" for environment variable GPT_OSS_PORT/,
  );
});

Deno.test("bad config files name the file, the field and the problem", () => {
  const cases: Array<[string, RegExp]> = [
    ["{not json", /Invalid config file "\/c.json": not valid JSON/],
    ['{"port": "8000"}', /Invalid config file "\/c.json": field "port": .*number/i],
    ['{"profile": "turbo"}', /field "profile"/],
    ['{"colour": "blue"}', /Unrecognized key.*colour|colour/],
    ['{"scheduler": {"maxNumSeqs": -1}}', /field "scheduler.maxNumSeqs"/],
  ];
  for (const [text, pattern] of cases) {
    assertThrows(
      () => loadServerConfig(sources({ flags: { config: "/c.json" }, files: { "/c.json": text } })),
      (err: Error) => err instanceof ConfigFileError && pattern.test(err.message),
      text,
    );
  }
  assertThrows(
    () => loadServerConfig(sources({ flags: { config: "/missing.json" } })),
    /Cannot read config file "\/missing.json": no such file/,
  );
});
