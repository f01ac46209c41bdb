/**
 * Composition root: the only reader of Deno.args and Deno.env. Parses the command line and settings once,
 * builds the modules and wires them together.
 */
import { createApp } from "./api/app.ts";
import type { ServingState } from "./api/serving.ts";
import type { Backend } from "./backends/backend.ts";
import { buildNativeLibrary, nativeLibraryExists } from "./backends/native/library.ts";
import { ensureRuntimeDir } from "./backends/webgpu/device.ts";
import { BackendSelector, nativeOptionsFromEnv, probeBackends, type ProbeResult } from "./backends/select.ts";
import { helpText, parseCommandLine } from "./cli.ts";
import { DEFAULTS, loadServerConfig, redactConfig, type ServerConfig } from "./config.ts";
import { Engine } from "./engine/engine.ts";
import type { EngineApi } from "./engine/engine_api.ts";
import { kvBytesPerPosition } from "./engine/kv_sizing.ts";
import { RoutingEngine } from "./engine/router.ts";
import { CheckpointError, ConfigFileError, PortBusyError, UsageError } from "./errors.ts";
import { Tokenizer } from "./harmony/tokenizer.ts";
import { ASSISTANT_STOP_IDS } from "./harmony/tokens.ts";
import { Checkpoint, modelFootprint } from "./checkpoint/checkpoint.ts";
import { chooseModel, type ModelChoice } from "./checkpoint/choose.ts";
import { createModel, type Model } from "./model/gpt_oss.ts";
import { loadWeights } from "./checkpoint/load_weights.ts";
import { loadPipelineModel, loadTensorParallelModel } from "./checkpoint/load_sharded.ts";
import { createNativeBackend, CUDA_LIBRARY_PATH, loadNativeLibrary } from "./backends/native/native_backend.ts";
import { listCudaDevices, NcclCommunicator } from "./backends/native/nccl.ts";
import { listDevices } from "./backends/devices.ts";
import { type GpuMode, planLayout } from "./engine/layout.ts";
import { type Preset, presetConfig } from "./tools/synthetic.ts";
import { createReferenceBackend } from "./backends/reference/reference_backend.ts";
import { createLogger, type Logger } from "./obs/logger.ts";
import { createMetrics, type Metrics } from "./obs/metrics.ts";
import { createTracing } from "./obs/tracing.ts";
import { createOtlpExporter, type OtlpConfig, otlpConfigFromEnv } from "./obs/otlp.ts";
import { createProgress, startTicker } from "./obs/progress.ts";
import { acquirePort } from "./server/ports.ts";
import { openResponseStore, PURGE_INTERVAL_MS, type ResponseStore } from "./store/response_store.ts";
import { VERSION } from "./version.ts";

const ROOT = new URL("..", import.meta.url);

function readTextFileOrUndefined(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw new ConfigFileError(`Cannot read "${path}": ${(err as Error).message}`, path, { cause: err });
  }
}

/** Prints a one-line error and exits with status 2 (bad usage, bad settings, busy port, missing model). */
function fail(message: string): never {
  console.error(`error: ${message.replaceAll("\n", " ")}`);
  Deno.exit(2);
}

function userCacheDir(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  return `${xdg || `${Deno.env.get("HOME") ?? "."}/.cache`}/gpt-oss-deno`;
}

function terminalWriter(): ((text: string) => void) | undefined {
  if (!Deno.stderr.isTerminal()) return undefined;
  const encoder = new TextEncoder();
  return (text) => Deno.stderr.writeSync(encoder.encode(text));
}

/** Where the model runs: a group (tensor or pipeline) over some devices, single engines on others. */
interface Layout {
  readonly tensor: number;
  readonly pipeline: number;
  /** Device indices of the group's ranks (CUDA) and of the single-device engines beside it (--gpu-mode auto). */
  readonly group: readonly number[];
  readonly singles: readonly number[];
}

/**
 * The layout: from --tensor-parallel-size / --pipeline-parallel-size when given (devices 0..N-1, with a single engine
 * on device 0 under --gpu-mode auto), else, for --gpu-mode tensor|pipeline|auto, planned from the devices found.
 */
function layoutFor(config: ServerConfig, checkpoint: Checkpoint, backend: Backend, logger: Logger): Layout {
  const { tensorParallelSize: tensor, pipelineParallelSize: pipeline, gpuMode } = config;
  if (tensor > 1 && pipeline > 1) {
    fail("--tensor-parallel-size and --pipeline-parallel-size cannot both be above 1 (yet)");
  }
  const upTo = (n: number) => Array.from({ length: n }, (_, i) => i);
  if (tensor > 1 || pipeline > 1) {
    return { tensor, pipeline, group: upTo(Math.max(tensor, pipeline)), singles: gpuMode === "auto" ? [0] : [] };
  }
  const single = { tensor: 1, pipeline: 1, group: [], singles: [] };
  if (gpuMode === "single") return single;
  const devices = listDevices().devices.filter((d) => (d.kind === "cuda") === (backend.name === "cuda"));
  const need = { weightBytes: modelFootprint(checkpoint.config).weightBytes, kvCacheBytes: config.kvCacheBytes };
  const plan = planLayout(devices, checkpoint.config, need, gpuMode);
  logger.info("layout.plan", { mode: plan.mode, singles: plan.singles, group: plan.group, notes: plan.notes });
  if (!plan.group) return single;
  const index = (id: string) => devices.find((d) => d.id === id)!.index;
  const group = plan.group.devices.map(index);
  return {
    tensor: plan.group.kind === "tensor" ? group.length : 1,
    pipeline: plan.group.kind === "pipeline" ? group.length : 1,
    group,
    singles: plan.singles.map(index),
  };
}

/**
 * A group of `devices.length` backends of the selected kind, the selected one disposed: CPU contexts sharing the
 * threads, or one CUDA context per device.
 */
function groupBackends(
  config: ServerConfig,
  selected: Backend,
  devices: readonly number[],
  disposeSelected = true,
): Backend[] {
  const size = devices.length;
  if (selected.name === "reference") return Array.from({ length: size }, () => createReferenceBackend());
  if (selected.name === "cuda") return cudaRanks(selected, devices, disposeSelected);
  if (selected.name !== "native") {
    fail(`Tensor and pipeline parallelism run on the native or reference backend here (got ${selected.name})`);
  }
  if (disposeSelected) selected.dispose();
  const threads = Math.max(1, Math.floor((config.threads ?? navigator.hardwareConcurrency) / size));
  return Array.from({ length: size }, () =>
    createNativeBackend({
      ...nativeOptionsFromEnv(Deno.env.toObject()),
      numThreads: threads,
      weights: config.weightsDtype,
    }));
}

/** One CUDA context per device (the selected context is device 0's). */
function cudaRanks(selected: Backend, devices: readonly number[], disposeSelected: boolean): Backend[] {
  const library = loadNativeLibrary({ path: CUDA_LIBRARY_PATH });
  const found = listCudaDevices(library).length;
  if (found <= Math.max(...devices)) fail(`A group on CUDA devices ${devices.join(", ")} needs them; ${found} found`);
  if (disposeSelected) selected.dispose();
  const options = { ...nativeOptionsFromEnv(Deno.env.toObject()), library, name: "cuda" as const };
  return devices.map((device) => createNativeBackend({ ...options, device }));
}

/** The model on the selected backend, or on a tensor-parallel / pipeline group of backends of its kind. */
async function buildModel(
  checkpoint: Checkpoint,
  config: ServerConfig,
  backend: Backend,
  layout: Layout,
  logger: Logger,
): Promise<Model> {
  if (layout.tensor > 1) {
    const ranks = groupBackends(config, backend, layout.group);
    // GPU ranks all-reduce over NCCL on the devices; CPU ranks in host memory.
    const comm = ranks[0].name === "cuda" ? await NcclCommunicator.create(ranks) : undefined;
    const model = loadTensorParallelModel(checkpoint, ranks, comm);
    logger.info("model.tensor_parallel", { ranks: layout.tensor, transport: comm?.transport ?? "host" });
    return model;
  }
  if (layout.pipeline > 1) {
    const model = loadPipelineModel(checkpoint, groupBackends(config, backend, layout.group));
    if (model.parallel?.kind === "pipeline") {
      logger.info("model.pipeline_parallel", { stages: model.parallel.stages.map((m) => m.config.numHiddenLayers) });
    }
    return model;
  }
  const progress = createProgress({ event: "model.load", logger, terminal: terminalWriter() });
  const weights = await loadWeights(checkpoint, backend, (p) => progress(p.bytesDone, p.bytesTotal));
  return createModel(checkpoint.config, weights, backend);
}

/**
 * The engine for a model. With `--gpu-mode auto` and a tensor-parallel group, also a single-rank engine: ordinary
 * requests go there and large ones (`--large-request-tokens`, `--large-request-kv-mb`) to the group (engine/router.ts).
 */
async function engineFor(
  model: Model,
  checkpoint: Checkpoint,
  config: ServerConfig,
  layout: Layout,
  logger: Logger,
  metrics: Metrics,
): Promise<EngineApi> {
  const make = (m: Model, name: string) =>
    new Engine(m, {
      limits: config.scheduler,
      maxQueuedRequests: config.scheduler.maxQueuedRequests,
      maxQueuedTokens: config.scheduler.maxQueuedTokens,
      maxModelLen: m.config.maxPositionEmbeddings,
      kvCacheBytes: config.kvCacheBytes,
      logger: logger.child({ component: "engine", engine: name }),
    });
  if (layout.singles.length === 0 || model.parallel?.kind !== "tensor") return make(model, "main");
  const ranks = model.parallel.ranks;
  const kind = ranks[0].backend.name === "cuda" ? "cuda" : "cpu";
  const singles = await Promise.all(layout.singles.map(async (device, i) => {
    // The selected backend serves the first single engine on the CPU; GPUs get a context on their device.
    const backend = groupBackends(config, ranks[0].backend, [device], false)[0];
    const single = createModel(checkpoint.config, await loadWeights(checkpoint, backend), backend);
    return { name: layout.singles.length > 1 ? `single${i}` : "single", devices: [`${kind}:${device}`], model: single };
  }));
  const perPosition = kvBytesPerPosition(checkpoint.config, 4);
  const groupDevices = kind === "cuda" ? layout.group.map((d) => `cuda:${d}`) : ranks.map((_, i) => `cpu:rank${i}`);
  logger.info("routing", {
    singles: singles.map((s) => s.devices[0]),
    group: groupDevices,
    large_request_tokens: config.largeRequestTokens,
    large_request_kv_mb: config.largeRequestKvMb,
  });
  return new RoutingEngine({
    singles: singles.map((s) => ({ name: s.name, devices: s.devices, engine: make(s.model, s.name) })),
    group: { name: `tp${ranks.length}`, devices: groupDevices, engine: make(model, "group") },
    largeRequestTokens: config.largeRequestTokens,
    largeRequestKvMb: config.largeRequestKvMb,
    kvBytesPerToken: perPosition.full + perPosition.sliding,
    onRoute: (lane, reason) => metrics.countRoute(lane, reason),
  });
}

/** Loads the chosen checkpoint onto the backend and starts the engine; updates `state` as it goes. */
async function loadModel(
  choice: ModelChoice,
  config: ServerConfig,
  state: ServingState,
  logger: Logger,
  metrics: Metrics,
  selection: { backend: Backend; probe: ProbeResult },
) {
  const started = performance.now();
  const { backend, probe } = selection;
  state.backend = backend.name;
  logger.info("backend.select", { backend: backend.name, reason: probe.reason, dtype: probe.dtype });
  const tokenizer = new Tokenizer();
  const checkpoint = Checkpoint.open(choice.dir, { mmap: true, populate: true });
  try {
    const layout = layoutFor(config, checkpoint, backend, logger);
    const model = await buildModel(checkpoint, config, backend, layout, logger);
    const stops = model.config.vocabSize > ASSISTANT_STOP_IDS[0]
      ? [...ASSISTANT_STOP_IDS]
      : model.config.eosTokenId !== undefined
      ? [model.config.eosTokenId]
      : [];
    const engine = await engineFor(model, checkpoint, config, layout, logger, metrics);
    state.model = {
      modelId: state.modelId!,
      backend: backend.name,
      engine,
      tokenizer,
      createdAt: Math.floor(Date.now() / 1000),
      completionStopIds: stops,
      demo: choice.demo,
    };
    metrics.setLabels({ model: state.modelId!, backend: backend.name, profile: config.profile });
    metrics.setSources({
      engine: () => {
        const { stats, memory } = engine.snapshot();
        return {
          running: stats.running,
          waiting: stats.waiting,
          preemptions: stats.preemptions,
          admission: stats.admission,
          kvUsage: memory.blocks.used / Math.max(1, memory.blocks.total),
          prefixQueriedTokens: memory.prefixCache.queriedTokens,
          prefixHitTokens: memory.prefixCache.hitTokens,
          prefixMisses: memory.prefixCache.missBlocks,
          blockSize: memory.blockSize,
        };
      },
      memory: () => {
        // CPU backends report process memory against the machine's.
        const usage = Deno.memoryUsage();
        const total = Deno.systemMemoryInfo().total;
        return [{ device: "cpu", usedBytes: usage.rss, totalBytes: total, utilization: usage.rss / total }];
      },
    });
    state.status = "ready";
    logger.info("model.load", {
      model: state.modelId,
      dir: choice.dir,
      bytes: checkpoint.totalBytes(),
      ms: Math.round(performance.now() - started),
    });
  } finally {
    checkpoint.close();
  }
}

/** Builds the CPU library when it is missing and a backend may need it (logged; failures leave it unavailable). */
async function ensureNativeLibrary(config: ServerConfig, logger: Logger): Promise<void> {
  if (nativeLibraryExists() || !["auto", "native"].includes(config.backend)) return;
  logger.info("native.build", { message: "build/libgptoss_cpu.so is missing: building it (deno task build:native)" });
  const started = performance.now();
  const stop = startTicker("native.build", terminalWriter());
  try {
    await buildNativeLibrary();
    stop();
    logger.info("native.build.done", { ms: Math.round(performance.now() - started) });
  } catch (err) {
    stop();
    logger.warn("native.build.failed", { error: (err as Error).message });
  }
}

/** Probes once, before listening: a backend named on the command line that cannot run here fails fast. */
async function probeForServe(config: ServerConfig, selector: BackendSelector): Promise<ProbeResult[]> {
  const probes = await selector.probe();
  if (config.backend !== "auto" && !probes.some((p) => p.name === config.backend && p.available)) {
    try {
      await selector.select(config.backend, probes);
    } catch (err) {
      fail((err as Error).message);
    }
  }
  return probes;
}

async function chooseCheckpoint(config: ServerConfig, logger: Logger): Promise<ModelChoice> {
  try {
    return await chooseModel({
      model: config.model,
      defaultModel: config.scheduler.defaultModel,
      env: { HF_HUB_CACHE: Deno.env.get("HF_HUB_CACHE"), HF_HOME: Deno.env.get("HF_HOME"), HOME: Deno.env.get("HOME") },
      cacheDir: config.modelCacheDir ?? userCacheDir(),
      generateDemo: async (dir) => {
        const { generateCheckpoint } = await import("./tools/synthetic.ts");
        await generateCheckpoint("tiny-random", dir, { seed: 0 });
      },
      logger,
    });
  } catch (err) {
    if (err instanceof CheckpointError) fail(err.message);
    throw err;
  }
}

/** The backend the model fits on (headers only: nothing is read yet). */
async function selectFitting(
  config: ServerConfig,
  choice: ModelChoice,
  selector: BackendSelector,
  probes: ProbeResult[],
): Promise<{ backend: Backend; probe: ProbeResult }> {
  try {
    const header = Checkpoint.open(choice.dir);
    const need = modelFootprint(header.config);
    header.close();
    return await selector.select(config.backend, probes, { need, kvCacheBytes: config.kvCacheBytes }, {
      dtype: config.dtype,
      native: {
        ...nativeOptionsFromEnv(Deno.env.toObject()),
        numThreads: config.threads,
        weights: config.weightsDtype,
      },
    });
  } catch (err) {
    fail((err as Error).message);
  }
}

/** The Responses API store `--response-store` names (default: a SQLite file in the data dir), purged in the background. */
async function openStore(config: ServerConfig, logger: Logger): Promise<ResponseStore | undefined> {
  if (config.responseStore === "off") return undefined;
  const home = Deno.env.get("HOME");
  const dataHome = Deno.env.get("XDG_DATA_HOME") ?? (home ? `${home}/.local/share` : `${Deno.cwd()}/.data`);
  const spec = config.responseStore ?? `${dataHome}/gpt-oss-deno/responses.sqlite`;
  let store: ResponseStore;
  try {
    store = await openResponseStore(spec);
  } catch (err) {
    fail(`Cannot open the response store "${redactConfig(config).responseStore ?? spec}": ${(err as Error).message}`);
  }
  logger.info("responses.store", { kind: store.kind, ...(store.kind === "sqlite" ? { path: spec } : {}) });
  const timer = setInterval(() => {
    store.purgeExpired(Date.now()).then(
      (n) => n > 0 && logger.info("responses.purged", { count: n }),
      (err) => logger.warn("responses.purge_failed", { error: err }),
    );
  }, PURGE_INTERVAL_MS);
  Deno.unrefTimer(timer);
  return store;
}

/**
 * SIGTERM / SIGINT: /health and /ready turn 503 "draining" at once (balancers stop sending) while the listener stays
 * open; new work gets 503 + Retry-After; once the engine is idle (or the drain deadline passes) the server shuts
 * down, letting open responses finish, spans are flushed, and the process exits 0.
 */
function onSignals(
  config: ServerConfig,
  logger: Logger,
  server: Deno.HttpServer,
  state: ServingState,
  flush: () => Promise<void>,
) {
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    const wasReady = state.status === "ready";
    state.status = "draining";
    logger.info("server.drain", { signal, drainTimeoutMs: config.drainTimeoutMs });
    const deadline = new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), config.drainTimeoutMs));
    const idle = (async () => {
      const engine = wasReady ? state.model?.engine : undefined;
      for (;;) {
        const stats = engine?.snapshot().stats;
        if (!stats || stats.running + stats.waiting === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await server.shutdown();
      return "drained" as const;
    })();
    const outcome = await Promise.race([idle, deadline]);
    await Promise.race([flush(), new Promise((resolve) => setTimeout(resolve, 5000))]);
    logger.info("server.stop", { outcome });
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
}

async function serve(config: ServerConfig, logger: Logger): Promise<void> {
  let otlp: OtlpConfig | undefined;
  try {
    otlp = otlpConfigFromEnv(Deno.env.toObject());
  } catch (err) {
    fail((err as Error).message);
  }
  await ensureNativeLibrary(config, logger);
  const selector = new BackendSelector();
  const probes = await probeForServe(config, selector);
  const port = await acquirePort({
    host: config.host,
    port: config.port,
    autoPort: config.autoPort,
    forcePort: config.forcePort,
    logger,
  });
  const choice = await chooseCheckpoint(config, logger);
  const selection = await selectFitting(config, choice, selector, probes);
  await selector.dispose(); // the probe's WebGPU device, unless the chosen backend runs on it
  const state: ServingState = {
    status: "loading",
    modelId: config.servedModelName ?? choice.modelId,
    backend: undefined,
  };
  const metrics = createMetrics({ vllmNames: config.metricsVllmNames });
  const tracing = createTracing({
    exporter: otlp ? await createOtlpExporter(otlp) : undefined,
    serviceName: Deno.env.get("OTEL_SERVICE_NAME") ?? "gpt-oss-deno",
    version: VERSION,
    sampleRate: config.traceSampleRate,
    slowMs: config.traceSlowMs,
  });
  logger.info("tracing", {
    enabled: tracing.enabled,
    ...(otlp ? { protocol: otlp.protocol, endpoint: otlp.url } : {}),
    sample_rate: config.traceSampleRate,
    slow_ms: config.traceSlowMs,
  });
  const responseStore = await openStore(config, logger);
  const app = createApp({
    config,
    logger,
    state,
    responseStore,
    startedAtMs: Date.now(),
    memoryUsage: () => Deno.memoryUsage(),
    tracer: tracing.tracer,
    metrics,
    debugInfo: () => ({
      probe: probes,
      device: {
        os: Deno.build.os,
        arch: Deno.build.arch,
        cpus: navigator.hardwareConcurrency,
        memory: Deno.systemMemoryInfo(),
      },
      tracing: { enabled: tracing.enabled, decisions: tracing.sampler?.decisions ?? null },
    }),
  });
  const server = Deno.serve({
    hostname: config.host,
    port,
    onListen: (addr) => logger.info("server.listen", { host: addr.hostname, port: addr.port, pid: Deno.pid }),
  }, app.fetch);
  onSignals(config, logger, server, state, async () => {
    await tracing.shutdown();
    await responseStore?.close();
  });
  loadModel(choice, config, state, logger, metrics, selection).catch((err) => {
    state.status = "failed";
    state.error = (err as Error).message;
    logger.error("model.load_failed", { error: err });
  });
  await server.finished;
}

async function makeModel(flags: Readonly<Record<string, string | boolean>>): Promise<void> {
  const preset = flags.preset as Preset | undefined;
  const out = flags.out as string | undefined;
  if (!preset) fail("Missing --preset: valid choices are tiny, mini, 20b, 120b, tiny-random");
  if (!out) fail("Missing --out: the directory to write the checkpoint to");
  const seed = flags.seed === undefined ? 0 : Number(flags.seed);
  if (!Number.isSafeInteger(seed) || seed < 0) fail(`Invalid value "${flags.seed}" for --seed: expected an integer`);
  const logger = createLogger({ level: "info", format: Deno.stderr.isTerminal() ? "pretty" : "json" });
  const progress = createProgress({ event: "make_model", logger, terminal: terminalWriter() });
  const started = performance.now();
  const { generateCheckpoint } = await import("./tools/synthetic.ts");
  await generateCheckpoint(preset, out, { seed, onProgress: progress });
  logger.info("make_model.done", { preset, out, seed, ms: Math.round(performance.now() - started) });
}

async function main(): Promise<void> {
  let commandLine;
  try {
    commandLine = parseCommandLine(Deno.args);
  } catch (err) {
    if (err instanceof UsageError) fail(err.message);
    throw err;
  }
  if (commandLine.help) {
    console.log(helpText(commandLine.command));
    return;
  }
  if (commandLine.version) {
    console.log(`gpt-oss-deno ${VERSION}`);
    return;
  }
  if (commandLine.command === "make-model") return await makeModel(commandLine.flags);
  ensureRuntimeDir();
  if (commandLine.command === "probe") {
    const candidates = await probeBackends();
    const found = listDevices();
    const preset = (commandLine.flags.model as Preset | undefined) ?? "20b";
    const mode = (commandLine.flags["gpu-mode"] as GpuMode | undefined) ?? "auto";
    const model = presetConfig(preset);
    const need = { weightBytes: modelFootprint(model).weightBytes, kvCacheBytes: DEFAULTS.kvCacheBytes };
    const plan = { model: preset, ...need, ...planLayout(found.devices, model, need, mode) };
    const decision = candidates.find((c) => c.available)?.name;
    console.log(JSON.stringify({ decision, candidates, devices: found.devices, cuda: found.cuda, plan }, null, 2));
    return;
  }
  let config: ServerConfig;
  try {
    config = loadServerConfig({
      flags: commandLine.flags,
      env: Deno.env.toObject(),
      readTextFile: readTextFileOrUndefined,
      defaultConfigPath: new URL("configs/server.json", ROOT).pathname,
      profilesPath: new URL("configs/profiles.json", ROOT).pathname,
    });
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigFileError) fail(err.message);
    throw err;
  }
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  try {
    await serve(config, logger);
  } catch (err) {
    if (err instanceof PortBusyError) fail(err.message);
    throw err;
  }
}

if (import.meta.main) await main();
