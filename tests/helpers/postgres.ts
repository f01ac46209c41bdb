/**
 * A throwaway PostgreSQL cluster for tests: Debian's server binaries (initdb, postgres), a temp data directory, a
 * free port on 127.0.0.1, trust auth. Run as the `postgres` user when we are root (the server refuses root). Returns
 * undefined with the reason when it cannot start here, so the caller can skip saying why.
 */
import { freePort } from "./server.ts";

export interface PostgresCluster {
  readonly url: string;
  stop(): Promise<void>;
  /** Synchronous last resort (an unload handler): signals the server to shut down, leaves the files. */
  kill(): void;
}

function findBin(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch { /* not here */ }
  }
  try {
    for (const version of [...Deno.readDirSync("/usr/lib/postgresql")].map((e) => e.name).sort().reverse()) {
      const path = `/usr/lib/postgresql/${version}/bin/${name}`;
      if (Deno.statSync(path).isFile) return path;
    }
  } catch { /* not installed */ }
  return undefined;
}

async function run(cmd: string[], asUser: string | undefined): Promise<{ ok: boolean; output: string }> {
  const argv = asUser ? ["runuser", "-u", asUser, "--", ...cmd] : cmd;
  const out = await new Deno.Command(argv[0], { args: argv.slice(1), stdout: "piped", stderr: "piped" }).output();
  return { ok: out.success, output: new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout) };
}

export async function startPostgres(): Promise<PostgresCluster | string> {
  const initdb = findBin("initdb");
  const postgres = findBin("postgres");
  if (!initdb || !postgres) return "PostgreSQL server binaries (initdb, postgres) are not installed";
  const root = Deno.uid() === 0;
  const dir = await Deno.makeTempDir({ prefix: "gptoss-pg-" });
  const user = root ? "postgres" : undefined;
  if (root) {
    const chown = await run(["chown", "postgres", dir], undefined);
    if (!chown.ok) return `cannot hand the data directory to the postgres user: ${chown.output.trim()}`;
  }
  const init = await run([initdb, "-D", `${dir}/data`, "-A", "trust", "-U", "gptoss", "--no-sync"], user);
  if (!init.ok) return `initdb failed: ${init.output.trim().split("\n").pop()}`;
  const port = freePort();
  const argv = [postgres, "-D", `${dir}/data`, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1"];
  const full = user ? ["runuser", "-u", user, "--", ...argv] : argv;
  const child = new Deno.Command(full[0], { args: full.slice(1), stdout: "null", stderr: "piped" }).spawn();
  const log: string[] = [];
  const reading = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) log.push(chunk);
  })();
  let exited = false;
  child.status.then(() => (exited = true));
  const deadline = Date.now() + 30_000; // bounds a hang only
  while (!log.join("").includes("ready to accept connections")) {
    if (exited || Date.now() > deadline) {
      child.kill("SIGKILL");
      return `postgres did not start: ${log.join("").trim().split("\n").pop()}`;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  // runuser does not pass signals on: signal the postmaster itself (its pid file's first line). SIGINT = fast shutdown.
  const pid = Number(Deno.readTextFileSync(`${dir}/data/postmaster.pid`).split("\n")[0]);
  const kill = () => {
    if (exited) return;
    try {
      Deno.kill(pid, "SIGINT");
    } catch { /* already gone */ }
  };
  return {
    url: `postgres://gptoss@127.0.0.1:${port}/postgres`,
    kill,
    stop: async () => {
      kill();
      await child.status;
      await reading.catch(() => {});
      await Deno.remove(dir, { recursive: true });
    },
  };
}
