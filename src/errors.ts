/** Domain errors: they carry data, never HTTP statuses (the API maps them in one table). */

/** A command-line flag or a setting has a bad value; the CLI prints the message and exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** A configuration file is unreadable or does not match the schema. */
export class ConfigFileError extends Error {
  override name = "ConfigFileError";
  constructor(message: string, readonly path: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** The requested port is held by another process. */
export class PortBusyError extends Error {
  override name = "PortBusyError";
  constructor(message: string, readonly port: number) {
    super(message);
  }
}

/** A request field is invalid. */
export class InvalidRequestError extends Error {
  override name = "InvalidRequestError";
  constructor(message: string, readonly param?: string, readonly code?: string) {
    super(message);
  }
}

/** The request names a model this server does not serve. */
export class ModelNotFoundError extends Error {
  override name = "ModelNotFoundError";
}

/** The prompt plus the requested completion does not fit in the model's context. */
export class ContextOverflowError extends Error {
  override name = "ContextOverflowError";
  constructor(message: string, readonly param = "messages") {
    super(message);
  }
}

/** The server cannot take the request now; retry after `retryAfterSeconds`. */
export class OverloadedError extends Error {
  override name = "OverloadedError";
  constructor(message: string, readonly retryAfterSeconds: number) {
    super(message);
  }
}

/** The model is still loading. */
export class NotReadyError extends Error {
  override name = "NotReadyError";
}

/** A checkpoint file or directory is malformed; names the file and, when known, the tensor. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
  constructor(
    message: string,
    readonly kind: CheckpointErrorKind,
    readonly file?: string,
    readonly tensor?: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Every way a checkpoint can be damaged, so tests and callers can tell them apart. */
export type CheckpointErrorKind =
  | "io"
  | "header_length"
  | "header_utf8"
  | "header_json"
  | "header_schema"
  | "unsupported_dtype"
  | "size_mismatch"
  | "offsets"
  | "tensor_missing"
  | "tensor_duplicate"
  | "shard_missing"
  | "shape_mismatch"
  | "unsupported_model"
  | "not_found";

/** A backend op failed; names the op. */
export class BackendError extends Error {
  override name = "BackendError";
  constructor(message: string, readonly op: string, options?: ErrorOptions) {
    super(message, options);
  }
}
