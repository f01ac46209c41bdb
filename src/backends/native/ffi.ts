/**
 * The Deno.dlopen symbol table of ffi/include/gptoss.h — the one place that knows the native ABI's shapes.
 * tests/native_abi_test.ts checks it against the header, so the two cannot drift.
 */

/** ABI version these bindings speak (GPTOSS_ABI_VERSION). */
export const GPTOSS_ABI_VERSION = 4;

/** gptoss_status. */
export const GPTOSS_STATUS = [
  "GPTOSS_OK",
  "GPTOSS_INVALID_ARGUMENT",
  "GPTOSS_SHAPE_MISMATCH",
  "GPTOSS_OUT_OF_MEMORY",
  "GPTOSS_UNSUPPORTED",
  "GPTOSS_NO_DEVICE",
  "GPTOSS_INTERNAL",
] as const;

/** Flags of gptoss_context_create. */
export const GPTOSS_FLAG = { profile: 1, profileSteps: 2, noGraphs: 4, int8Activations: 8 } as const;

/** GPTOSS_FLAG_DEVICE(index): the CUDA device of a context, in bits 16-23. */
export const gptossFlagDevice = (index: number): number => (index & 0xff) << 16;

/** GPTOSS_NCCL_UNIQUE_ID_BYTES. */
export const NCCL_UNIQUE_ID_BYTES = 128;

/** sizeof(gptoss_device_props): name[96], total and free memory (u64), major, minor, multiprocessors (i32), padding. */
export const DEVICE_PROPS_BYTES = 96 + 8 + 8 + 4 * 3 + 4;

/** gptoss_dtype. */
export const GPTOSS_DTYPE = { f32: 0, bf16: 1, u8: 2, i32: 3, q8_0: 4 } as const;

const P = "pointer" as const;
const B = "buffer" as const;

/** Every exported function of gptoss.h. */
export const SYMBOLS = {
  gptoss_abi_version: { parameters: [], result: "u32" },
  gptoss_backend_kind: { parameters: [], result: P },
  gptoss_context_create: { parameters: ["i32", "u32", B, B], result: "i32" },
  gptoss_context_destroy: { parameters: [P], result: "void" },
  gptoss_last_error: { parameters: [P], result: P },
  gptoss_tensor_wrap: { parameters: [P, "i32", "i32", B, B, B], result: "i32" },
  gptoss_tensor_alloc: { parameters: [P, "i32", "i32", B, B], result: "i32" },
  gptoss_tensor_copy: { parameters: [P, "i32", "i32", B, B, "i32", B], result: "i32" },
  gptoss_tensor_quantize: { parameters: [P, B, "i64", "i64", "i32", B], result: "i32" },
  gptoss_tensor_write: { parameters: [P, P, B, "usize"], result: "i32" },
  gptoss_tensor_read: { parameters: [P, P, B, "usize"], result: "i32" },
  gptoss_tensor_free: { parameters: [P, P], result: "void" },
  gptoss_kv_pool_create: { parameters: [P, B, B, B], result: "i32" },
  gptoss_kv_pool_bytes: { parameters: [P], result: "u64" },
  gptoss_embed: { parameters: [P, P, P, P], result: "i32" },
  gptoss_rmsnorm: { parameters: [P, P, P, P, "f32"], result: "i32" },
  gptoss_matmul: { parameters: [P, P, P, P, P], result: "i32" },
  gptoss_rope: { parameters: [P, P, P, P, P, "f32"], result: "i32" },
  gptoss_attention: { parameters: [P, P, P, P, P, P, P, B, B, "usize"], result: "i32" },
  gptoss_moe_route: { parameters: [P, P, P, P, "i32"], result: "i32" },
  gptoss_moe_mlp: { parameters: [P, P, P, P, P, B, B], result: "i32" },
  gptoss_add: { parameters: [P, P, P, P], result: "i32" },
  gptoss_gather_rows: { parameters: [P, P, P, P], result: "i32" },
  // The one long call: runs a whole step's commands on library threads without blocking Deno's event loop.
  gptoss_flush: { parameters: [P], result: "i32", nonblocking: true },
  gptoss_device_count: { parameters: [B], result: "i32" },
  gptoss_device_info: { parameters: ["i32", B], result: "i32" },
  gptoss_nccl_open: { parameters: [B, B], result: "i32" },
  gptoss_nccl_unique_id: { parameters: [B, "usize"], result: "i32" },
  // Collectives block until every rank has come (joining, and the first one, which connects the ranks): ranks driven
  // from one process call them concurrently, each on a thread of Deno's pool.
  gptoss_comm_init: { parameters: [P, B, "usize", "i32", "i32", B], result: "i32", nonblocking: true },
  gptoss_comm_all_reduce_sum: { parameters: [P, P, P], result: "i32", nonblocking: true },
  gptoss_comm_all_gather: { parameters: [P, P, P, P], result: "i32", nonblocking: true },
  gptoss_comm_broadcast: { parameters: [P, P, P, "i32"], result: "i32", nonblocking: true },
  gptoss_comm_barrier: { parameters: [P, P], result: "i32", nonblocking: true },
  gptoss_comm_destroy: { parameters: [P, P], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded library. */
export type GptossLibrary = Deno.DynamicLibrary<typeof SYMBOLS>;
