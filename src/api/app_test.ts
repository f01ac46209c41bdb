import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { loadServerConfig } from "../config.ts";
import { createLogger } from "../obs/logger.ts";
import { createApp } from "./app.ts";
import { toOpenAiError } from "./openai_errors.ts";
import type { ServingState } from "./serving.ts";

const PROFILES = Deno.readTextFileSync(new URL("../../configs/profiles.json", import.meta.url));
const config = loadServerConfig({
  flags: {},
  env: {},
  readTextFile: (path) => (path === "/p.json" ? PROFILES : undefined),
  defaultConfigPath: "/none.json",
  profilesPath: "/p.json",
});
const logger = createLogger({ level: "error", format: "json", write: () => {} });

Deno.test("/health answers 503 loading while the model loads, and the API answers 503 model_loading", async () => {
  const state: ServingState = { status: "loading", modelId: "m", backend: undefined };
  const app = createApp({ config, logger, state, startedAtMs: 0, now: () => 1500 });
  const health = await app.request("/health");
  assertEquals(health.status, 503);
  const body = await health.json();
  assertEquals(body.status, "loading");
  assertEquals(body.uptime_s, 1.5);
  const chat = await app.request("/v1/chat/completions", {
    method: "POST",
    body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] }),
  });
  assertEquals(chat.status, 503);
  assertEquals((await chat.json()).error.code, "model_loading");
  assertEquals((await (await app.request("/v1/models")).json()).data, []);
  const missing = await app.request("/nope");
  assertEquals(missing.status, 404);
  assertEquals((await missing.json()).error.type, "invalid_request_error");
});

Deno.test("an unexpected error becomes a 500 that names the request id and hides the stack", () => {
  const error = new Error("secret internal detail at /src/x.ts:1");
  const response = toOpenAiError(error, "req-123");
  assertEquals(response.status, 500);
  assertEquals(response.body.error.message, "Internal server error (request id req-123)");
  assert(!JSON.stringify(response.body).includes("secret"));
});
