/** Access to ../shared/golden fixtures (read in place, never copied into the repo). */

/** Root of the golden fixtures. */
export const GOLDEN_ROOT = new URL("../../../shared/golden/", import.meta.url).pathname;

/** One case of a fixture's cases.json. */
export interface GoldenCase {
  name: string;
  input_ids: number[];
  logits_file: string;
  logits_shape: [number, number];
  logits_positions: "all" | "last";
  greedy_ids: number[];
  greedy_margins: number[];
  text?: string;
}

/** Reads a fixture's cases. */
export function goldenCases(fixture: string): GoldenCase[] {
  return JSON.parse(Deno.readTextFileSync(`${GOLDEN_ROOT}${fixture}/cases.json`));
}

/** Reads a case's logits as [rows × vocab] f32. */
export function goldenLogits(fixture: string, c: GoldenCase): Float32Array {
  const bytes = Deno.readFileSync(`${GOLDEN_ROOT}${fixture}/${c.logits_file}`);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

/** The golden README's tolerance for an f32 implementation: |Δ| ≤ 1e-3 + 1e-5·|ref|. */
export function assertLogitsClose(actual: Float32Array, expected: Float32Array, label: string): number {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: ${actual.length} logits, expected ${expected.length}`);
  }
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    const diff = Math.abs(actual[i] - expected[i]);
    worst = Math.max(worst, diff);
    if (!(diff <= 1e-3 + 1e-5 * Math.abs(expected[i]))) {
      throw new Error(`${label}: logit ${i} is ${actual[i]}, expected ${expected[i]} (|Δ| = ${diff})`);
    }
  }
  return worst;
}

/** Index of the largest value (first on ties). */
export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}
