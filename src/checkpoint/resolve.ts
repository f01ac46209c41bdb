/**
 * `--model` → a checkpoint directory: preset names (20b, 120b), Hub ids (openai/gpt-oss-20b) looked up in the
 * Hugging Face cache, or a local directory. Pure apart from file-system reads; the environment is passed in.
 */
import { CheckpointError } from "../errors.ts";

/** Where to look; main.ts fills it from the environment. */
export interface ResolveEnv {
  readonly HF_HUB_CACHE?: string;
  readonly HF_HOME?: string;
  readonly HOME?: string;
}

/** A resolved model. */
export interface ResolvedModel {
  readonly dir: string;
  /** The id the API reports unless --served-model-name says otherwise. */
  readonly modelId: string;
}

const ALIASES: Record<string, string> = {
  "20b": "openai/gpt-oss-20b",
  "120b": "openai/gpt-oss-120b",
  "gpt-oss-20b": "openai/gpt-oss-20b",
  "gpt-oss-120b": "openai/gpt-oss-120b",
};

/** The Hugging Face hub cache directories, in the order huggingface_hub itself uses them. */
export function hubCacheDirs(env: ResolveEnv): string[] {
  const dirs: string[] = [];
  if (env.HF_HUB_CACHE) dirs.push(env.HF_HUB_CACHE);
  if (env.HF_HOME) dirs.push(`${env.HF_HOME}/hub`);
  if (env.HOME) dirs.push(`${env.HOME}/.cache/huggingface/hub`);
  return [...new Set(dirs)];
}

function isDir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** A snapshot directory of a Hub repo in one cache dir: refs/main first, else the only/newest snapshot. */
function findSnapshot(cacheDir: string, repoId: string): string | undefined {
  const repoDir = `${cacheDir}/models--${repoId.replaceAll("/", "--")}`;
  if (!isDir(repoDir)) return undefined;
  try {
    const ref = Deno.readTextFileSync(`${repoDir}/refs/main`).trim();
    const dir = `${repoDir}/snapshots/${ref}`;
    if (isFile(`${dir}/config.json`)) return dir;
  } catch {
    // no refs/main: fall back to the snapshots themselves
  }
  try {
    const snapshots = [...Deno.readDirSync(`${repoDir}/snapshots`)]
      .filter((e) => e.isDirectory && isFile(`${repoDir}/snapshots/${e.name}/config.json`))
      .map((e) => `${repoDir}/snapshots/${e.name}`)
      .sort((a, b) => Deno.statSync(b).mtime!.getTime() - Deno.statSync(a).mtime!.getTime());
    return snapshots[0];
  } catch {
    return undefined;
  }
}

/** Resolves `--model`; throws CheckpointError "not_found" naming every place looked and the download command. */
export function resolveModel(spec: string, env: ResolveEnv): ResolvedModel {
  const looked: string[] = [];
  if (isDir(spec) || spec.startsWith("/") || spec.startsWith(".")) {
    if (isDir(spec)) {
      const name = spec.replace(/\/+$/, "").split("/").pop() || spec;
      return { dir: spec.replace(/\/+$/, ""), modelId: name };
    }
    looked.push(spec);
  }
  const repoId = ALIASES[spec] ?? (/^[\w.-]+\/[\w.-]+$/.test(spec) ? spec : undefined);
  if (repoId) {
    for (const cacheDir of hubCacheDirs(env)) {
      const snapshot = findSnapshot(cacheDir, repoId);
      if (snapshot) return { dir: snapshot, modelId: repoId.split("/")[1] };
      looked.push(`${cacheDir}/models--${repoId.replaceAll("/", "--")}`);
    }
  }
  const download = repoId ? `; download it with: huggingface-cli download ${repoId}` : "";
  throw new CheckpointError(
    `Model "${spec}" not found; looked in: ${
      looked.length ? looked.join(", ") : "(no candidate locations)"
    }${download}`,
    "not_found",
    spec,
  );
}
