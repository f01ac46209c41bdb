/** The Hono app: routes, middleware and the one error handler. Nothing outside src/api knows HTTP. */
import { Hono } from "hono";
import type { ServerConfig } from "../config.ts";
import type { Logger } from "../obs/logger.ts";
import { SERVER_NAME, VERSION } from "../version.ts";

/** What /health reports about the model; main.ts updates it as loading proceeds. */
export interface ServingState {
  status: "loading" | "ready" | "failed";
  modelId: string | undefined;
  backend: string | undefined;
  error?: string;
}

/** Everything the app needs, passed in by main.ts. */
export interface AppDeps {
  readonly config: ServerConfig;
  readonly logger: Logger;
  readonly state: ServingState;
  readonly startedAtMs: number;
  readonly now?: () => number;
}

/** Builds the app. */
export function createApp(deps: AppDeps): Hono {
  const app = new Hono();
  const now = deps.now ?? Date.now;

  app.get("/health", (c) => {
    const { state } = deps;
    const body = {
      status: state.status,
      server: SERVER_NAME,
      version: VERSION,
      model: state.modelId ?? null,
      backend: state.backend ?? null,
      uptime_s: Math.round((now() - deps.startedAtMs) / 100) / 10,
      ...(state.error ? { error: state.error } : {}),
    };
    return c.json(body, state.status === "ready" ? 200 : 503);
  });

  return app;
}
