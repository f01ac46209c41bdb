/** The CLI and the server process: exit codes, one-line errors, ports, signals (real processes on 127.0.0.1). */
import { deepStrictEqual as assertEquals, match as assertMatch, ok as assert } from "node:assert/strict";
import { freePort, runCli, startServer } from "./helpers/server.ts";

const MAIN = new URL("../src/main.ts", import.meta.url).pathname;

function assertOneLineError(result: { code: number; stderr: string }, pattern: RegExp) {
  assertEquals(result.code, 2, result.stderr);
  const lines = result.stderr.trim().split("\n");
  assertEquals(lines.length, 1, `expected one line, got:\n${result.stderr}`);
  assertMatch(lines[0], /^error: /);
  assertMatch(lines[0], pattern);
}

Deno.test("bad flags and values exit 2 with one line naming the flag, value and choices", async () => {
  assertOneLineError(await runCli(["--bogus"]), /Unknown flag "--bogus".*valid flags are .*--port/);
  assertOneLineError(await runCli(["--port", "http"]), /Invalid value "http" for --port: expected an integer/);
  assertOneLineError(await runCli(["--backend", "tpu"]), /Invalid value "tpu" for --backend: valid choices are/);
  assertOneLineError(
    await runCli([], { env: { GPT_OSS_PROFILE: "fast" } }),
    /Invalid value "fast" for environment variable GPT_OSS_PROFILE/,
  );
});

Deno.test("a bad config file exits 2 naming the file and the field", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/server.json`;
  await Deno.writeTextFile(path, '{"port": "eight thousand"}');
  assertOneLineError(await runCli(["--config", path]), new RegExp(`Invalid config file "${path}": field "port"`));
  await Deno.writeTextFile(path, "{");
  assertOneLineError(await runCli(["--config", path]), /not valid JSON/);
  assertOneLineError(await runCli(["--config", `${dir}/none.json`]), /Cannot read config file/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a missing --model or an unavailable --backend exits 2 with one line", async () => {
  // HOME moves away, so Deno's own cache must be named (else it would print download lines of its own).
  const denoDir = JSON.parse(
    new TextDecoder().decode((await new Deno.Command(Deno.execPath(), { args: ["info", "--json"] }).output()).stdout),
  ).denoDir;
  assertOneLineError(
    await runCli(["--model", "120b", "--port", "0"], {
      env: { HF_HOME: "/nonexistent/hf", HOME: "/nonexistent", DENO_DIR: denoDir },
    }),
    /Model "120b" not found; looked in: .*\/nonexistent\/hf\/hub\/models--openai--gpt-oss-120b.*huggingface-cli download openai\/gpt-oss-120b/,
  );
  assertOneLineError(await runCli(["--model", "/no/such/dir", "--port", "0"]), /Model "\/no\/such\/dir" not found/);
  assertOneLineError(await runCli(["--backend", "cuda", "--port", "0"]), /Backend "cuda" is not available here/);
});

Deno.test("--help and --version print and exit 0", async () => {
  const help = await runCli(["--help"]);
  assertEquals(help.code, 0);
  assertMatch(help.stdout, /--auto-port/);
  const version = await runCli(["--version"]);
  assertEquals(version.code, 0);
  assertMatch(version.stdout, /^gpt-oss-deno \d+\.\d+\.\d+/);
});

Deno.test("the server takes its port from env and flag in that precedence and answers /health", async () => {
  const envPort = freePort();
  const flagPort = freePort();
  const server = await startServer(["--port", String(flagPort)], { env: { GPT_OSS_PORT: String(envPort) } });
  try {
    assertEquals(server.port, flagPort);
    const response = await fetch(`${server.baseUrl}/health`);
    const body = await response.json();
    assertEquals(response.status, 200);
    assertEquals(body.server, "gpt-oss-deno");
    assert(typeof body.uptime_s === "number");
  } finally {
    assertEquals((await server.stop()).code, 0);
  }
});

Deno.test("a busy port without flags fails naming the holder; --force-port refuses a foreign holder", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  try {
    const busy = await runCli(["--port", String(port)]);
    assertOneLineError(busy, new RegExp(`Port ${port} .*already in use by pid ${Deno.pid} \\(`));
    const forced = await runCli(["--port", String(port), "--force-port"]);
    assertOneLineError(forced, new RegExp(`Refusing to stop the holder of port ${port}: pid ${Deno.pid}`));
  } finally {
    listener.close();
  }
});

Deno.test("--auto-port moves off a port the test occupies", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  try {
    const server = await startServer(["--port", String(port), "--auto-port"]);
    try {
      assert(server.port !== port);
      assert(server.logLines.some((line) => line.includes('"event":"port.auto"')));
      assertEquals((await fetch(`${server.baseUrl}/health`).then((r) => r.json())).server, "gpt-oss-deno");
    } finally {
      await server.stop();
    }
  } finally {
    listener.close();
  }
});

Deno.test("--force-port replaces an older gpt-oss-deno server on the same port", async () => {
  const old = await startServer(["--port", "0"]);
  const replacement = await startServer(["--port", String(old.port), "--force-port"]);
  try {
    assertEquals(replacement.port, old.port);
    assertEquals((await old.child.status).code, 0); // the old one drained and exited cleanly
    assert(replacement.logLines.some((line) => line.includes('"event":"port.force"')));
  } finally {
    await replacement.stop();
  }
});

Deno.test("with XDG_RUNTIME_DIR unset, serve writes nothing to stderr but its own JSON log lines", async () => {
  const cache = await Deno.makeTempDir({ prefix: "gptoss-quiet-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "--unstable-no-legacy-abort",
      MAIN,
      "serve",
      "--port",
      "0",
      "--model-cache-dir",
      cache,
    ],
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "", HOME: Deno.env.get("HOME") ?? "/tmp", NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for await (const chunk of child.stderr) {
      buffer += decoder.decode(chunk, { stream: true });
      const parts = buffer.split("\n");
      buffer = parts.pop()!;
      lines.push(...parts.filter((line) => line.length > 0));
      if (lines.some((line) => line.includes('"event":"model.load"'))) break;
    }
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await Deno.remove(cache, { recursive: true });
  }
  const foreign = lines.filter((line) => {
    try {
      return typeof JSON.parse(line).event !== "string";
    } catch {
      return true;
    }
  });
  assertEquals(foreign, [], "lines on stderr that are not our log");
  assert(lines.some((line) => line.includes('"event":"server.listen"')));
});
