/**
 * Prometheus metrics (prom-client). The registry is created in main.ts and passed in; nothing here is global.
 * Latency histograms carry trace_id exemplars, shown when scraped as `application/openmetrics-text`.
 */
import client from "prom-client";

const { Counter, Gauge, Histogram, Registry } = client;
type Labels = Record<string, string>;

/** Labels on every series. */
export interface MetricLabels {
  readonly model: string;
  readonly backend: string;
  readonly profile: string;
}

/** Engine numbers read at scrape time. */
export interface EngineSnapshot {
  running: number;
  waiting: number;
  preemptions: number;
  admission: Record<string, number>;
  kvUsage: number;
  prefixQueriedTokens: number;
  prefixHitTokens: number;
  prefixMisses: Record<string, number>;
  /** Tokens per KV block (the prefix cache's granularity, for prefix-aware routers). */
  blockSize: number;
}

/** Device memory read at scrape time (CPU backends report process memory). */
export interface DeviceMemory {
  device: string;
  usedBytes: number;
  totalBytes: number;
  utilization: number;
}

/** Everything the server records. */
export interface Metrics {
  readonly registry: client.Registry;
  /** Sets the labels once the model is known. */
  setLabels(labels: MetricLabels): void;
  /** Supplies engine and device readings for scrapes. */
  setSources(sources: { engine?: () => EngineSnapshot; memory?: () => DeviceMemory[] }): void;
  observeRequest(r: {
    ttftSeconds?: number;
    e2eSeconds: number;
    queueSeconds?: number;
    interTokenSeconds: readonly number[];
    outputTokens: number;
    promptTokens: number;
    tokensByChannel: Record<string, number>;
    finishReason: string;
    traceId?: string;
  }): void;
  countStatus(status: number): void;
  countRecovery(kind: string): void;
  /** A reasoning budget closed an analysis message (structured outputs). */
  countForcedReasoningClose(): void;
  /** Large-request routing sent a request to `lane` for `reason`. */
  countRoute(lane: string, reason: string): void;
  /** Text for a scrape; `openMetrics` selects the format (exemplars only there). */
  render(openMetrics: boolean): Promise<{ contentType: string; body: string }>;
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80];

/**
 * Creates the metrics on a new OpenMetrics registry. Longer than 80 lines: the metric definitions are one table
 * (names, help texts, buckets) and read best together; the closures below only feed them.
 */
export function createMetrics(options: { vllmNames?: boolean } = {}): Metrics {
  const registry = new Registry();
  // prom-client's typings fix a registry's format at construction; we switch it per scrape (see render()).
  const setFormat = (type: string) => (registry as unknown as { setContentType(t: string): void }).setContentType(type);
  setFormat(Registry.OPENMETRICS_CONTENT_TYPE);
  let labels: Labels = { model: "", backend: "", profile: "" };
  let engine: (() => EngineSnapshot) | undefined;
  let memory: (() => DeviceMemory[]) | undefined;
  const names = ["model", "backend", "profile"];
  const histogram = (name: string, help: string, buckets = LATENCY_BUCKETS) =>
    new Histogram({ name, help, labelNames: names, buckets, registers: [registry], enableExemplars: true });
  const ttft = histogram("gptoss_time_to_first_token_seconds", "Time to the first generated token");
  const e2e = histogram("gptoss_e2e_request_latency_seconds", "Request latency from arrival to the last token");
  const itl = histogram("gptoss_inter_token_latency_seconds", "Time between consecutive output tokens");
  const queue = histogram("gptoss_request_queue_time_seconds", "Time a request waited before it was scheduled");
  const rate = histogram(
    "gptoss_request_output_tokens_per_second",
    "Output tokens per second of each request",
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
  );
  // Named with `_total` so a counter's samples read the same in both formats (OpenMetrics appends it to the family).
  const counter = (name: string, help: string, extra: string[] = []) =>
    new Counter({ name: `${name}_total`, help, labelNames: [...names, ...extra], registers: [registry] });
  const promptTokens = counter("gptoss_prompt_tokens", "Prompt tokens processed");
  const generated = counter("gptoss_generation_tokens", "Tokens generated");
  const byChannel = counter("gptoss_generation_tokens_by_channel", "Generated tokens by harmony channel", ["channel"]);
  const finished = counter("gptoss_requests_finished", "Requests by finish reason", ["finish_reason"]);
  const statuses = counter("gptoss_http_requests", "HTTP responses by status", ["status"]);
  const recoveries = counter("gptoss_harmony_parser_recoveries", "Harmony parser recoveries by kind", ["kind"]);

  // Engine counters are monotonic totals owned by the engine: add the difference at each scrape.
  const totals = new Map<string, number>();
  const addTotal = (metric: client.Counter, key: string, value: number, extra: Labels = {}) => {
    const previous = totals.get(key) ?? 0;
    if (value > previous) metric.inc({ ...labels, ...extra }, value - previous);
    totals.set(key, value);
  };
  const prefixQueries = counter("gptoss_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache");
  const prefixHits = counter("gptoss_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache");
  const prefixMisses = counter("gptoss_prefix_cache_miss_blocks", "Prefix-cache block misses by reason", ["reason"]);
  const admissions = counter("gptoss_admission_decisions", "Admission decisions", ["decision", "reason"]);
  const preemptions = counter("gptoss_preemptions", "Requests preempted for recompute");
  const routes = counter("gptoss_routing_decisions", "Requests by engine (lane) and routing reason", [
    "lane",
    "reason",
  ]);
  const forcedCloses = counter("gptoss_reasoning_forced_closes", "Analysis messages closed by max_reasoning_tokens");
  const gauge = (name: string, help: string, extra: string[] = []) =>
    new Gauge({ name, help, labelNames: [...names, ...extra], registers: [registry] });
  const running = gauge("gptoss_requests_running", "Requests being generated");
  const waiting = gauge("gptoss_requests_waiting", "Requests waiting to be scheduled");
  const kvUsage = gauge("gptoss_kv_cache_usage_ratio", "Share of KV cache blocks held by requests");
  const memUsed = gauge("gptoss_device_memory_used_bytes", "Device memory used", ["device"]);
  const memTotal = gauge("gptoss_device_memory_total_bytes", "Device memory total", ["device"]);
  const memUtil = gauge("gptoss_device_utilization_ratio", "Device memory utilization", ["device"]);
  const blockSize = gauge("gptoss_kv_cache_block_size", "Tokens per KV cache block (prefix-cache granularity)");
  // The names vLLM exports, for gateways and dashboards that expect them (--metrics-vllm-names).
  const vllm = options.vllmNames
    ? {
      running: new Gauge({
        name: "vllm:num_requests_running",
        help: "Requests being generated",
        labelNames: ["model_name"],
        registers: [registry],
      }),
      waiting: new Gauge({
        name: "vllm:num_requests_waiting",
        help: "Requests waiting",
        labelNames: ["model_name"],
        registers: [registry],
      }),
      kv: new Gauge({
        name: "vllm:kv_cache_usage_perc",
        help: "KV cache usage (0..1)",
        labelNames: ["model_name"],
        registers: [registry],
      }),
      kvOld: new Gauge({
        name: "vllm:gpu_cache_usage_perc",
        help: "KV cache usage (0..1)",
        labelNames: ["model_name"],
        registers: [registry],
      }),
      config: new Gauge({
        name: "vllm:cache_config_info",
        help: "KV cache configuration",
        labelNames: ["model_name", "block_size"],
        registers: [registry],
      }),
    }
    : undefined;

  const refresh = () => {
    if (engine) {
      const s = engine();
      running.set(labels, s.running);
      waiting.set(labels, s.waiting);
      kvUsage.set(labels, s.kvUsage);
      blockSize.set(labels, s.blockSize);
      if (vllm) {
        const model = { model_name: labels.model };
        vllm.running.set(model, s.running);
        vllm.waiting.set(model, s.waiting);
        vllm.kv.set(model, s.kvUsage);
        vllm.kvOld.set(model, s.kvUsage);
        vllm.config.set({ ...model, block_size: String(s.blockSize) }, 1);
      }
      addTotal(prefixQueries, "pq", s.prefixQueriedTokens);
      addTotal(prefixHits, "ph", s.prefixHitTokens);
      for (const [reason, n] of Object.entries(s.prefixMisses)) addTotal(prefixMisses, `pm:${reason}`, n, { reason });
      addTotal(preemptions, "pre", s.preemptions);
      for (const [key, n] of Object.entries(s.admission)) {
        const [decision, reason] = key.split(":");
        addTotal(admissions, `ad:${key}`, n, { decision, reason: reason ?? "" });
      }
    }
    for (const m of memory?.() ?? []) {
      memUsed.set({ ...labels, device: m.device }, m.usedBytes);
      memTotal.set({ ...labels, device: m.device }, m.totalBytes);
      memUtil.set({ ...labels, device: m.device }, m.utilization);
    }
  };

  let scrapes: Promise<unknown> = Promise.resolve();
  return {
    registry,
    setLabels(next) {
      labels = { ...next };
    },
    setSources(sources) {
      engine = sources.engine ?? engine;
      memory = sources.memory ?? memory;
    },
    observeRequest(r) {
      // Histograms with exemplars enabled take the object form of observe() only.
      const exemplarLabels = r.traceId ? { trace_id: r.traceId } : {};
      const observe = (h: client.Histogram, value: number) => h.observe({ labels, value, exemplarLabels });
      if (r.ttftSeconds !== undefined) observe(ttft, r.ttftSeconds);
      observe(e2e, r.e2eSeconds);
      if (r.queueSeconds !== undefined) observe(queue, r.queueSeconds);
      for (const gap of r.interTokenSeconds) observe(itl, gap);
      if (r.outputTokens > 0 && r.e2eSeconds > 0) observe(rate, r.outputTokens / r.e2eSeconds);
      promptTokens.inc(labels, r.promptTokens);
      generated.inc(labels, r.outputTokens);
      for (const [channel, n] of Object.entries(r.tokensByChannel)) if (n > 0) byChannel.inc({ ...labels, channel }, n);
      finished.inc({ ...labels, finish_reason: r.finishReason });
    },
    countStatus(status) {
      statuses.inc({ ...labels, status: String(status) });
    },
    countRecovery(kind) {
      recoveries.inc({ ...labels, kind });
    },
    countForcedReasoningClose() {
      forcedCloses.inc(labels);
    },
    countRoute(lane, reason) {
      routes.inc({ ...labels, lane, reason });
    },
    render(openMetrics) {
      // One registry, two formats: switch the content type for the duration of one scrape, one scrape at a time.
      const result = scrapes.then(async () => {
        refresh();
        setFormat(openMetrics ? Registry.OPENMETRICS_CONTENT_TYPE : Registry.PROMETHEUS_CONTENT_TYPE);
        try {
          return { contentType: registry.contentType as string, body: await registry.metrics() };
        } finally {
          setFormat(Registry.OPENMETRICS_CONTENT_TYPE);
        }
      });
      scrapes = result.catch(() => undefined);
      return result;
    },
  };
}
