/** Starts real server processes for end-to-end tests and waits until they listen. */

const MAIN = new URL("../../src/main.ts", import.meta.url).pathname;

/** Test servers keep their data (the default Responses store) here, not in the user's ~/.local/share. */
const DATA_HOME = Deno.makeTempDirSync({ prefix: "gptoss-test-data-" });
globalThis.addEventListener("unload", () => Deno.removeSync(DATA_HOME, { recursive: true }));

/** The environment of a child server (main.ts gives itself a runtime directory when XDG_RUNTIME_DIR is unset). */
function childEnv(extra: Record<string, string> | undefined): Record<string, string> {
  return { NO_COLOR: "1", XDG_DATA_HOME: DATA_HOME, ...extra };
}

/** A running server process. */
export interface ServerProcess {
  readonly child: Deno.ChildProcess;
  readonly port: number;
  readonly baseUrl: string;
  /** Every log line seen so far (stderr, JSON objects as text). */
  readonly logLines: string[];
  /** Sends SIGTERM and waits for the exit status. */
  stop(): Promise<Deno.CommandStatus>;
}

/** Runs `main.ts` with args to completion and returns its exit code and output (for CLI error tests). */
export async function runCli(
  args: string[],
  options: { env?: Record<string, string>; cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--unstable-no-legacy-abort", MAIN, ...args],
    env: childEnv(options.env),
    cwd: options.cwd,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const decoder = new TextDecoder();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
}

/** Starts `main.ts serve` with args and resolves once the "server.listen" log line (and /health ready) appear. */
export async function startServer(
  args: string[],
  options: { env?: Record<string, string>; timeoutMs?: number; waitReady?: boolean } = {},
): Promise<ServerProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--unstable-no-legacy-abort", MAIN, "serve", "--log-format", "json", ...args],
    env: childEnv(options.env),
    stdout: "null",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const logLines: string[] = [];
  const { promise: listening, resolve: resolveListen, reject: rejectListen } = Promise.withResolvers<number>();
  (async () => {
    let buffer = "";
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      buffer += decoder.decode(chunk, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        logLines.push(line);
        try {
          const record = JSON.parse(line);
          if (record.event === "server.listen") resolveListen(record.port);
        } catch {
          // not JSON: an error line; kept in logLines
        }
      }
    }
    rejectListen(new Error(`Server exited before listening:\n${logLines.join("\n")}`));
  })();
  const timeoutMs = options.timeoutMs ?? 120_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const port = await Promise.race([
    listening,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Server did not listen within ${timeoutMs} ms`)), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
  const baseUrl = `http://127.0.0.1:${port}`;
  if (options.waitReady ?? true) {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const response = await fetch(`${baseUrl}/health`).catch(() => undefined);
      const status = response?.status;
      await response?.body?.cancel();
      if (status === 200) break;
      if (Date.now() > deadline) throw new Error(`Server not ready within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  let stopped: Promise<Deno.CommandStatus> | undefined;
  return {
    child,
    port,
    baseUrl,
    logLines,
    stop() {
      if (!stopped) {
        try {
          child.kill("SIGTERM");
        } catch {
          // already exited
        }
        stopped = child.status;
      }
      return stopped;
    },
  };
}

/** A port that is free right now (the OS picks it). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}
