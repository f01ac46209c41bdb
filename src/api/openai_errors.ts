/** The one table from domain errors to OpenAI-shaped HTTP errors. */
import {
  ContextOverflowError,
  InvalidRequestError,
  ModelNotFoundError,
  NotReadyError,
  OverloadedError,
} from "../errors.ts";

/** OpenAI's error body. */
export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** An error that already knows its HTTP answer (auth, body size, routing). */
export class HttpError extends Error {
  override name = "HttpError";
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Status, body and extra headers for an error. */
export interface OpenAiErrorResponse {
  status: number;
  body: OpenAiErrorBody;
  headers: Record<string, string>;
}

function openAiError(
  status: number,
  type: string,
  message: string,
  param: string | null = null,
  code: string | null = null,
  headers: Record<string, string> = {},
): OpenAiErrorResponse {
  return { status, body: { error: { message, type, param, code } }, headers };
}

/** Maps any error to its response. Unknown errors become a 500 that names only the request id. */
export function toOpenAiError(err: unknown, requestId: string): OpenAiErrorResponse {
  if (err instanceof HttpError) {
    return openAiError(err.status, err.type, err.message, err.param, err.code, err.headers);
  }
  if (err instanceof InvalidRequestError) {
    return openAiError(400, "invalid_request_error", err.message, err.param ?? null, err.code ?? null);
  }
  if (err instanceof ContextOverflowError) {
    return openAiError(400, "invalid_request_error", err.message, err.param, "context_length_exceeded");
  }
  if (err instanceof ModelNotFoundError) {
    return openAiError(404, "invalid_request_error", err.message, "model", "model_not_found");
  }
  if (err instanceof OverloadedError) {
    return openAiError(429, "rate_limit_error", err.message, null, "server_overloaded", {
      "retry-after": String(err.retryAfterSeconds),
    });
  }
  if (err instanceof NotReadyError) return openAiError(503, "server_error", err.message, null, "model_loading");
  return openAiError(500, "server_error", `Internal server error (request id ${requestId})`);
}
