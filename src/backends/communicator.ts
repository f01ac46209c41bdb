/**
 * Collectives across the ranks of a tensor-parallel group: the interface the model's parallel forward uses, and the
 * host implementation for ranks in one process (CPU native contexts or any backends). NCCL carries the same calls
 * between GPUs (native/nccl.ts). Every call runs after what each rank's backend has enqueued.
 */
import type { Backend, DeviceTensor } from "./backend.ts";

/** The collective operations tensor parallelism needs; one implementation per transport. */
export interface Communicator {
  readonly size: number;
  /** "host" or "nccl". */
  readonly transport: string;
  /** Every rank's f32 `parts[r]` becomes the element-wise sum of all of them. */
  allReduceSum(backends: readonly Backend[], parts: readonly DeviceTensor[]): Promise<void>;
  /** The ranks' [rows, n] parts side by side, [rows, size·n], on the host (a vocabulary split's logits). */
  allGatherColumns(backends: readonly Backend[], parts: readonly DeviceTensor[], rows: number): Promise<Float32Array>;
  /** Every rank's f32 `parts[r]` becomes rank `root`'s. */
  broadcast(backends: readonly Backend[], parts: readonly DeviceTensor[], root: number): Promise<void>;
  /** Resolves once every rank has reached it. */
  barrier(backends: readonly Backend[]): Promise<void>;
  /** Frees what the transport holds. */
  dispose(): void;
}

/** The element-wise sum of the parts, in rank order (deterministic whichever rank asks). */
export function sumParts(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts[0]);
  for (let r = 1; r < parts.length; r++) for (let i = 0; i < out.length; i++) out[i] += parts[r][i];
  return out;
}

/** Each row of the result is every part's row, side by side in rank order. */
export function gatherColumns(parts: readonly Float32Array[], rows: number): Float32Array {
  const widths = parts.map((p) => p.length / Math.max(1, rows));
  const total = widths.reduce((a, b) => a + b, 0);
  const out = new Float32Array(rows * total);
  for (let row = 0; row < rows; row++) {
    let column = 0;
    parts.forEach((part, r) => {
      out.set(part.subarray(row * widths[r], (row + 1) * widths[r]), row * total + column);
      column += widths[r];
    });
  }
  return out;
}

/** Every rank's part on the host, after its backend has run what was enqueued (the ranks flush concurrently). */
async function readParts(backends: readonly Backend[], parts: readonly DeviceTensor[]): Promise<Float32Array[]> {
  return await Promise.all(backends.map(async (b, r) => {
    await b.flush();
    return await b.read(parts[r]) as Float32Array;
  }));
}

/** Ranks in one process: the collectives are sums and copies in host memory. */
export class HostCommunicator implements Communicator {
  readonly transport = "host";
  constructor(readonly size: number) {}

  async allReduceSum(backends: readonly Backend[], parts: readonly DeviceTensor[]): Promise<void> {
    const sum = sumParts(await readParts(backends, parts));
    backends.forEach((b, r) => b.write(parts[r], sum));
  }

  async allGatherColumns(backends: readonly Backend[], parts: readonly DeviceTensor[], rows: number) {
    return gatherColumns(await readParts(backends, parts), rows);
  }

  async broadcast(backends: readonly Backend[], parts: readonly DeviceTensor[], root: number): Promise<void> {
    await backends[root].flush();
    const value = await backends[root].read(parts[root]) as Float32Array;
    backends.forEach((b, r) => r !== root && b.write(parts[r], value));
  }

  /** One process drives every rank in turn: they meet once each has run what it was given. */
  async barrier(backends: readonly Backend[]): Promise<void> {
    await Promise.all(backends.map((b) => b.flush()));
  }

  dispose(): void {}
}
