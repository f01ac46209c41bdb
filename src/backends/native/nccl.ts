/**
 * NCCL between CUDA ranks, through the CUDA library's gptoss_nccl_* / gptoss_comm_* calls (libnccl is dlopen-ed by
 * the library, never linked): the Communicator tensor parallelism uses when its ranks are GPUs. The collectives
 * stay on the devices (no host copies); each is issued on every rank concurrently, as NCCL requires of ranks that
 * one process drives. Also lists the CUDA devices for the probe.
 */
import { BackendError } from "../../errors.ts";
import type { Backend, DeviceTensor } from "../backend.ts";
import type { Communicator } from "../communicator.ts";
import { DEVICE_PROPS_BYTES, GPTOSS_STATUS, type GptossLibrary, NCCL_UNIQUE_ID_BYTES } from "./ffi.ts";
import { NativeBackend, type NativeHandles } from "./native_backend.ts";

/** One CUDA device as gptoss_device_info describes it. */
export interface CudaDevice {
  readonly index: number;
  readonly name: string;
  readonly totalBytes: number;
  readonly freeBytes: number;
  /** Compute capability, e.g. "9.0". */
  readonly computeCapability: string;
  readonly multiprocessors: number;
}

/** The failure of a context-free call (gptoss_last_error(NULL)), as one line. */
function contextFreeError(library: GptossLibrary, status: number, op: string): BackendError {
  const message = Deno.UnsafePointerView.getCString(library.symbols.gptoss_last_error(null)!);
  return new BackendError(`${message} (${GPTOSS_STATUS[status] ?? `status ${status}`})`, op);
}

/** Every CUDA device the library sees (none without a driver: the reason is then thrown). */
export function listCudaDevices(library: GptossLibrary): CudaDevice[] {
  const count = new Int32Array(1);
  const status = library.symbols.gptoss_device_count(count);
  if (status !== 0) throw contextFreeError(library, status, "device_count");
  const props = new Uint8Array(DEVICE_PROPS_BYTES);
  const view = new DataView(props.buffer);
  return Array.from({ length: count[0] }, (_, index) => {
    const s = library.symbols.gptoss_device_info(index, props);
    if (s !== 0) throw contextFreeError(library, s, "device_info");
    const end = props.indexOf(0);
    const name = new TextDecoder().decode(props.subarray(0, end < 0 ? 96 : end));
    return {
      index,
      name,
      totalBytes: Number(view.getBigUint64(96, true)),
      freeBytes: Number(view.getBigUint64(104, true)),
      computeCapability: `${view.getInt32(112, true)}.${view.getInt32(116, true)}`,
      multiprocessors: view.getInt32(120, true),
    };
  });
}

/**
 * Loads NCCL into the library (path: GPTOSS_NCCL_LIBRARY, else libnccl.so.2 through the dynamic loader) and returns
 * its version code (e.g. 22304). A missing or too old NCCL throws one line saying what to install.
 */
export function openNccl(library: GptossLibrary, path = Deno.env.get("GPTOSS_NCCL_LIBRARY") ?? ""): number {
  const version = new Int32Array(1);
  const status = library.symbols.gptoss_nccl_open(path ? new TextEncoder().encode(`${path}\0`) : null, version);
  if (status !== 0) throw contextFreeError(library, status, "nccl_open");
  return version[0];
}

/** A fresh unique id for a group (made once, given to every rank). */
export function ncclUniqueId(library: GptossLibrary): Uint8Array {
  const id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
  const status = library.symbols.gptoss_nccl_unique_id(id, BigInt(id.length));
  if (status !== 0) throw contextFreeError(library, status, "nccl_unique_id");
  return id;
}

/** GPU ranks of one process joined by NCCL. */
export class NcclCommunicator implements Communicator {
  readonly transport = "nccl";
  readonly size: number;
  readonly #ranks: readonly NativeHandles[];
  readonly #comms: Deno.PointerValue[];

  private constructor(ranks: readonly NativeHandles[], comms: Deno.PointerValue[]) {
    this.size = ranks.length;
    this.#ranks = ranks;
    this.#comms = comms;
  }

  /** Opens NCCL and joins `backends` (CUDA contexts, one per device, in rank order) into one group. */
  static async create(backends: readonly Backend[], ncclPath?: string): Promise<NcclCommunicator> {
    const ranks = backends.map((b) => {
      if (!(b instanceof NativeBackend) || b.name !== "cuda") {
        throw new BackendError("NCCL joins CUDA backends only", "comm_init");
      }
      return b.native;
    });
    const library = ranks[0].library;
    openNccl(library, ncclPath);
    const id = ncclUniqueId(library);
    const comms = await Promise.all(ranks.map(async (rank, r) => {
      const out = new BigUint64Array(1);
      const status = await library.symbols.gptoss_comm_init(rank.context, id, BigInt(id.length), ranks.length, r, out);
      rank.check(status, "comm_init");
      return Deno.UnsafePointer.create(out[0]);
    }));
    return new NcclCommunicator(ranks, comms);
  }

  /** Issues one collective on every rank at once and checks each rank's status. */
  async #all(op: string, call: (rank: NativeHandles, comm: Deno.PointerValue, r: number) => Promise<number>) {
    const statuses = await Promise.all(this.#ranks.map((rank, r) => call(rank, this.#comms[r], r)));
    statuses.forEach((status, r) => this.#ranks[r].check(status, op));
  }

  async allReduceSum(_backends: readonly Backend[], parts: readonly DeviceTensor[]): Promise<void> {
    await this.#all(
      "comm_all_reduce_sum",
      (rank, comm, r) => rank.library.symbols.gptoss_comm_all_reduce_sum(rank.context, comm, rank.handle(parts[r])),
    );
  }

  async allGatherColumns(backends: readonly Backend[], parts: readonly DeviceTensor[], rows: number) {
    const width = parts[0].shape.at(-1)! * this.size;
    const outs = backends.map((b) => b.alloc([rows, width], "f32"));
    try {
      await this.#all(
        "comm_all_gather",
        (rank, comm, r) =>
          rank.library.symbols.gptoss_comm_all_gather(rank.context, comm, rank.handle(outs[r]), rank.handle(parts[r])),
      );
      await Promise.all(backends.map((b) => b.flush()));
      return await backends[0].read(outs[0]) as Float32Array;
    } finally {
      backends.forEach((b, r) => b.free(outs[r]));
    }
  }

  async broadcast(_backends: readonly Backend[], parts: readonly DeviceTensor[], root: number): Promise<void> {
    await this.#all(
      "comm_broadcast",
      (rank, comm, r) => rank.library.symbols.gptoss_comm_broadcast(rank.context, comm, rank.handle(parts[r]), root),
    );
  }

  async barrier(): Promise<void> {
    await this.#all("comm_barrier", (rank, comm) => rank.library.symbols.gptoss_comm_barrier(rank.context, comm));
  }

  dispose(): void {
    this.#ranks.forEach((rank, r) => rank.library.symbols.gptoss_comm_destroy(rank.context, this.#comms[r]));
    this.#comms.length = 0;
  }
}
