/** Structured logs: one JSON object per line (or a pretty line), created in main.ts and passed in. */
import type { LogFormat, LogLevel } from "../config.ts";

const LEVEL_ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Fields attached to a log line. */
export type LogFields = Record<string, unknown>;

/** A logger bound to some fields (request id, model, …). */
export interface Logger {
  debug(event: string, fields?: LogFields): void;
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
  /** A logger that adds `fields` to every line. */
  child(fields: LogFields): Logger;
}

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  level: LogLevel;
  format: LogFormat;
  /** Receives each finished line (without newline); defaults to stderr. */
  write?: (line: string) => void;
  now?: () => Date;
}

function errorToJson(value: unknown): unknown {
  if (value instanceof Error) {
    return { name: value.name, message: value.message, cause: value.cause ? errorToJson(value.cause) : undefined };
  }
  return value;
}

/** Creates a logger writing to stderr (stdout stays free for command output). */
export function createLogger(options: LoggerOptions): Logger {
  const encoder = new TextEncoder();
  const write = options.write ?? ((line: string) => Deno.stderr.writeSync(encoder.encode(line + "\n")));
  const now = options.now ?? (() => new Date());
  const threshold = LEVEL_ORDER[options.level];
  function make(bound: LogFields): Logger {
    function log(level: LogLevel, event: string, fields?: LogFields) {
      if (LEVEL_ORDER[level] < threshold) return;
      const record: LogFields = { ts: now().toISOString(), level, event, ...bound };
      for (const [key, value] of Object.entries(fields ?? {})) record[key] = errorToJson(value);
      if (options.format === "json") {
        write(JSON.stringify(record));
      } else {
        const { ts, level: lvl, event: ev, ...rest } = record;
        const extras = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
        write(`${ts} ${String(lvl).toUpperCase().padEnd(5)} ${ev} ${extras.join(" ")}`.trimEnd());
      }
    }
    return {
      debug: (event, fields) => log("debug", event, fields),
      info: (event, fields) => log("info", event, fields),
      warn: (event, fields) => log("warn", event, fields),
      error: (event, fields) => log("error", event, fields),
      child: (fields) => make({ ...bound, ...fields }),
    };
  }
  return make({});
}
