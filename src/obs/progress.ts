/** Load progress: a redrawn bar on a terminal, JSON log events otherwise. */
import type { Logger } from "./logger.ts";

/** A progress sink for byte counts. */
export type ProgressReporter = (bytesDone: number, bytesTotal: number) => void;

function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return "--";
  return seconds >= 60 ? `${Math.floor(seconds / 60)}m${Math.round(seconds % 60)}s` : `${seconds.toFixed(0)}s`;
}

/** Options of {@link createProgress}. */
export interface ProgressOptions {
  /** What is progressing, e.g. "model.load". */
  event: string;
  logger: Logger;
  /** Draws on this terminal writer when given (stderr on a TTY); logs otherwise. */
  terminal?: (text: string) => void;
  now?: () => number;
}

/** Creates a reporter that draws a bar (bytes, %, MB/s, ETA) or logs about every 10% and at the end. */
export function createProgress(options: ProgressOptions): ProgressReporter {
  const now = options.now ?? performance.now.bind(performance);
  const started = now();
  let lastDraw = -Infinity;
  let lastLoggedTenth = -1;
  return (done, total) => {
    const elapsed = (now() - started) / 1000;
    const fraction = total > 0 ? done / total : 1;
    const mbPerSecond = elapsed > 0 ? done / 1e6 / elapsed : 0;
    const eta = mbPerSecond > 0 ? (total - done) / 1e6 / mbPerSecond : Infinity;
    if (options.terminal) {
      if (now() - lastDraw < 100 && done < total) return;
      lastDraw = now();
      const width = 30;
      const filled = Math.round(fraction * width);
      const bar = "#".repeat(filled) + "-".repeat(width - filled);
      options.terminal(
        `\r${options.event} [${bar}] ${(done / 1e9).toFixed(2)}/${(total / 1e9).toFixed(2)} GB ` +
          `${(fraction * 100).toFixed(0)}% ${mbPerSecond.toFixed(0)} MB/s ETA ${formatSeconds(eta)}` +
          (done >= total ? "\n" : ""),
      );
      return;
    }
    const tenth = Math.floor(fraction * 10);
    if (tenth === lastLoggedTenth && done < total) return;
    lastLoggedTenth = tenth;
    options.logger.info(`${options.event}.progress`, {
      bytes_done: done,
      bytes_total: total,
      percent: Math.round(fraction * 1000) / 10,
      mb_per_s: Math.round(mbPerSecond),
      eta_s: Number.isFinite(eta) ? Math.round(eta) : null,
    });
  };
}

/**
 * For work without a byte count (building the native library): on a terminal, redraws `<event> … Ns` every
 * `intervalMs` until the returned stop() ends the line; without one, does nothing (the caller logs start and end).
 */
export function startTicker(
  event: string,
  terminal: ((text: string) => void) | undefined,
  intervalMs = 500,
  now: () => number = performance.now.bind(performance),
): () => void {
  if (!terminal) return () => {};
  const started = now();
  const draw = () => terminal(`\r${event} … ${((now() - started) / 1000).toFixed(0)}s`);
  draw();
  const timer = setInterval(draw, intervalMs);
  return () => {
    clearInterval(timer);
    draw();
    terminal("\n");
  };
}
