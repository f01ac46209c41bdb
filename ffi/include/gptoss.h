/*
 * gptoss.h — the C ABI of gpt-oss-deno's native backends (CPU now; CUDA implements the same header).
 *
 * Model-shaped ops, mirrored one to one by src/backends/backend.ts. Ops are *enqueued*: each call validates its
 * arguments, records a command and returns at once; gptoss_flush() runs everything enqueued so far (one long call,
 * bound with `nonblocking: true` in Deno). Every call returns a gptoss_status; on failure gptoss_last_error() says
 * why. Tensors are row-major; activations are f32, weights bf16 or packed MXFP4 (u8 blocks and scales).
 *
 * Ownership: tensors made by gptoss_tensor_wrap() borrow host memory (weights, used in place from the checkpoint's
 * memory mapping: the caller keeps it alive and unchanged); gptoss_tensor_alloc() memory belongs to the context.
 * Nothing here is thread-safe: one caller at a time drives a context (successive calls may come from different
 * threads, as Deno's nonblocking calls do); the library parallelises inside gptoss_flush(). The CPU library runs
 * every flush of a context on one thread of its own, so its OpenMP team is the same whichever thread calls.
 */
#ifndef GPTOSS_H
#define GPTOSS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Bumped on every incompatible change; the TypeScript bindings refuse a library of another version. */
#define GPTOSS_ABI_VERSION 4

typedef enum gptoss_status {
  GPTOSS_OK = 0,
  GPTOSS_INVALID_ARGUMENT = 1, /* a null handle, a bad enum, a negative size */
  GPTOSS_SHAPE_MISMATCH = 2,   /* tensors whose shapes or dtypes do not fit the op */
  GPTOSS_OUT_OF_MEMORY = 3,
  GPTOSS_UNSUPPORTED = 4, /* an op or dtype this backend does not implement */
  GPTOSS_NO_DEVICE = 5,   /* CUDA: no driver or no device */
  GPTOSS_INTERNAL = 6,
} gptoss_status;

typedef enum gptoss_dtype {
  GPTOSS_F32 = 0,
  GPTOSS_BF16 = 1,
  GPTOSS_U8 = 2,
  GPTOSS_I32 = 3,
  /**
   * CPU, made only by gptoss_tensor_quantize(): an [N, K] matrix as N·K int8 values (per 32-block q = round(w · 127 /
   * max|w|)) followed by N·K/32 f32 block scales (max|w| / 127). Usable as gptoss_matmul's weight.
   */
  GPTOSS_Q8_0 = 4,
} gptoss_dtype;

typedef struct gptoss_context gptoss_context;
typedef struct gptoss_tensor gptoss_tensor;
typedef struct gptoss_kv_pool gptoss_kv_pool;
typedef struct gptoss_comm gptoss_comm;

/** Paged KV pool shape (backend.ts KvPoolSpec). `layer_windows` has num_layers entries: 0 = full attention. */
typedef struct gptoss_kv_pool_spec {
  int32_t num_layers;
  int32_t num_key_value_heads;
  int32_t head_dim;
  int32_t block_size;
  int32_t num_full_blocks;
  int32_t num_sliding_blocks;
} gptoss_kv_pool_spec;

/** Attention arguments (backend.ts AttentionOptions without the batch). */
typedef struct gptoss_attention_args {
  int32_t layer;
  int32_t num_heads;
  int32_t num_key_value_heads;
  int32_t head_dim;
  int32_t window; /* keys visible to a query, current included; 0 = unlimited */
} gptoss_attention_args;

/** MoE MLP arguments. */
typedef struct gptoss_moe_args {
  int32_t intermediate_size;
  float swiglu_limit;
} gptoss_moe_args;

/** The packed experts of one layer (backend.ts MoeWeights). */
typedef struct gptoss_moe_weights {
  gptoss_tensor* gate_up_blocks; /* [E, 2I, H/32, 16] u8 */
  gptoss_tensor* gate_up_scales; /* [E, 2I, H/32] u8 */
  gptoss_tensor* gate_up_bias;   /* [E, 2I] bf16 */
  gptoss_tensor* down_blocks;    /* [E, H, I/32, 16] u8 */
  gptoss_tensor* down_scales;    /* [E, H, I/32] u8 */
  gptoss_tensor* down_bias;      /* [E, H] bf16 */
} gptoss_moe_weights;

/** The ABI version the library was built with (GPTOSS_ABI_VERSION). */
uint32_t gptoss_abi_version(void);

/** "cpu" or "cuda". */
const char* gptoss_backend_kind(void);

/** Flags of gptoss_context_create(). */
#define GPTOSS_FLAG_PROFILE 1u       /* time each op; printed to stderr by gptoss_context_destroy() */
#define GPTOSS_FLAG_PROFILE_STEPS 2u /* CUDA: host time per step and graph counts only (no per-op events) */
#define GPTOSS_FLAG_NO_GRAPHS 4u     /* CUDA: never capture CUDA graphs */
#define GPTOSS_FLAG_INT8_ACTIVATIONS 8u /* CPU, the q8 mode: MoE activations as 8-bit Q8_0 blocks (not exact digits) */
/** CUDA: the device a context runs on, in bits 16-23 (0 = the first). The CPU library accepts only device 0. */
#define GPTOSS_FLAG_DEVICE(index) ((uint32_t)(index) << 16)

/**
 * Creates a context. num_threads <= 0: OMP_NUM_THREADS when set, else one thread per physical core. isa (CPU; NULL
 * or "" = the widest path the CPU has) caps the vector code: "scalar", "avx2", "avx512", "avx512-vnni" or
 * "avx512-amx" (a path the CPU lacks falls back to the widest it has). The path is fixed for the process by the first context: a later context that asks for
 * another one fails with GPTOSS_UNSUPPORTED. The CUDA library ignores isa.
 */
gptoss_status gptoss_context_create(int32_t num_threads, uint32_t flags, const char* isa, gptoss_context** out);

/** Destroys a context and every tensor and pool it owns. */
void gptoss_context_destroy(gptoss_context* ctx);

/**
 * The message of the last failed call on this context (valid until the next call). With NULL: why the last
 * gptoss_context_create() on this thread failed (CUDA: "no CUDA device: …" with cudaGetDeviceCount's error).
 */
const char* gptoss_last_error(gptoss_context* ctx);

/** A tensor over caller-owned host memory (no copy). `shape` has `ndim` entries. */
gptoss_status gptoss_tensor_wrap(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape, void* data,
                                 gptoss_tensor** out);

/** A tensor in context memory, 64-byte aligned, contents undefined. */
gptoss_status gptoss_tensor_alloc(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape,
                                  gptoss_tensor** out);

/**
 * CPU: a context-owned copy of host memory, made now (in parallel on the step thread's team) into anonymous memory
 * with huge pages where the kernel grants them. Weights read from a file mapping's page cache can stream several times
 * slower than from anonymous memory (measured on a VM for the MoE: 4×; bench/README.md). release_source != 0: the
 * source's whole pages are then dropped from this process (MADV_DONTNEED) — for a file mapping, whose pages come back
 * from the file, or a buffer the caller never reads again (a shard cut from the checkpoint: it then reads as zeros).
 * CUDA: GPTOSS_UNSUPPORTED (its tensors live on the device).
 */
gptoss_status gptoss_tensor_copy(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape, void* data,
                                 int32_t release_source, gptoss_tensor** out);

/**
 * CPU: a context-owned tensor of `dtype` (GPTOSS_Q8_0) made now, in parallel on the context's step thread (its one
 * OpenMP team), from a bf16 [rows, cols] matrix in host memory (cols a multiple of 32), which is read during the call
 * only. CUDA: GPTOSS_UNSUPPORTED.
 */
gptoss_status gptoss_tensor_quantize(gptoss_context* ctx, const void* bf16, int64_t rows, int64_t cols, int32_t dtype,
                                     gptoss_tensor** out);

/** Copies `bytes` (the whole tensor) from host memory into a tensor. Runs after what is enqueued. */
gptoss_status gptoss_tensor_write(gptoss_context* ctx, gptoss_tensor* tensor, const void* data, size_t bytes);

/** Runs what is enqueued, then copies the whole tensor out. */
gptoss_status gptoss_tensor_read(gptoss_context* ctx, gptoss_tensor* tensor, void* data, size_t bytes);

/** Frees a tensor handle (and its memory when the context owns it). */
void gptoss_tensor_free(gptoss_context* ctx, gptoss_tensor* tensor);

/** Allocates a KV pool. `layer_windows` has spec->num_layers entries. */
gptoss_status gptoss_kv_pool_create(gptoss_context* ctx, const gptoss_kv_pool_spec* spec, const int32_t* layer_windows,
                                    gptoss_kv_pool** out);

/** Bytes a pool holds. */
uint64_t gptoss_kv_pool_bytes(gptoss_kv_pool* pool);

/** out[t] = table[ids[t]]: out [T, H] f32, table [V, H] bf16, ids [T] i32. */
gptoss_status gptoss_embed(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* table, gptoss_tensor* ids);

/** out = x · rsqrt(mean(x²) + eps) · weight per row; weight [H] bf16. */
gptoss_status gptoss_rmsnorm(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* weight,
                             float eps);

/**
 * out[t, n] = Σ_k x[t, k] · weight[n, k] + bias[n]; weight [N, K] bf16 (or, CPU, Q8_0: x is then quantized to Q8_0
 * per token); bias [N] bf16 or NULL.
 */
gptoss_status gptoss_matmul(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* weight,
                            gptoss_tensor* bias);

/** Half-split (NeoX) rotation of q and k in place with YaRN frequencies inv_freq [d/2] f32, scaled cos/sin. */
gptoss_status gptoss_rope(gptoss_context* ctx, gptoss_tensor* q, gptoss_tensor* k, gptoss_tensor* positions,
                          gptoss_tensor* inv_freq, float concentration);

/**
 * Writes this step's k/v into the pool through each sequence's block tables, then attention with learned sinks.
 * `batch` encodes the segments as int32: [count, then per segment: row_offset, num_tokens, start_position,
 * num_blocks, full_blocks[num_blocks], sliding_blocks[num_blocks]]; it is copied at enqueue.
 */
gptoss_status gptoss_attention(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* q, gptoss_tensor* k,
                               gptoss_tensor* v, gptoss_tensor* sinks, gptoss_kv_pool* pool,
                               const gptoss_attention_args* args, const int32_t* batch, size_t batch_length);

/** Top-k of logits [T, E] (ties: lowest index), softmax over the k: ids [T, k] i32, weights [T, k] f32. */
gptoss_status gptoss_moe_route(gptoss_context* ctx, gptoss_tensor* ids, gptoss_tensor* weights, gptoss_tensor* logits,
                               int32_t top_k);

/** out[t] = Σ_j w[t, j] · (down_e · swiglu(gate_up_e · x[t] + b1_e) + b2_e), experts packed MXFP4. */
gptoss_status gptoss_moe_mlp(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* ids,
                             gptoss_tensor* weights, const gptoss_moe_weights* experts, const gptoss_moe_args* args);

/** out = a + b. */
gptoss_status gptoss_add(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* a, gptoss_tensor* b);

/** out[r] = x[rows[r]]. */
gptoss_status gptoss_gather_rows(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* rows);

/** Runs everything enqueued; returns the first failure (the failing op is named by gptoss_last_error). */
gptoss_status gptoss_flush(gptoss_context* ctx);

/* ---- Devices and collectives (tensor parallelism across GPUs). The CPU library answers GPTOSS_UNSUPPORTED: its
 * ranks live in one process and share host memory (src/backends/communicator.ts). Calls without a context report
 * failures through gptoss_last_error(NULL) on the calling thread. ---- */

/** One CUDA device as the probe lists it. */
typedef struct gptoss_device_props {
  char name[96];
  uint64_t total_memory; /* bytes */
  uint64_t free_memory;  /* bytes, now */
  int32_t major;         /* compute capability */
  int32_t minor;
  int32_t multiprocessors;
} gptoss_device_props;

/** How many CUDA devices answer (0 is not a failure; no driver is GPTOSS_NO_DEVICE). */
gptoss_status gptoss_device_count(int32_t* count);

/** Name, memory and compute capability of device `index`. */
gptoss_status gptoss_device_info(int32_t index, gptoss_device_props* out);

#define GPTOSS_NCCL_UNIQUE_ID_BYTES 128

/**
 * Loads NCCL with dlopen (`path` NULL or "": libnccl.so.2 through the dynamic loader) once per process and writes its
 * version (e.g. 22304 for 2.23.4). A missing library, a missing symbol or a version below 2.12 is GPTOSS_UNSUPPORTED
 * with a one-line reason. A later call with another path replaces the library while no communicator is live.
 */
gptoss_status gptoss_nccl_open(const char* path, int32_t* version);

/** A fresh NCCL unique id (GPTOSS_NCCL_UNIQUE_ID_BYTES bytes): made once, passed to every rank's gptoss_comm_init. */
gptoss_status gptoss_nccl_unique_id(uint8_t* id, size_t length);

/**
 * Joins communicator `id` as `rank` of `size` on ctx's device. Blocks until every rank has joined: ranks driven from
 * one process must call it concurrently (Deno: nonblocking). The communicator belongs to the context.
 */
gptoss_status gptoss_comm_init(gptoss_context* ctx, const uint8_t* id, size_t length, int32_t size, int32_t rank,
                               gptoss_comm** out);

/**
 * x (f32) becomes the element-wise sum of every rank's x. Runs what ctx has enqueued first, then issues the
 * collective on ctx's stream without waiting for it (the next flush or read does). Every rank must issue the same
 * collectives in the same order, concurrently (the first one connects the ranks).
 */
gptoss_status gptoss_comm_all_reduce_sum(gptoss_context* ctx, gptoss_comm* comm, gptoss_tensor* x);

/** out [T, size·n] = every rank's x [T, n] side by side, in rank order (a vocabulary split's logits). */
gptoss_status gptoss_comm_all_gather(gptoss_context* ctx, gptoss_comm* comm, gptoss_tensor* out, gptoss_tensor* x);

/** x (f32) becomes rank `root`'s x on every rank. */
gptoss_status gptoss_comm_broadcast(gptoss_context* ctx, gptoss_comm* comm, gptoss_tensor* x, int32_t root);

/** Returns once every rank has reached it and ctx's stream is idle. */
gptoss_status gptoss_comm_barrier(gptoss_context* ctx, gptoss_comm* comm);

/** Leaves and frees a communicator (also done by gptoss_context_destroy). */
void gptoss_comm_destroy(gptoss_context* ctx, gptoss_comm* comm);

#ifdef __cplusplus
}
#endif

#endif /* GPTOSS_H */
