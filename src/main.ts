/**
 * Composition root: the only reader of Deno.args and Deno.env. Parses the command line and settings once,
 * builds the modules and wires them together.
 */
import { createApp, type ServingState } from "./api/app.ts";
import { helpText, parseCommandLine } from "./cli.ts";
import { loadServerConfig, type ServerConfig } from "./config.ts";
import { ConfigFileError, PortBusyError, UsageError } from "./errors.ts";
import { createLogger, type Logger } from "./obs/logger.ts";
import { acquirePort } from "./server/ports.ts";
import { VERSION } from "./version.ts";

const ROOT = new URL("..", import.meta.url);

function readTextFileOrUndefined(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw new ConfigFileError(`Cannot read "${path}": ${(err as Error).message}`, path, { cause: err });
  }
}

/** Prints a one-line error and exits with status 2 (bad usage, bad settings, busy port). */
function fail(message: string): never {
  console.error(`error: ${message}`);
  Deno.exit(2);
}

async function serve(config: ServerConfig, logger: Logger): Promise<void> {
  const port = await acquirePort({
    host: config.host,
    port: config.port,
    autoPort: config.autoPort,
    forcePort: config.forcePort,
    logger,
  });
  const state: ServingState = { status: "loading", modelId: undefined, backend: undefined };
  const app = createApp({ config, logger, state, startedAtMs: Date.now() });
  const server = Deno.serve({
    hostname: config.host,
    port,
    onListen: (addr) => logger.info("server.listen", { host: addr.hostname, port: addr.port, pid: Deno.pid }),
  }, app.fetch);

  // TODO(#3): load the model here; until then the server is ready at once.
  state.status = "ready";

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info("server.drain", { signal, drainTimeoutMs: config.drainTimeoutMs });
    const deadline = new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), config.drainTimeoutMs));
    const outcome = await Promise.race([server.shutdown().then(() => "drained" as const), deadline]);
    logger.info("server.stop", { outcome });
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
  await server.finished;
}

async function main(): Promise<void> {
  let commandLine;
  try {
    commandLine = parseCommandLine(Deno.args);
  } catch (err) {
    if (err instanceof UsageError) fail(err.message);
    throw err;
  }
  if (commandLine.help) {
    console.log(helpText(commandLine.command));
    return;
  }
  if (commandLine.version) {
    console.log(`gpt-oss-deno ${VERSION}`);
    return;
  }
  let config: ServerConfig;
  try {
    config = loadServerConfig({
      flags: commandLine.command === "serve" ? commandLine.flags : {},
      env: Deno.env.toObject(),
      readTextFile: readTextFileOrUndefined,
      defaultConfigPath: new URL("configs/server.json", ROOT).pathname,
      profilesPath: new URL("configs/profiles.json", ROOT).pathname,
    });
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigFileError) fail(err.message);
    throw err;
  }
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  switch (commandLine.command) {
    case "serve":
      try {
        await serve(config, logger);
      } catch (err) {
        if (err instanceof PortBusyError) fail(err.message);
        throw err;
      }
      return;
    case "make-model":
    case "probe":
      fail(`Command "${commandLine.command}" is not available yet`);
  }
}

if (import.meta.main) await main();
