/** Port acquisition: detect a busy port, name its holder, move on (--auto-port) or stop our own old server. */
import { PortBusyError } from "../errors.ts";
import type { Logger } from "../obs/logger.ts";
import { SERVER_NAME } from "../version.ts";

/** The process that listens on a port, read from /proc. */
export interface PortHolder {
  readonly pid: number;
  /** The command line, arguments joined by spaces. */
  readonly command: string;
}

/** True if a TCP listener can bind host:port right now. */
export function isPortFree(host: string, port: number): boolean {
  try {
    const listener = Deno.listen({ hostname: host, port, transport: "tcp" });
    listener.close();
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.AddrInUse || err instanceof Deno.errors.PermissionDenied) return false;
    throw err;
  }
}

function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = Deno.readTextFileSync(table);
    } catch {
      continue; // not Linux, or no IPv6: nothing to find there
    }
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10) continue;
      const localPort = parseInt(cols[1].split(":")[1] ?? "", 16);
      const state = cols[3];
      if (localPort === port && state === "0A") inodes.add(cols[9]); // 0A = LISTEN
    }
  }
  return inodes;
}

/** Finds the process listening on `port` through /proc; undefined if it cannot be seen. */
export function findPortHolder(port: number): PortHolder | undefined {
  const inodes = listeningInodes(port);
  if (inodes.size === 0) return undefined;
  const wanted = new Set([...inodes].map((inode) => `socket:[${inode}]`));
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    let fds: Iterable<Deno.DirEntry>;
    try {
      fds = Deno.readDirSync(`/proc/${entry.name}/fd`);
      for (const fd of fds) {
        let target: string;
        try {
          target = Deno.readLinkSync(`/proc/${entry.name}/fd/${fd.name}`);
        } catch {
          continue;
        }
        if (wanted.has(target)) {
          const pid = Number(entry.name);
          return { pid, command: readCommand(pid) };
        }
      }
    } catch {
      continue; // the process ended or is not ours to inspect
    }
  }
  return undefined;
}

function readCommand(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0").filter((s) => s.length > 0).join(" ");
  } catch {
    return "(unknown)";
  }
}

/** Asks the server on host:port whether it is a gpt-oss-deno server (its /health names it). */
export async function isOurServer(host: string, port: number): Promise<boolean> {
  try {
    const hostPart = host.includes(":") ? `[${host}]` : host;
    const response = await fetch(`http://${hostPart}:${port}/health`, { signal: AbortSignal.timeout(2000) });
    const body = await response.json().catch(() => undefined);
    return typeof body === "object" && body !== null && (body as { server?: unknown }).server === SERVER_NAME;
  } catch {
    return false;
  }
}

function processAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) Z/.test(stat); // a zombie has already exited
  } catch {
    return false;
  }
}

async function waitFor(predicate: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (predicate()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return predicate();
}

/** Options of {@link acquirePort}. */
export interface AcquirePortOptions {
  host: string;
  port: number;
  autoPort: boolean;
  forcePort: boolean;
  logger: Logger;
  /** How long the old server gets after SIGTERM before SIGKILL. */
  termGraceMs?: number;
}

/** Returns the port to listen on, or throws PortBusyError with a message naming the holder. */
export async function acquirePort(options: AcquirePortOptions): Promise<number> {
  const { host, port, logger } = options;
  if (port === 0 || isPortFree(host, port)) return port;
  const holder = findPortHolder(port);
  const holderText = holder ? `pid ${holder.pid} (${holder.command})` : "a process this user cannot inspect";

  if (options.forcePort) {
    if (!holder || !(await isOurServer(host, port))) {
      throw new PortBusyError(
        `Refusing to stop the holder of port ${port}: ${holderText} is not a ${SERVER_NAME} server`,
        port,
      );
    }
    logger.warn("port.force", { port, pid: holder.pid, command: holder.command });
    Deno.kill(holder.pid, "SIGTERM");
    const exited = await waitFor(() => !processAlive(holder.pid), options.termGraceMs ?? 10_000);
    if (!exited) {
      logger.warn("port.force.kill", { port, pid: holder.pid });
      Deno.kill(holder.pid, "SIGKILL");
      await waitFor(() => !processAlive(holder.pid), 5_000);
    }
    if (!(await waitFor(() => isPortFree(host, port), 5_000))) {
      throw new PortBusyError(`Port ${port} is still busy after stopping pid ${holder.pid}`, port);
    }
    return port;
  }

  if (options.autoPort) {
    for (let candidate = port + 1; candidate <= Math.min(port + 1000, 65535); candidate++) {
      if (isPortFree(host, candidate)) {
        logger.info("port.auto", { requested: port, port: candidate, holder: holderText });
        return candidate;
      }
    }
    throw new PortBusyError(`No free port found from ${port + 1} to ${Math.min(port + 1000, 65535)}`, port);
  }

  throw new PortBusyError(
    `Port ${port} on ${host} is already in use by ${holderText}; use --auto-port to take the next free port, ` +
      `--force-port to replace an older ${SERVER_NAME} server, or --port to choose another`,
    port,
  );
}
