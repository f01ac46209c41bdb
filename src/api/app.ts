/** The Hono app: routes, middleware and the one error handler. Nothing outside src/api knows HTTP. */
import { createHash, timingSafeEqual } from "node:crypto";
import { trace, type Tracer } from "@opentelemetry/api";
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { cors } from "hono/cors";
import { redactConfig, type ServerConfig } from "../config.ts";
import { InvalidRequestError } from "../errors.ts";
import type { Logger } from "../obs/logger.ts";
import type { Metrics } from "../obs/metrics.ts";
import { SERVER_NAME, VERSION } from "../version.ts";
import { chatCompletions } from "./chat_completions.ts";
import { completions } from "./completions.ts";
import { getModel, listModels } from "./models.ts";
import { HttpError, toOpenAiError } from "./openai_errors.ts";
import { newId, type ServingState } from "./serving.ts";
import {
  type BackgroundRuns,
  cancelResponse,
  createResponse,
  deleteResponse,
  listInputItems,
  type ResponsesDeps,
  retrieveResponse,
} from "./responses.ts";
import { memoryJson, memoryStatsBody, statsBody, statsJson } from "./stats.ts";
import type { ResponseStore } from "../store/response_store.ts";
import { RequestTelemetry } from "./telemetry.ts";
import { detokenize, tokenize } from "./tokenize.ts";

export type { ServingState } from "./serving.ts";

/** Everything the app needs, passed in by main.ts. */
export interface AppDeps {
  readonly config: ServerConfig;
  readonly logger: Logger;
  readonly state: ServingState;
  readonly startedAtMs: number;
  readonly now?: () => number;
  /** Process memory for /memory_stats (main.ts passes Deno.memoryUsage). */
  readonly memoryUsage?: () => { rss: number; heapUsed: number; heapTotal: number; external: number };
  /** Tracer (a no-op one when tracing is off). */
  readonly tracer?: Tracer;
  readonly metrics?: Metrics;
  /** Extra facts for the debug bundle (probe result, device info). */
  readonly debugInfo?: () => Record<string, unknown>;
  /** Where Responses API responses are kept (none: nothing is stored, previous_response_id finds nothing). */
  readonly responseStore?: ResponseStore;
}

type Env = { Variables: { requestId: string; logger: Logger; telemetry: RequestTelemetry } };

/** Paths without a trace (probes and scrapes). */
const UNTRACED = new Set(["/health", "/metrics", "/live", "/ready"]);
/** Paths that still answer while the server drains (probes, scrapes, stats, reads of stored responses). */
const DRAIN_OPEN = /^\/(health|live|ready|metrics|stats|memory_stats)$|^\/v1\/models/;

function digest(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** Constant-time key check (both sides hashed to equal length first). */
function keyMatches(given: string | undefined, expected: string): boolean {
  if (given === undefined) return false;
  return timingSafeEqual(digest(given), digest(expected));
}

/** `--api-key` may list several keys, comma-separated. */
function apiKeys(config: ServerConfig): string[] {
  return (config.apiKey ?? "").split(",").map((k) => k.trim()).filter((k) => k.length > 0);
}

/** Who owns what a request stores: a digest of its key ("" when the server has no keys). */
function ownerOf(config: ServerConfig, authorization: string | undefined): string {
  if (config.apiKey === undefined) return "";
  return digest(bearer(authorization) ?? "").toString("hex").slice(0, 32);
}

function bearer(header: string | undefined): string | undefined {
  const match = /^Bearer\s+(.+)$/i.exec(header ?? "");
  return match?.[1].trim();
}

async function readJson(request: Request): Promise<unknown> {
  const text = await request.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new InvalidRequestError("The request body is not valid JSON");
  }
}

function todayUtc(now: () => number): string {
  return new Date(now()).toISOString().slice(0, 10);
}

/** The methods the app's routes answer on `path` (middleware, registered for every method, excluded). */
function allowedMethods(app: Hono<Env>, path: string): string[] {
  const methods = new Set<string>();
  for (const route of app.routes) {
    if (route.method === "ALL") continue;
    const pattern = route.path.replace(/:\w+\{([^}]+)\}/g, "($1)").replace(/:\w+/g, "[^/]+");
    if (new RegExp(`^${pattern}$`).test(path)) methods.add(route.method);
  }
  if (methods.has("GET")) methods.add("HEAD");
  return [...methods].sort();
}

/** Per-app state the middleware and the server routes share. */
interface AppState {
  inFlight: number;
  readonly recentErrors: Record<string, unknown>[];
  readonly now: () => number;
  readonly tracer: Tracer;
}

/** Builds the app. */
export function createApp(deps: AppDeps): Hono<Env> {
  const app = new Hono<Env>();
  const shared: AppState = {
    inFlight: 0,
    recentErrors: [],
    now: deps.now ?? Date.now,
    tracer: deps.tracer ?? trace.getTracer("gpt-oss-deno"),
  };
  useMiddleware(app, deps, shared);
  openAiRoutes(app, deps, shared);
  serverRoutes(app, deps, shared);
  app.notFound((c) => {
    const allowed = allowedMethods(app, c.req.path);
    if (allowed.length > 0) {
      c.header("allow", allowed.join(", "));
      throw new HttpError(
        405,
        `Method ${c.req.method} is not allowed here (allowed: ${allowed.join(", ")})`,
        "invalid_request_error",
        "method_not_allowed",
      );
    }
    throw new HttpError(404, "Not found", "invalid_request_error", "not_found");
  });
  app.onError((err, c) => {
    const requestId = c.get("requestId") ?? "unknown";
    const response = toOpenAiError(err, requestId);
    const logger = c.get("logger") ?? deps.logger;
    if (response.status >= 500) logger.error("request.error", { error: err, status: response.status });
    else logger.info("request.rejected", { status: response.status, message: response.body.error.message });
    shared.recentErrors.push({
      at: new Date(shared.now()).toISOString(),
      request_id: requestId,
      status: response.status,
      message: response.status >= 500 ? (err as Error).message : response.body.error.message,
    });
    if (shared.recentErrors.length > 50) shared.recentErrors.shift();
    for (const [name, value] of Object.entries(response.headers)) c.header(name, value);
    c.header("x-request-id", requestId);
    return c.json(response.body, response.status as 400);
  });
  return app;
}

/** Request id, telemetry and logging per request; CORS; the API key; the body limit. */
function useMiddleware(app: Hono<Env>, deps: AppDeps, shared: AppState): void {
  const { config } = deps;
  app.use("*", async (c, next) => {
    const requestId = c.req.header("x-request-id") || newId("req-");
    c.set("requestId", requestId);
    if (UNTRACED.has(c.req.path)) {
      c.set("logger", deps.logger.child({ request_id: requestId }));
      await next();
      c.header("x-request-id", requestId);
      return;
    }
    const span = `${c.req.method} ${c.req.path}`;
    const telemetry = new RequestTelemetry(shared.tracer, deps.metrics, deps.logger, requestId, span);
    telemetry.setAttributes({ "http.request.method": c.req.method, "url.path": c.req.path });
    c.set("telemetry", telemetry);
    c.set("logger", telemetry.logger);
    telemetry.logger.info("request.start", { method: c.req.method, path: c.req.path });
    shared.inFlight++;
    try {
      await next();
    } finally {
      shared.inFlight--;
      c.header("x-request-id", requestId);
      telemetry.end(c.res.status, c.error);
    }
  });
  if (config.corsOrigins.length > 0) {
    app.use("*", cors({ origin: [...config.corsOrigins], exposeHeaders: ["x-request-id", "retry-after"] }));
  }
  app.use("*", async (c, next) => {
    if (deps.state.status !== "draining" || DRAIN_OPEN.test(c.req.path) || c.req.method === "GET") return await next();
    const message = "The server is shutting down: retry on another replica";
    throw new HttpError(503, message, "server_error", "draining", null, { "retry-after": "5" });
  });
  app.use("*", async (c, next) => {
    if (config.apiKey === undefined || c.req.path === "/health") return await next();
    const given = bearer(c.req.header("authorization"));
    // Every key is compared (no early exit), so timing does not tell which one matched.
    if (!apiKeys(config).map((key) => keyMatches(given, key)).includes(true)) {
      throw new HttpError(401, "Missing or invalid API key", "authentication_error", "invalid_api_key");
    }
    await next();
  });
  app.use(
    "*",
    bodyLimit({
      maxSize: config.maxBodyBytes,
      onError: () => {
        throw new HttpError(
          413,
          `The request body is larger than the limit of ${config.maxBodyBytes} bytes`,
          "invalid_request_error",
          "request_too_large",
        );
      },
    }),
  );
}

/** The OpenAI-compatible endpoints (and vLLM's tokenize / detokenize). */
function openAiRoutes(app: Hono<Env>, deps: AppDeps, shared: AppState): void {
  const { config, state } = deps;
  const today = () => todayUtc(shared.now);
  app.get("/v1/models", (c) => c.json(listModels(state)));
  app.get("/v1/models/:id{.+}", (c) => c.json(getModel(state, c.req.param("id"))));
  app.post("/v1/chat/completions", async (c) => {
    const json = await readJson(c.req.raw);
    return chatCompletions(json, c.req.raw.signal, {
      config,
      state,
      logger: c.get("logger"),
      today,
      telemetry: c.get("telemetry"),
      logContent: config.logContent,
    });
  });
  app.post("/v1/completions", async (c) => {
    const json = await readJson(c.req.raw);
    return completions(json, c.req.raw.signal, {
      config,
      state,
      logger: c.get("logger"),
      telemetry: c.get("telemetry"),
      logContent: config.logContent,
    });
  });
  responsesRoutes(app, deps, shared);
  app.post("/tokenize", async (c) => c.json(tokenize(await readJson(c.req.raw), state, config, today)));
  app.post("/detokenize", async (c) => c.json(detokenize(await readJson(c.req.raw), state)));
}

/** The Responses API. */
function responsesRoutes(app: Hono<Env>, deps: AppDeps, shared: AppState): void {
  const background: BackgroundRuns = new Map();
  const context = (c: { req: { header(name: string): string | undefined }; get(key: "telemetry"): RequestTelemetry }) =>
    ({
      config: deps.config,
      state: deps.state,
      store: deps.responseStore,
      background,
      owner: ownerOf(deps.config, c.req.header("authorization")),
      today: () => todayUtc(shared.now),
      now: shared.now,
      telemetry: c.get("telemetry"),
    }) satisfies ResponsesDeps;
  app.post("/v1/responses", async (c) => createResponse(await readJson(c.req.raw), c.req.raw.signal, context(c)));
  app.get("/v1/responses/:id", async (c) => c.json(await retrieveResponse(c.req.param("id"), context(c))));
  app.delete("/v1/responses/:id", async (c) => c.json(await deleteResponse(c.req.param("id"), context(c))));
  app.post("/v1/responses/:id/cancel", async (c) => c.json(await cancelResponse(c.req.param("id"), context(c))));
  app.get("/v1/responses/:id/input_items", async (c) => {
    const query = new URL(c.req.url).searchParams;
    return c.json(await listInputItems(c.req.param("id"), query, context(c)));
  });
}

/** Health, stats, metrics and the admin debug bundle. */
function serverRoutes(app: Hono<Env>, deps: AppDeps, shared: AppState): void {
  const { config, state } = deps;
  app.get("/health", (c) => {
    const body = {
      status: state.status,
      server: SERVER_NAME,
      version: VERSION,
      model: state.modelId ?? null,
      backend: state.backend ?? null,
      uptime_s: Math.round((shared.now() - deps.startedAtMs) / 100) / 10,
      ...(state.error ? { error: state.error } : {}),
    };
    return c.json(body, state.status === "ready" ? 200 : 503);
  });
  // Kubernetes: liveness (the process answers) apart from readiness (it takes requests: loaded, not draining).
  app.get("/live", (c) => c.json({ status: "alive" }));
  app.get("/ready", (c) => c.json({ status: state.status }, state.status === "ready" ? 200 : 503));
  app.get("/stats", async (c) => {
    const server = { status: state.status, model: state.modelId ?? null, inFlight: shared.inFlight };
    const store = deps.responseStore;
    const responses = store
      ? { store: store.kind, stored: await store.count(shared.now()).catch(() => null) }
      : { store: "off", stored: 0 };
    return c.json({ ...statsBody(server, state.model?.engine.snapshot()), responses });
  });
  app.get("/memory_stats", (c) => {
    const process = deps.memoryUsage?.() ?? null;
    return c.json(memoryStatsBody(state.backend ?? null, process, state.model?.engine.snapshot()));
  });
  app.get("/metrics", async (c) => {
    if (!deps.metrics) throw new HttpError(404, "Metrics are off", "invalid_request_error", "not_found");
    const openMetrics = (c.req.header("accept") ?? "").includes("application/openmetrics-text");
    const { contentType, body } = await deps.metrics.render(openMetrics);
    return c.body(body, 200, { "content-type": contentType });
  });
  app.get("/admin/debug/bundle", async (c) => {
    // The admin key travels in its own header, so it works beside an API key in Authorization.
    const given = c.req.header("x-admin-key");
    if (config.adminKey === undefined) {
      throw new HttpError(403, "The debug bundle needs --admin-key to be set", "permission_error", "admin_disabled");
    }
    if (given === undefined) throw new HttpError(401, "Missing admin key", "authentication_error", "invalid_api_key");
    if (!keyMatches(given, config.adminKey)) {
      throw new HttpError(403, "Wrong admin key", "permission_error", "invalid_admin_key");
    }
    const snapshot = state.model?.engine.snapshot();
    return c.json({
      version: VERSION,
      server: SERVER_NAME,
      generated_at: new Date(shared.now()).toISOString(),
      config: redactConfig(config),
      state: { status: state.status, model: state.modelId ?? null, backend: state.backend ?? null, error: state.error },
      ...(deps.debugInfo?.() ?? {}),
      memory: { process: deps.memoryUsage?.() ?? null, kv_cache: snapshot ? memoryJson(snapshot.memory) : null },
      scheduler: snapshot ? statsJson(snapshot.stats) : null,
      recent_errors: shared.recentErrors,
      metrics: deps.metrics ? (await deps.metrics.render(false)).body : null,
    });
  });
}
