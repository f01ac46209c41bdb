/** Which checkpoint `serve` uses: `--model`, else the profile's default if present, else the built-in demo model. */
import { CheckpointError } from "../errors.ts";
import type { Logger } from "../obs/logger.ts";
import { type ResolveEnv, resolveModel } from "./resolve.ts";

/** The id of the built-in demo model. */
export const DEMO_MODEL_ID = "gpt-oss-tiny-random";

/** The checkpoint chosen for serving. */
export interface ModelChoice {
  readonly dir: string;
  readonly modelId: string;
  /** True for the built-in demo model (random weights, random text). */
  readonly demo: boolean;
}

/** Options of {@link chooseModel}. */
export interface ChooseModelOptions {
  /** `--model`, when given: it must resolve. */
  readonly model: string | undefined;
  /** The profile's default model, used when present. */
  readonly defaultModel: string;
  readonly env: ResolveEnv;
  /** Where the demo model is generated. */
  readonly cacheDir: string;
  /** Writes the demo checkpoint into a directory (the synthetic generator, which the server loads only then). */
  readonly generateDemo: (dir: string) => Promise<void>;
  readonly logger: Logger;
}

/** Resolves the model; generates the demo model on first use. Throws CheckpointError when `--model` is not found. */
export async function chooseModel(options: ChooseModelOptions): Promise<ModelChoice> {
  if (options.model !== undefined) return { ...resolveModel(options.model, options.env), demo: false };
  try {
    return { ...resolveModel(options.defaultModel, options.env), demo: false };
  } catch (err) {
    if (!(err instanceof CheckpointError) || err.kind !== "not_found") throw err;
    options.logger.warn("model.demo", {
      reason: err.message,
      message: `No weights for "${options.defaultModel}" were found: serving the built-in demo model ` +
        `${DEMO_MODEL_ID}, whose output is random text. Pass --model to serve real weights.`,
    });
  }
  const dir = `${options.cacheDir}/${DEMO_MODEL_ID}`;
  await ensureDemoModel(dir, options.generateDemo, options.logger);
  return { dir, modelId: DEMO_MODEL_ID, demo: true };
}

/** Generates the demo checkpoint into `dir` unless it is already complete (config.json is written last). */
export async function ensureDemoModel(
  dir: string,
  generate: (dir: string) => Promise<void>,
  logger: Logger,
): Promise<void> {
  try {
    Deno.statSync(`${dir}/config.json`);
    return;
  } catch {
    // not generated yet
  }
  const started = performance.now();
  // Generate beside the target and rename, so two servers starting at once never see a half-written model.
  const parent = dir.slice(0, dir.lastIndexOf("/"));
  await Deno.mkdir(parent, { recursive: true });
  const temporary = await Deno.makeTempDir({ dir: parent, prefix: ".demo-" });
  await generate(temporary);
  try {
    await Deno.rename(temporary, dir);
  } catch {
    await Deno.remove(temporary, { recursive: true }); // another process won the race; its copy is identical
  }
  logger.info("model.demo.generated", { dir, ms: Math.round(performance.now() - started) });
}
