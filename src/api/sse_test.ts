import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { InvalidRequestError } from "../errors.ts";
import { createLogger } from "../obs/logger.ts";
import { sseResponse } from "./sse.ts";

Deno.test("sseResponse(): a failure mid-stream sends one OpenAI error chunk, then closes without [DONE]", async () => {
  const response = sseResponse(async (send) => {
    send({ n: 1 });
    await Promise.resolve();
    throw new InvalidRequestError("Bad thing happened", "x");
  }, {
    requestId: "r1",
    logger: createLogger({ level: "error", format: "json", write: () => {} }),
    controller: new AbortController(),
  });
  assertEquals(response.headers.get("content-type"), "text/event-stream; charset=utf-8");
  const events = (await response.text()).split("\n\n").filter((e) => e && !e.startsWith(": "));
  assertEquals(events, [
    'data: {"n":1}',
    'data: {"error":{"message":"Bad thing happened","type":"invalid_request_error","param":"x","code":null}}',
  ]);
});

Deno.test("sseResponse(): a client that goes away aborts the request's controller", async () => {
  const controller = new AbortController();
  const response = sseResponse(async (send) => {
    send({ n: 1 });
    await new Promise((resolve) => controller.signal.addEventListener("abort", resolve));
  }, { requestId: "r2", logger: createLogger({ level: "error", format: "json", write: () => {} }), controller });
  const reader = response.body!.getReader();
  await reader.read();
  await reader.cancel();
  assertEquals(controller.signal.aborted, true);
});
