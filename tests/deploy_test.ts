/**
 * deploy/ against the real things (Debian's haproxy and prometheus, started here; each part skips saying why when its
 * binary is missing): three replicas behind HAProxy with deploy/haproxy.cfg take a bounded load of streaming and
 * non-streaming requests, some aborted by the client, through a rolling restart of all three — no request fails that
 * the client did not abort, every stream is well-formed, no KV block stays held. Then Prometheus scrapes them with
 * deploy/alerts.yml loaded, every target is up and the gateway gauges answer queries; promtool checks the rules and our
 * /metrics text. The Kubernetes manifests parse and say what the server needs (probe paths, grace > drain).
 */
import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { Deployment } from "kubernetes-models/apps/v1";
import { PersistentVolumeClaim, Service } from "kubernetes-models/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { freePort, type ServerProcess, startServer } from "./helpers/server.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const CACHE = await Deno.makeTempDir({ prefix: "gptoss-deploy-test-" });
// The demo model (~50 MB) is made once per file; the file's process removes it as it ends.
globalThis.addEventListener("unload", () => Deno.removeSync(CACHE, { recursive: true }));
const DRAIN_MS = 20_000;

function which(name: string): string | undefined {
  for (const dir of ["/usr/sbin", "/usr/bin", "/usr/local/bin", ...(Deno.env.get("PATH") ?? "").split(":")]) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch { /* not here */ }
  }
  return undefined;
}

const haproxy = which("haproxy");
const prometheus = which("prometheus");
const promtool = which("promtool");
if (!haproxy) console.log("deploy: the HAProxy test is skipped: haproxy is not installed (apt-get install haproxy)");
if (!prometheus || !promtool) {
  console.log(
    "deploy: the Prometheus checks are skipped: prometheus/promtool are not installed (apt-get install prometheus)",
  );
}

const replicaArgs = (port: number) => [
  ...["--port", String(port), "--model-cache-dir", CACHE, "--current-date", "2025-06-28"],
  ...["--drain-timeout-ms", String(DRAIN_MS), "--response-store", "off", "--metrics-vllm-names"],
];

async function waitFor(what: string, check: () => Promise<boolean>, boundMs = 60_000): Promise<void> {
  const deadline = Date.now() + boundMs; // bounds a hang only
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Outcome {
  kind: "ok" | "aborted" | "failed";
  detail?: string;
}

/** One client request through the balancer: streaming completions (some aborted) or a non-streaming chat. */
async function oneRequest(base: string, n: number): Promise<Outcome> {
  const stream = n % 2 === 0;
  const abort = stream && n % 5 === 0;
  const controller = new AbortController();
  const body = stream
    ? { model: "gpt-oss-tiny-random", prompt: `count ${n}`, max_tokens: 24, stream: true, ignore_eos: true }
    : { model: "gpt-oss-tiny-random", messages: [{ role: "user", content: `hi ${n}` }], max_tokens: 8 };
  try {
    const response = await fetch(`${base}/v1/${stream ? "completions" : "chat/completions"}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (response.status !== 200) return { kind: "failed", detail: `${response.status} ${await response.text()}` };
    if (!stream) {
      const json = await response.json();
      return json.object === "chat.completion" ? { kind: "ok" } : { kind: "failed", detail: JSON.stringify(json) };
    }
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "", events = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
      events = text.split("\n\n").filter((e) => e.startsWith("data: {")).length;
      if (abort && events >= 2) {
        controller.abort();
        return { kind: "aborted" };
      }
    }
    // Well-formed: every event is JSON, one says finish_reason "length" (24 tokens asked, EOS ignored), then [DONE].
    // (Chunks are not counted: a character split across tokens comes in one chunk.)
    const payloads = text.split("\n\n").filter((e) => e.startsWith("data: {")).map((e) => JSON.parse(e.slice(6)));
    const finished = payloads.some((p) => p.choices?.[0]?.finish_reason === "length");
    const ok = text.trimEnd().endsWith("data: [DONE]") && finished;
    return ok ? { kind: "ok" } : { kind: "failed", detail: `malformed stream: ${text.slice(-300)}` };
  } catch (err) {
    return abort ? { kind: "aborted" } : { kind: "failed", detail: String(err) };
  }
}

Deno.test({
  name: "3 replicas behind HAProxy: a rolling restart under load fails no request; Prometheus scrapes them all",
  ignore: !haproxy,
  fn: async () => {
    const ports = [freePort(), freePort(), freePort()];
    const replicas: ServerProcess[] = await Promise.all(ports.map((p) => startServer(replicaArgs(p))));
    const lbPort = freePort();
    const lb = new Deno.Command(haproxy!, {
      args: ["-f", `${ROOT}deploy/haproxy.cfg`, "-db"],
      env: {
        HAPROXY_BIND: `127.0.0.1:${lbPort}`,
        ...Object.fromEntries(ports.map((p, i) => [`REPLICA${i + 1}`, `127.0.0.1:${p}`])),
      },
      stdout: "null",
      stderr: "null",
    }).spawn();
    const base = `http://127.0.0.1:${lbPort}`;
    try {
      await waitFor("HAProxy", async () => (await fetch(`${base}/v1/models`).then((r) => r.text())).includes("data"));
      let stop = false, n = 0;
      const outcomes: Outcome[] = [];
      const worker = async () => {
        while (!stop) outcomes.push(await oneRequest(base, n++));
      };
      const workers = Array.from({ length: 6 }, worker);
      // The rolling restart: one replica at a time, SIGTERM (drain), exit, start again on its port.
      for (let i = 0; i < replicas.length; i++) {
        await waitFor("some load", () => Promise.resolve(outcomes.length >= 10 * (i + 1)));
        const status = await replicas[i].stop();
        assertEquals(status.code, 0, `replica ${i + 1} exits 0 after draining`);
        replicas[i] = await startServer(replicaArgs(ports[i]));
      }
      const total = outcomes.length;
      await waitFor("load after the restarts", () => Promise.resolve(outcomes.length >= total + 20));
      stop = true;
      await Promise.all(workers);
      const failed = outcomes.filter((o) => o.kind === "failed");
      console.log(
        `deploy: ${outcomes.length} requests through HAProxy during a rolling restart: ${
          outcomes.filter((o) => o.kind === "ok").length
        } ok, ${outcomes.filter((o) => o.kind === "aborted").length} aborted by the client, ${failed.length} failed`,
      );
      assertEquals(failed.map((f) => f.detail), []);
      for (const r of replicas) {
        await waitFor("KV blocks released", async () => {
          const memory = await (await fetch(`${r.baseUrl}/memory_stats`)).json();
          return memory.kv_cache.blocks.used === 0;
        });
      }
      if (prometheus && promtool) await checkPrometheus(replicas);
    } finally {
      lb.kill("SIGTERM");
      await lb.status;
      await Promise.all(replicas.map((r) => r.stop()));
    }
  },
});

/** A real Prometheus over the replicas: all targets up, the gateway gauges queryable; promtool on rules and metrics. */
async function checkPrometheus(replicas: ServerProcess[]): Promise<void> {
  const rules = await new Deno.Command(promtool!, { args: ["check", "rules", `${ROOT}deploy/alerts.yml`] }).output();
  assert(rules.success, new TextDecoder().decode(rules.stdout) + new TextDecoder().decode(rules.stderr));
  const text = await (await fetch(`${replicas[0].baseUrl}/metrics`)).text();
  const lint = new Deno.Command(promtool!, {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  const writer = lint.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const linted = await lint.output();
  // vLLM's own names contain ':' (a recording-rule convention promtool lints); they are kept as vLLM spells them.
  const problems = (new TextDecoder().decode(linted.stdout) + new TextDecoder().decode(linted.stderr)).split("\n")
    .filter((line) => line.trim() && !/^vllm:\S+ metric names should not contain ':'$/.test(line.trim()));
  assertEquals(problems, [], "promtool check metrics");

  // Every metric the dashboard and the alerts query is one the server exports.
  const exported = new Set(
    [...text.matchAll(/^([a-zA-Z_:][a-zA-Z0-9_:]*?)(?:_bucket|_sum|_count)?[{ ]/gm)].map((m) => m[1]),
  );
  const queried = [
    ...Deno.readTextFileSync(`${ROOT}deploy/grafana-dashboard.json`).matchAll(/\b(gptoss_[a-z_]+?)(?:_bucket)?\{/g),
    ...Deno.readTextFileSync(`${ROOT}deploy/alerts.yml`).matchAll(/\b(gptoss_[a-z_]+?)(?:_bucket)?[{)]/g),
  ].map((m) => m[1]);
  assert(queried.length > 10);
  assertEquals(queried.filter((name) => !exported.has(name)), [], "queried metrics the server does not export");
  const dir = await Deno.makeTempDir({ prefix: "gptoss-prom-" });
  const port = freePort();
  const targets = replicas.map((r) => `"127.0.0.1:${r.port}"`).join(", ");
  await Deno.writeTextFile(
    `${dir}/prometheus.yml`,
    `global: { scrape_interval: 1s }\nrule_files: ["${ROOT}deploy/alerts.yml"]\n` +
      `scrape_configs:\n  - job_name: gpt-oss-deno\n    static_configs: [{ targets: [${targets}] }]\n`,
  );
  const server = new Deno.Command(prometheus!, {
    args: [
      `--config.file=${dir}/prometheus.yml`,
      `--storage.tsdb.path=${dir}/data`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const api = (q: string) =>
    fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(q)}`).then((r) => r.json());
  try {
    await waitFor(
      "every target up",
      async () => (await api('sum(up{job="gpt-oss-deno"})')).data.result[0]?.value[1] === "3",
    );
    for (const gauge of ["gptoss_requests_waiting", "gptoss_requests_running", "gptoss_kv_cache_usage_ratio"]) {
      await waitFor(`${gauge} from 3 targets`, async () => (await api(gauge)).data.result.length === 3);
    }
    assertEquals((await api("vllm:num_requests_waiting")).data.result.length, 3);
    const rulesLoaded = await (await fetch(`http://127.0.0.1:${port}/api/v1/rules`)).json();
    assert(rulesLoaded.data.groups.some((g: { name: string }) => g.name === "gpt-oss-deno"));
  } finally {
    server.kill("SIGTERM");
    await server.status;
    await Deno.remove(dir, { recursive: true });
  }
}

/** Validators generated from the Kubernetes (and prometheus-operator) OpenAPI schemas, by apiVersion/kind. */
const VALIDATORS: Record<string, (object: never) => { validate(): void }> = {
  "apps/v1/Deployment": (o) => new Deployment(o),
  "v1/Service": (o) => new Service(o),
  "v1/PersistentVolumeClaim": (o) => new PersistentVolumeClaim(o),
  "policy/v1/PodDisruptionBudget": (o) => new PodDisruptionBudget(o),
  "autoscaling/v2/HorizontalPodAutoscaler": (o) => new HorizontalPodAutoscaler(o),
  "monitoring.coreos.com/v1/PodMonitor": (o) => new PodMonitor(o),
};

Deno.test("Kubernetes manifests validate against the API schemas; probes use /live and /ready; grace > drain", () => {
  const docs = [...Deno.readDirSync(`${ROOT}deploy/k8s`)].flatMap((e) =>
    parseAllDocuments(Deno.readTextFileSync(`${ROOT}deploy/k8s/${e.name}`)).map((d) => {
      assertEquals(d.errors, [], `${e.name}: YAML errors`);
      return d.toJS() as {
        apiVersion: string;
        kind: string;
        metadata: { name: string };
        spec: Record<string, unknown>;
      };
    })
  );
  for (const d of docs) {
    assert(d.apiVersion && d.kind && d.metadata?.name, `incomplete object ${JSON.stringify(d)}`);
    const validator = VALIDATORS[`${d.apiVersion}/${d.kind}`];
    // The Inference Extension's InferencePool has no published model package: its fields are checked below.
    if (d.kind === "InferencePool") continue;
    assert(validator, `no schema for ${d.apiVersion}/${d.kind}`);
    validator(d as never).validate(); // throws, naming the field, on a schema violation
  }
  // The validators do reject: a port given as a word fails.
  const broken = structuredClone(docs.find((d) => d.kind === "Deployment")!) as never as {
    spec: { template: { spec: { containers: { ports: { containerPort: unknown }[] }[] } } };
  };
  broken.spec.template.spec.containers[0].ports[0].containerPort = "eight thousand";
  assertThrows(() => new Deployment(broken as never).validate(), /containerPort must be integer/);
  const pool = docs.find((d) => d.kind === "InferencePool")!;
  // deno-lint-ignore no-explicit-any
  const poolSpec = pool.spec as any;
  assertEquals(poolSpec.selector.matchLabels, { app: "gpt-oss-deno" });
  assertEquals(poolSpec.targetPorts, [{ number: 8000 }]);
  assert(docs.some((d) => d.kind === "Service" && d.metadata.name === poolSpec.endpointPickerRef.name));
  const deployment = docs.find((d) => d.kind === "Deployment" && d.metadata.name === "gpt-oss-deno")!;
  // deno-lint-ignore no-explicit-any
  const pod = (deployment.spec as any).template.spec;
  const container = pod.containers[0];
  assertEquals(container.readinessProbe.httpGet.path, "/ready");
  assertEquals(container.startupProbe.httpGet.path, "/ready");
  assertEquals(container.livenessProbe.httpGet.path, "/live");
  const drain = Number(container.args[container.args.indexOf("--drain-timeout-ms") + 1]);
  assert(pod.terminationGracePeriodSeconds * 1000 > drain, "grace period must outlast the drain");
  assertEquals(
    docs.map((d) => d.kind).sort(),
    [
      "Deployment",
      "Deployment",
      "HorizontalPodAutoscaler",
      "InferencePool",
      "PersistentVolumeClaim",
      "PodDisruptionBudget",
      "PodMonitor",
      "Service",
      "Service",
    ],
  );
});
