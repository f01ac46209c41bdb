// The CUDA implementation of ffi/include/gptoss.h: device tensors, ops validated on the host and recorded as commands
// (ffi/src/cuda_queue.cuh), gptoss_flush() = issue the step (a CUDA graph when the step repeats) and synchronize.
// Kernels in kernels/cuda/ (same names as kernels/cpu/). Built by ffi/build_cuda.sh.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "../../kernels/cuda/common.cuh"
#include "../include/gptoss.h"
#include "cuda_nccl.cuh"
#include "cuda_queue.cuh"

using namespace gptoss::cuda;

struct gptoss_tensor {
  gptoss_dtype dtype;
  std::vector<int64_t> shape;
  int64_t numel;
  void* device;
};

struct gptoss_kv_pool {
  gptoss_kv_pool_spec spec;
  std::vector<int32_t> windows;
  std::vector<float*> keys, values;  // per layer; freed with the pool (also when its creation fails halfway)
  uint64_t bytes;
  ~gptoss_kv_pool() {
    for (float* k : keys) cudaFree(k);
    for (float* v : values) cudaFree(v);
  }
};

/** An NCCL communicator joined by one context (its rank), with scratch for the all-gather and the barrier. */
struct gptoss_comm {
  nccl::Comm comm = nullptr;
  int32_t size = 0, rank = 0;
  float* scratch = nullptr;  // all-gather staging, grown on demand
  size_t scratch_bytes = 0;
  bool counted = false;  // counted in the library's live communicators
  ~gptoss_comm() {
    if (comm) nccl::library().api.comm_destroy(comm);
    if (scratch) cudaFree(scratch);
    if (!counted) return;
    std::lock_guard<std::mutex> lock(nccl::library().mutex);
    nccl::library().live_comms--;
  }
};

struct gptoss_context {
  int device = 0;  // every entry point makes it current first (Deno may call from any thread)
  cudaStream_t stream = nullptr;
  std::string last_error;
  std::vector<std::unique_ptr<gptoss_tensor>> tensors;
  std::vector<std::unique_ptr<gptoss_kv_pool>> pools;
  std::vector<std::unique_ptr<gptoss_comm>> comms;
  CommandQueue queue;
  uint32_t flags = 0;
  StepArena arena;
  DescriptorStage descriptors;
  std::vector<int32_t> descriptor;  // the attention call being validated (kept to reuse its memory)
  int32_t* device_error = nullptr;  // DeviceError of the step's kernels
  int32_t* host_error = nullptr;    // pinned copy read at flush
  std::chrono::steady_clock::time_point last_flush = std::chrono::steady_clock::now();
};

namespace {

thread_local std::string g_create_error = "no error";

size_t dtype_size(gptoss_dtype d) { return d == GPTOSS_BF16 ? 2 : d == GPTOSS_U8 ? 1 : 4; }

const char* dtype_name(gptoss_dtype d) {
  return d == GPTOSS_F32 ? "f32" : d == GPTOSS_BF16 ? "bf16" : d == GPTOSS_U8 ? "u8" : "i32";
}

std::string shape_text(const gptoss_tensor* t) {
  std::string s = "[";
  for (size_t i = 0; i < t->shape.size(); i++) s += (i ? ", " : "") + std::to_string(t->shape[i]);
  return s + "] " + dtype_name(t->dtype);
}

const gptoss_tensor* need(const gptoss_tensor* t, const char* name, gptoss_dtype dtype) {
  if (!t) fail(GPTOSS_INVALID_ARGUMENT, std::string(name) + " is a null handle");
  if (t->dtype != dtype) {
    fail(GPTOSS_SHAPE_MISMATCH, std::string(name) + " is " + shape_text(t) + ", expected dtype " + dtype_name(dtype));
  }
  return t;
}

int64_t cols(const gptoss_tensor* t) { return t->shape.empty() ? 1 : t->shape.back(); }
int64_t rows(const gptoss_tensor* t) { return t->shape.empty() ? 1 : t->numel / cols(t); }
// A shape check whose message (often several shape_text strings) is built only when it fails: ops run per layer per
// step, so a message built eagerly costs more than the check.
#define expect(condition, message)                                \
  do {                                                            \
    if (!(condition)) fail(GPTOSS_SHAPE_MISMATCH, (message));     \
  } while (0)
template <typename T>
T* dev(const gptoss_tensor* t) {
  return static_cast<T*>(t->device);
}
unsigned blocks_for(int64_t n, int64_t per_block, int64_t cap = 65535) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(cap, (n + per_block - 1) / per_block)));
}

template <typename F>
gptoss_status guard(gptoss_context* ctx, const char* op, F&& body) {
  if (!ctx) return GPTOSS_INVALID_ARGUMENT;
  try {
    cuda_check(cudaSetDevice(ctx->device), "cudaSetDevice");
    body();
    return GPTOSS_OK;
  } catch (const Failure& f) {
    ctx->last_error = std::string(op) + ": " + f.message;
    return f.status;
  } catch (const std::bad_alloc&) {
    ctx->last_error = std::string(op) + ": out of host memory";
    return GPTOSS_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    ctx->last_error = std::string(op) + ": " + e.what();
    return GPTOSS_INTERNAL;
  }
}

/** Issues the recorded step and waits for it; scratch memory is taken back even when a command failed. */
void run_step(gptoss_context* ctx) {
  using Clock = std::chrono::steady_clock;
  const auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  const Clock::time_point start = Clock::now();
  const bool had_work = !ctx->queue.empty();
  try {
    ctx->queue.issue(ctx->stream);
  } catch (...) {
    cudaStreamSynchronize(ctx->stream);
    ctx->arena.reset();
    ctx->descriptors.reset();
    throw;
  }
  cuda_check(cudaMemcpyAsync(ctx->host_error, ctx->device_error, sizeof(int32_t), cudaMemcpyDeviceToHost, ctx->stream),
             "cudaMemcpyAsync");
  const Clock::time_point issued = Clock::now();
  const cudaError_t synced = cudaStreamSynchronize(ctx->stream);
  const Clock::time_point done = Clock::now();
  if (had_work) ctx->queue.add_step_times(ms(ctx->last_flush, start), ms(start, issued), ms(issued, done));
  ctx->last_flush = done;
  ctx->queue.collect_profile();
  ctx->arena.reset();
  ctx->descriptors.reset();
  cuda_check(synced, "cudaStreamSynchronize");
  const int32_t code = *ctx->host_error;
  if (code == kDeviceOk) return;
  *ctx->host_error = 0;
  cuda_check(cudaMemset(ctx->device_error, 0, sizeof(int32_t)), "cudaMemset");
  fail(GPTOSS_INVALID_ARGUMENT, code == kEmbedIdOutOfRange     ? "embed_f32_bf16w: a token id is outside the table"
                                : code == kGatherRowOutOfRange ? "gather_rows_f32: a row index is outside x"
                                                               : "moe_mlp_f32_mxfp4w: an expert id is out of range");
}

gptoss_status make_tensor(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape, const void* host,
                          gptoss_tensor** out) {
  return guard(ctx, host ? "tensor_wrap" : "tensor_alloc", [&] {
    if (!out || dtype < GPTOSS_F32 || dtype > GPTOSS_I32 || ndim < 0 || ndim > 8 || (ndim > 0 && !shape)) {
      fail(GPTOSS_INVALID_ARGUMENT, "bad tensor arguments");
    }
    auto t = std::make_unique<gptoss_tensor>();
    t->dtype = static_cast<gptoss_dtype>(dtype);
    t->numel = 1;
    for (int32_t i = 0; i < ndim; i++) {
      if (shape[i] < 0) fail(GPTOSS_INVALID_ARGUMENT, "negative dimension");
      t->shape.push_back(shape[i]);
      t->numel *= shape[i];
    }
    const size_t bytes = static_cast<size_t>(t->numel) * dtype_size(t->dtype);
    cuda_check(cudaMalloc(&t->device, bytes ? bytes : 1), "cudaMalloc");
    // Weights: one copy to the device at load (a GPU cannot compute from the host mapping).
    if (host) {
      const cudaError_t copied = cudaMemcpy(t->device, host, bytes, cudaMemcpyHostToDevice);
      if (copied != cudaSuccess) cudaFree(t->device);
      cuda_check(copied, "cudaMemcpy");
    }
    *out = t.get();
    ctx->tensors.push_back(std::move(t));
  });
}

/**
 * Checks a gptoss_attention batch (the CPU library's rules) and builds its device form in ctx->descriptor:
 * [Segment × count | the batch words], tables as offsets from the start. Returns the largest segment's tokens.
 */
int32_t build_descriptor(gptoss_context* ctx, const gptoss_tensor* q, const gptoss_kv_pool* pool,
                         const gptoss_attention_args& a, const int32_t* batch, size_t batch_length) {
  const int32_t count = batch_length > 0 ? batch[0] : -1;
  if (count < 0) fail(GPTOSS_INVALID_ARGUMENT, "empty batch descriptor");
  const int32_t header = count * 6;
  std::vector<int32_t>& d = ctx->descriptor;
  d.assign(static_cast<size_t>(header), 0);
  d.insert(d.end(), batch, batch + batch_length);
  // Blocks the layer's storage has (its kind, not the call's window, sized the allocation).
  const int32_t layer_blocks = pool->windows[static_cast<size_t>(a.layer)] > 0 ? pool->spec.num_sliding_blocks
                                                                               : pool->spec.num_full_blocks;
  const int32_t block_size = pool->spec.block_size;
  int32_t max_tokens = 0;
  size_t at = 1;
  for (int32_t s = 0; s < count; s++) {
    if (at + 4 > batch_length) fail(GPTOSS_INVALID_ARGUMENT, "truncated batch descriptor");
    const int32_t row_offset = batch[at], num_tokens = batch[at + 1], start = batch[at + 2], num_blocks = batch[at + 3];
    at += 4;
    if (num_blocks < 0 || at + 2 * static_cast<size_t>(num_blocks) > batch_length) {
      fail(GPTOSS_INVALID_ARGUMENT, "truncated block tables");
    }
    const int32_t full_at = header + static_cast<int32_t>(at), sliding_at = full_at + num_blocks;
    at += 2 * static_cast<size_t>(num_blocks);
    const int64_t end = int64_t{start} + num_tokens;
    if (row_offset < 0 || num_tokens < 0 || start < 0 || row_offset + int64_t{num_tokens} > rows(q)) {
      fail(GPTOSS_INVALID_ARGUMENT, "segment rows out of range");
    }
    if ((end + block_size - 1) / block_size > num_blocks) {
      fail(GPTOSS_INVALID_ARGUMENT, "block table too short for position " + std::to_string(end - 1));
    }
    // Every block a query of this step touches (and every block the step's keys are stored in) must exist.
    const int64_t first = a.window > 0 ? std::max<int64_t>(0, start - a.window + 1) : 0;
    const int32_t* table = batch + (a.window > 0 ? sliding_at : full_at) - header;
    for (int64_t b = first / block_size; b * block_size < end; b++) {
      if (table[b] < 0 || table[b] >= layer_blocks) fail(GPTOSS_INVALID_ARGUMENT, "invalid block id in table");
    }
    const int32_t fields[6] = {row_offset, num_tokens, start, num_blocks, full_at, sliding_at};
    std::copy(fields, fields + 6, d.begin() + 6 * s);
    max_tokens = std::max(max_tokens, num_tokens);
  }
  return max_tokens;
}

}  // namespace

extern "C" {

uint32_t gptoss_abi_version(void) { return GPTOSS_ABI_VERSION; }

const char* gptoss_backend_kind(void) { return "cuda"; }

gptoss_status gptoss_context_create(int32_t num_threads, uint32_t flags, const char* isa, gptoss_context** out) {
  (void)num_threads;
  (void)isa;
  if (!out) return GPTOSS_INVALID_ARGUMENT;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    g_create_error = std::string("no CUDA device: ") + (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return GPTOSS_NO_DEVICE;
  }
  const int device = static_cast<int>((flags >> 16) & 0xffu);
  if (device >= count) {
    g_create_error = "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " found)";
    return GPTOSS_INVALID_ARGUMENT;
  }
  cudaSetDevice(device);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, device);
  const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  if (prop.major < 7) {
    g_create_error = std::string("CUDA device ") + prop.name + " has compute capability " + cc + ", below 7.0";
    return GPTOSS_UNSUPPORTED;
  }
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, add_f32) != cudaSuccess) {
    cudaGetLastError();
    g_create_error = std::string("this build of libgptoss_cuda.so has no code for ") + prop.name +
                     " (compute capability " + cc + "); rebuild with a CUDA toolkit that targets it";
    return GPTOSS_UNSUPPORTED;
  }
  auto ctx = new gptoss_context();
  ctx->device = device;
  ctx->flags = flags;
  ctx->queue.configure(flags);
  if (cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc(&ctx->device_error, sizeof(int32_t)) != cudaSuccess ||
      cudaMallocHost(&ctx->host_error, sizeof(int32_t)) != cudaSuccess ||
      cudaMemset(ctx->device_error, 0, sizeof(int32_t)) != cudaSuccess) {
    g_create_error = std::string("CUDA context setup failed: ") + cudaGetErrorString(cudaGetLastError());
    gptoss_context_destroy(ctx);
    return GPTOSS_INTERNAL;
  }
  *ctx->host_error = 0;
  *out = ctx;
  return GPTOSS_OK;
}

void gptoss_context_destroy(gptoss_context* ctx) {
  if (!ctx) return;
  cudaSetDevice(ctx->device);
  if (ctx->stream) cudaStreamSynchronize(ctx->stream);
  ctx->comms.clear();
  if (ctx->flags & (GPTOSS_FLAG_PROFILE | GPTOSS_FLAG_PROFILE_STEPS)) ctx->queue.print_profile();
  for (auto& t : ctx->tensors) cudaFree(t->device);
  ctx->pools.clear();
  if (ctx->device_error) cudaFree(ctx->device_error);
  if (ctx->host_error) cudaFreeHost(ctx->host_error);
  if (ctx->stream) cudaStreamDestroy(ctx->stream);
  delete ctx;
}

const char* gptoss_last_error(gptoss_context* ctx) { return ctx ? ctx->last_error.c_str() : g_create_error.c_str(); }

gptoss_status gptoss_tensor_wrap(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape, void* data,
                                 gptoss_tensor** out) {
  if (!data) return GPTOSS_INVALID_ARGUMENT;
  return make_tensor(ctx, dtype, ndim, shape, data, out);
}

gptoss_status gptoss_tensor_alloc(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape,
                                  gptoss_tensor** out) {
  return make_tensor(ctx, dtype, ndim, shape, nullptr, out);
}

gptoss_status gptoss_tensor_copy(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape, void* data,
                                 int32_t release_source, gptoss_tensor** out) {
  return guard(ctx, "tensor_copy", [&] { fail(GPTOSS_UNSUPPORTED, "host copies: use gptoss_tensor_wrap (uploaded)"); });
}

gptoss_status gptoss_tensor_quantize(gptoss_context* ctx, const void* bf16, int64_t rows, int64_t cols, int32_t dtype,
                                     gptoss_tensor** out) {
  return guard(ctx, "tensor_quantize", [&] { fail(GPTOSS_UNSUPPORTED, "8-bit weights (q8_0) are a CPU-only format"); });
}

gptoss_status gptoss_tensor_write(gptoss_context* ctx, gptoss_tensor* tensor, const void* data, size_t bytes) {
  return guard(ctx, "tensor_write", [&] {
    if (!tensor || !data) fail(GPTOSS_INVALID_ARGUMENT, "null tensor or data");
    if (bytes != static_cast<size_t>(tensor->numel) * dtype_size(tensor->dtype)) fail(GPTOSS_SHAPE_MISMATCH, "size");
    if (!ctx->queue.empty()) run_step(ctx);  // "runs after what is enqueued"
    // Synchronous with respect to the host buffer (the caller may reuse it at once).
    cuda_check(cudaMemcpyAsync(tensor->device, data, bytes, cudaMemcpyHostToDevice, ctx->stream), "cudaMemcpyAsync");
    cuda_check(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize");
  });
}

gptoss_status gptoss_tensor_read(gptoss_context* ctx, gptoss_tensor* tensor, void* data, size_t bytes) {
  const gptoss_status status = gptoss_flush(ctx);
  if (status != GPTOSS_OK) return status;
  return guard(ctx, "tensor_read", [&] {
    if (!tensor || !data) fail(GPTOSS_INVALID_ARGUMENT, "null tensor or data");
    if (bytes != static_cast<size_t>(tensor->numel) * dtype_size(tensor->dtype)) fail(GPTOSS_SHAPE_MISMATCH, "size");
    cuda_check(cudaMemcpy(data, tensor->device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
  });
}

void gptoss_tensor_free(gptoss_context* ctx, gptoss_tensor* tensor) {
  if (!ctx || !tensor) return;
  for (auto it = ctx->tensors.begin(); it != ctx->tensors.end(); ++it) {
    if (it->get() == tensor) {
      if (!ctx->queue.empty()) gptoss_flush(ctx);  // recorded commands may still use it
      cudaSetDevice(ctx->device);
      cudaStreamSynchronize(ctx->stream);
      cudaFree(tensor->device);
      ctx->tensors.erase(it);
      return;
    }
  }
}

gptoss_status gptoss_kv_pool_create(gptoss_context* ctx, const gptoss_kv_pool_spec* spec, const int32_t* layer_windows,
                                    gptoss_kv_pool** out) {
  return guard(ctx, "kv_pool_create", [&] {
    if (!spec || !out || (!layer_windows && spec->num_layers > 0)) fail(GPTOSS_INVALID_ARGUMENT, "null argument");
    if (spec->num_layers < 0 || spec->num_key_value_heads <= 0 || spec->head_dim <= 0 || spec->block_size <= 0 ||
        spec->num_full_blocks < 0 || spec->num_sliding_blocks < 0) {
      fail(GPTOSS_INVALID_ARGUMENT, "bad pool spec");
    }
    auto pool = std::make_unique<gptoss_kv_pool>();
    pool->spec = *spec;
    pool->bytes = 0;
    const int64_t row = static_cast<int64_t>(spec->num_key_value_heads) * spec->head_dim;
    for (int32_t l = 0; l < spec->num_layers; l++) {
      pool->windows.push_back(layer_windows[l]);
      const int64_t blocks = layer_windows[l] > 0 ? spec->num_sliding_blocks : spec->num_full_blocks;
      const size_t bytes = static_cast<size_t>(blocks * spec->block_size * row) * sizeof(float);
      float *k = nullptr, *v = nullptr;
      cuda_check(cudaMalloc(&k, bytes ? bytes : 4), "cudaMalloc");
      pool->keys.push_back(k);
      cuda_check(cudaMalloc(&v, bytes ? bytes : 4), "cudaMalloc");
      pool->values.push_back(v);
      pool->bytes += 2 * bytes;
    }
    *out = pool.get();
    ctx->pools.push_back(std::move(pool));
  });
}

uint64_t gptoss_kv_pool_bytes(gptoss_kv_pool* pool) { return pool ? pool->bytes : 0; }

gptoss_status gptoss_embed(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* table, gptoss_tensor* ids) {
  return guard(ctx, "embed_f32_bf16w", [&] {
    need(out, "out", GPTOSS_F32), need(table, "table", GPTOSS_BF16), need(ids, "ids", GPTOSS_I32);
    expect(table->shape.size() == 2 && cols(out) == cols(table) && rows(out) == ids->numel,
           "out " + shape_text(out) + ", table " + shape_text(table) + " and ids " + shape_text(ids) + " do not fit");
    if (ids->numel == 0) return;
    ctx->queue.launch("embed_f32_bf16w", embed_f32_bf16w, dim3(static_cast<unsigned>(ids->numel)), dim3(256), 0,
                      dev<float>(out), dev<uint16_t>(table), dev<int32_t>(ids), rows(table), cols(table),
                      ctx->device_error);
  });
}

gptoss_status gptoss_rmsnorm(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* weight,
                             float eps) {
  return guard(ctx, "rmsnorm_f32_bf16w", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(weight, "weight", GPTOSS_BF16);
    expect(out->numel == x->numel && weight->numel == cols(x), "x " + shape_text(x) + " and weight do not fit");
    if (x->numel == 0) return;
    ctx->queue.launch("rmsnorm_f32_bf16w", rmsnorm_f32_bf16w, dim3(static_cast<unsigned>(rows(x))), dim3(256), 0,
                      dev<float>(out), dev<float>(x), dev<uint16_t>(weight), cols(x), eps);
  });
}

gptoss_status gptoss_matmul(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* weight,
                            gptoss_tensor* bias) {
  return guard(ctx, "matmul_f32_bf16w", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(weight, "weight", GPTOSS_BF16);
    if (bias) need(bias, "bias", GPTOSS_BF16);
    expect(weight->shape.size() == 2 && cols(x) == weight->shape[1] && cols(out) == weight->shape[0] &&
               rows(out) == rows(x) && (!bias || bias->numel == weight->shape[0]),
           "x " + shape_text(x) + " (out " + shape_text(out) + ") does not match weight " + shape_text(weight));
    const int64_t n = weight->shape[0], k = weight->shape[1], tokens = rows(x);
    if (tokens == 0 || n == 0) return;
    const uint16_t* b = bias ? dev<uint16_t>(bias) : nullptr;
    const char* op = "matmul_f32_bf16w";
    if (k % 8 == 0) {
      const dim3 grid(blocks_for(n, 8, int64_t{1} << 31));
      ctx->queue.launch(op, matmul_vec_kernel(tokens), grid, dim3(256), 0, dev<float>(out), dev<float>(x),
                        dev<uint16_t>(weight), b, n, k, tokens);
      return;
    }
    if (tokens > 65535) fail(GPTOSS_UNSUPPORTED, "more than 65535 tokens with K not a multiple of 8");
    ctx->queue.launch(op, matmul_f32_bf16w, dim3(blocks_for(n, 8, int64_t{1} << 31), static_cast<unsigned>(tokens)),
                      dim3(256), 0, dev<float>(out), dev<float>(x), dev<uint16_t>(weight), b, n, k);
  });
}

gptoss_status gptoss_rope(gptoss_context* ctx, gptoss_tensor* q, gptoss_tensor* k, gptoss_tensor* positions,
                          gptoss_tensor* inv_freq, float concentration) {
  return guard(ctx, "rope_f32", [&] {
    need(q, "q", GPTOSS_F32), need(k, "k", GPTOSS_F32), need(positions, "positions", GPTOSS_I32);
    need(inv_freq, "inv_freq", GPTOSS_F32);
    const int64_t head_dim = inv_freq->numel * 2;
    expect(head_dim > 0 && cols(q) % head_dim == 0 && cols(k) % head_dim == 0 && rows(q) == positions->numel &&
               rows(k) == positions->numel,
           "q " + shape_text(q) + ", k " + shape_text(k) + " and positions do not fit");
    if (positions->numel == 0) return;
    ctx->queue.launch("rope_f32", rope_f32, dim3(static_cast<unsigned>(positions->numel)), dim3(256), 0,
                      dev<float>(q), dev<float>(k), dev<int32_t>(positions), dev<float>(inv_freq), concentration,
                      cols(q), cols(k), head_dim);
  });
}

gptoss_status gptoss_attention(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* q, gptoss_tensor* k,
                               gptoss_tensor* v, gptoss_tensor* sinks, gptoss_kv_pool* pool,
                               const gptoss_attention_args* args, const int32_t* batch, size_t batch_length) {
  return guard(ctx, "attention_f32", [&] {
    need(out, "out", GPTOSS_F32), need(q, "q", GPTOSS_F32), need(k, "k", GPTOSS_F32), need(v, "v", GPTOSS_F32);
    need(sinks, "sinks", GPTOSS_BF16);
    if (!pool || !args || !batch) fail(GPTOSS_INVALID_ARGUMENT, "null pool, args or batch");
    const gptoss_attention_args a = *args;
    if (a.layer < 0 || a.layer >= pool->spec.num_layers) fail(GPTOSS_INVALID_ARGUMENT, "layer out of range");
    if (a.num_key_value_heads != pool->spec.num_key_value_heads || a.head_dim != pool->spec.head_dim ||
        a.num_key_value_heads <= 0 || a.num_heads % a.num_key_value_heads != 0 || a.head_dim > 256) {
      fail(GPTOSS_SHAPE_MISMATCH, "heads do not match the pool (or head_dim over 256)");
    }
    expect(cols(q) == int64_t{a.num_heads} * a.head_dim && cols(k) == int64_t{a.num_key_value_heads} * a.head_dim &&
               k->numel == v->numel && out->numel == q->numel && sinks->numel == a.num_heads && rows(k) == rows(q),
           "q " + shape_text(q) + ", k " + shape_text(k) + " or sinks do not match the heads");
    const int32_t max_tokens = build_descriptor(ctx, q, pool, a, batch, batch_length);
    const unsigned count = static_cast<unsigned>(batch[0]);
    if (count == 0 || max_tokens == 0) return;
    const int32_t* desc = ctx->descriptors.place(ctx->descriptor, [&](int32_t* dst, const int32_t* src, size_t bytes) {
      ctx->queue.copy("attention_f32", dst, src, bytes, cudaMemcpyHostToDevice);
    });
    const int64_t kv_width = int64_t{a.num_key_value_heads} * a.head_dim;
    float* keys = pool->keys[static_cast<size_t>(a.layer)];
    float* values = pool->values[static_cast<size_t>(a.layer)];
    ctx->queue.launch("attention_f32", kv_store_f32, dim3(static_cast<unsigned>(max_tokens), count), dim3(128), 0,
                      keys, values, dev<float>(k), dev<float>(v), desc, pool->spec.block_size, kv_width,
                      a.window > 0);
    ctx->queue.launch("attention_f32", attention_f32,
                      dim3(static_cast<unsigned>(max_tokens), static_cast<unsigned>(a.num_heads), count), dim3(32), 0,
                      dev<float>(out), dev<float>(q), keys, values, dev<uint16_t>(sinks), desc,
                      pool->spec.block_size, a.num_heads, a.num_key_value_heads, a.head_dim, a.window);
  });
}

gptoss_status gptoss_moe_route(gptoss_context* ctx, gptoss_tensor* ids, gptoss_tensor* weights, gptoss_tensor* logits,
                               int32_t top_k) {
  return guard(ctx, "moe_route_f32", [&] {
    need(ids, "ids", GPTOSS_I32), need(weights, "weights", GPTOSS_F32), need(logits, "logits", GPTOSS_F32);
    expect(top_k > 0 && top_k <= cols(logits) && ids->numel == rows(logits) * top_k && weights->numel == ids->numel,
           "ids " + shape_text(ids) + " and logits " + shape_text(logits) + " do not fit top_k");
    if (rows(logits) == 0) return;
    ctx->queue.launch("moe_route_f32", moe_route_f32, dim3(blocks_for(rows(logits), 128, int64_t{1} << 31)),
                      dim3(128), 0, dev<int32_t>(ids), dev<float>(weights), dev<float>(logits), rows(logits),
                      cols(logits), top_k);
  });
}

gptoss_status gptoss_moe_mlp(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* ids,
                             gptoss_tensor* weights, const gptoss_moe_weights* experts, const gptoss_moe_args* args) {
  return guard(ctx, "moe_mlp_f32_mxfp4w", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(ids, "ids", GPTOSS_I32);
    need(weights, "weights", GPTOSS_F32);
    if (!experts || !args) fail(GPTOSS_INVALID_ARGUMENT, "null experts or args");
    const gptoss_moe_weights e = *experts;
    need(e.gate_up_blocks, "gate_up_blocks", GPTOSS_U8), need(e.gate_up_scales, "gate_up_scales", GPTOSS_U8);
    need(e.gate_up_bias, "gate_up_bias", GPTOSS_BF16), need(e.down_blocks, "down_blocks", GPTOSS_U8);
    need(e.down_scales, "down_scales", GPTOSS_U8), need(e.down_bias, "down_bias", GPTOSS_BF16);
    const int64_t hidden = cols(x), inter = args->intermediate_size, tokens = rows(x), slots = ids->numel;
    const int32_t top_k = static_cast<int32_t>(cols(ids));
    const int64_t num_experts = e.gate_up_blocks->shape.empty() ? 0 : e.gate_up_blocks->shape[0];
    expect(out->numel == x->numel && rows(ids) == tokens && weights->numel == slots && hidden % 32 == 0 &&
               inter > 0 && inter % 32 == 0 && num_experts > 0 && num_experts <= 1024 &&
               e.gate_up_blocks->numel == num_experts * 2 * inter * hidden / 2 &&
               e.gate_up_scales->numel == num_experts * 2 * inter * hidden / 32 &&
               e.gate_up_bias->numel == num_experts * 2 * inter &&
               e.down_blocks->numel == num_experts * hidden * inter / 2 &&
               e.down_scales->numel == num_experts * hidden * inter / 32 && e.down_bias->numel == num_experts * hidden,
           "x " + shape_text(x) + ", ids " + shape_text(ids) + " and the experts " + shape_text(e.gate_up_blocks) +
               " do not fit");
    if (tokens == 0) return;
    const int32_t E = static_cast<int32_t>(num_experts);
    auto* plan = static_cast<int32_t*>(ctx->arena.take(static_cast<size_t>(2 + 2 * E + slots) * sizeof(int32_t)));
    auto* act = static_cast<float*>(ctx->arena.take(static_cast<size_t>(slots * inter) * sizeof(float)));
    auto* y = static_cast<float*>(ctx->arena.take(static_cast<size_t>(slots * hidden) * sizeof(float)));
    const char* op = "moe_mlp_f32_mxfp4w";
    auto& q = ctx->queue;
    q.launch(op, moe_plan, dim3(1), dim3(1024), size_t(2 * E) * sizeof(int32_t), plan, dev<int32_t>(ids), slots, E,
             ctx->device_error);
    const unsigned active = static_cast<unsigned>(std::min<int64_t>(num_experts, slots));
    const unsigned pairs_up = blocks_for(inter, 8, int64_t{1} << 31), pairs_down = blocks_for(hidden / 2, 8, int64_t{1} << 31);
    q.launch(op, moe_pairs_kernel(true, slots), dim3(pairs_up, active), dim3(256), 0, act, dev<float>(x), plan,
             dev<uint8_t>(e.gate_up_blocks), dev<uint8_t>(e.gate_up_scales), dev<uint16_t>(e.gate_up_bias), E, top_k,
             hidden, 2 * inter, args->swiglu_limit);
    q.launch(op, moe_pairs_kernel(false, slots), dim3(pairs_down, active), dim3(256), 0, y, act, plan,
             dev<uint8_t>(e.down_blocks), dev<uint8_t>(e.down_scales), dev<uint16_t>(e.down_bias), E, top_k, inter,
             hidden, 0.f);
    q.launch(op, moe_combine_f32, dim3(blocks_for(tokens * hidden, 256, 8192)), dim3(256), 0, dev<float>(out), y,
             dev<float>(weights), top_k, tokens, hidden);
  });
}

gptoss_status gptoss_add(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* a, gptoss_tensor* b) {
  return guard(ctx, "add_f32", [&] {
    need(out, "out", GPTOSS_F32), need(a, "a", GPTOSS_F32), need(b, "b", GPTOSS_F32);
    expect(out->numel == a->numel && a->numel == b->numel, "operands differ in size");
    if (a->numel == 0) return;
    ctx->queue.launch("add_f32", add_f32, dim3(blocks_for(a->numel, 256, 4096)), dim3(256), 0, dev<float>(out),
                      dev<float>(a), dev<float>(b), a->numel);
  });
}

gptoss_status gptoss_gather_rows(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* rows_t) {
  return guard(ctx, "gather_rows_f32", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(rows_t, "rows", GPTOSS_I32);
    expect(cols(out) == cols(x) && rows(out) == rows_t->numel, "gather shapes");
    if (rows_t->numel == 0) return;
    ctx->queue.launch("gather_rows_f32", gather_rows_f32, dim3(static_cast<unsigned>(rows_t->numel)), dim3(256), 0,
                      dev<float>(out), dev<float>(x), dev<int32_t>(rows_t), rows(x), cols(x), ctx->device_error);
  });
}

gptoss_status gptoss_flush(gptoss_context* ctx) {
  return guard(ctx, "flush", [&] { run_step(ctx); });
}

// ---- Devices and collectives ----

gptoss_status gptoss_device_count(int32_t* count) {
  if (!count) return GPTOSS_INVALID_ARGUMENT;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaErrorNoDevice) n = 0;
  else if (err != cudaSuccess) {
    g_create_error = std::string("no CUDA driver: ") + cudaGetErrorString(err);
    return GPTOSS_NO_DEVICE;
  }
  *count = n;
  return GPTOSS_OK;
}

gptoss_status gptoss_device_info(int32_t index, gptoss_device_props* out) {
  int32_t count = 0;
  const gptoss_status status = gptoss_device_count(&count);
  if (status != GPTOSS_OK) return status;
  if (!out || index < 0 || index >= count) {
    g_create_error = "CUDA device " + std::to_string(index) + " does not exist (" + std::to_string(count) + " found)";
    return GPTOSS_INVALID_ARGUMENT;
  }
  cudaDeviceProp prop{};
  size_t free_bytes = 0, total_bytes = 0;
  int previous = 0;
  cudaGetDevice(&previous);
  cudaSetDevice(index);
  const cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err == cudaSuccess) cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaSetDevice(previous);
  if (err != cudaSuccess) {
    g_create_error = std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(err);
    return GPTOSS_INTERNAL;
  }
  *out = gptoss_device_props{};
  std::snprintf(out->name, sizeof out->name, "%s", prop.name);
  out->total_memory = total_bytes ? total_bytes : prop.totalGlobalMem;
  out->free_memory = free_bytes;
  out->major = prop.major;
  out->minor = prop.minor;
  out->multiprocessors = prop.multiProcessorCount;
  return GPTOSS_OK;
}

gptoss_status gptoss_nccl_open(const char* path, int32_t* version) {
  if (!version) return GPTOSS_INVALID_ARGUMENT;
  try {
    *version = nccl::open(path ? path : "");
    return GPTOSS_OK;
  } catch (const Failure& f) {
    g_create_error = f.message;
    return f.status;
  }
}

gptoss_status gptoss_nccl_unique_id(uint8_t* id, size_t length) {
  try {
    if (!id || length != GPTOSS_NCCL_UNIQUE_ID_BYTES) fail(GPTOSS_INVALID_ARGUMENT, "an NCCL unique id is 128 bytes");
    nccl::UniqueId unique{};
    nccl::check(nccl::api().get_unique_id(&unique), "ncclGetUniqueId");
    std::memcpy(id, unique.internal, GPTOSS_NCCL_UNIQUE_ID_BYTES);
    return GPTOSS_OK;
  } catch (const Failure& f) {
    g_create_error = f.message;
    return f.status;
  }
}

gptoss_status gptoss_comm_init(gptoss_context* ctx, const uint8_t* id, size_t length, int32_t size, int32_t rank,
                               gptoss_comm** out) {
  return guard(ctx, "comm_init", [&] {
    if (!out || !id || length != GPTOSS_NCCL_UNIQUE_ID_BYTES) fail(GPTOSS_INVALID_ARGUMENT, "bad communicator arguments");
    if (size < 1 || rank < 0 || rank >= size) {
      fail(GPTOSS_INVALID_ARGUMENT, "rank " + std::to_string(rank) + " is not in a group of " + std::to_string(size));
    }
    const nccl::Api& api = nccl::api();
    nccl::UniqueId unique{};
    std::memcpy(unique.internal, id, GPTOSS_NCCL_UNIQUE_ID_BYTES);
    auto comm = std::make_unique<gptoss_comm>();
    comm->size = size;
    comm->rank = rank;
    nccl::check(api.comm_init_rank(&comm->comm, size, unique, rank), "ncclCommInitRank");
    comm->counted = true;
    {
      std::lock_guard<std::mutex> lock(nccl::library().mutex);
      nccl::library().live_comms++;
    }
    *out = comm.get();
    ctx->comms.push_back(std::move(comm));
  });
}

namespace {

/** The communicator `comm` of ctx, after running what ctx has enqueued (collectives are ordered after it). */
gptoss_comm* before_collective(gptoss_context* ctx, gptoss_comm* comm) {
  bool found = false;
  for (auto& c : ctx->comms) found = found || c.get() == comm;
  if (!comm || !found) fail(GPTOSS_INVALID_ARGUMENT, "the communicator does not belong to this context");
  if (!ctx->queue.empty()) run_step(ctx);
  return comm;
}

}  // namespace

gptoss_status gptoss_comm_all_reduce_sum(gptoss_context* ctx, gptoss_comm* comm, gptoss_tensor* x) {
  return guard(ctx, "comm_all_reduce_sum", [&] {
    need(x, "x", GPTOSS_F32);
    before_collective(ctx, comm);
    nccl::check(nccl::api().all_reduce(x->device, x->device, static_cast<size_t>(x->numel), nccl::kFloat32, nccl::kSum,
                                       comm->comm, ctx->stream),
                "ncclAllReduce");
  });
}

gptoss_status gptoss_comm_all_gather(gptoss_context* ctx, gptoss_comm* comm, gptoss_tensor* out, gptoss_tensor* x) {
  return guard(ctx, "comm_all_gather", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32);
    before_collective(ctx, comm);
    expect(rows(out) == rows(x) && cols(out) == cols(x) * comm->size,
           "out " + shape_text(out) + " is not x " + shape_text(x) + " with " + std::to_string(comm->size) +
               " ranks' columns");
    const size_t bytes = static_cast<size_t>(out->numel) * sizeof(float);
    if (comm->scratch_bytes < bytes) {
      cuda_check(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize");
      if (comm->scratch) cudaFree(comm->scratch);
      comm->scratch = nullptr;
      comm->scratch_bytes = 0;
      cuda_check(cudaMalloc(&comm->scratch, bytes), "cudaMalloc (all-gather scratch)");
      comm->scratch_bytes = bytes;
    }
    nccl::check(nccl::api().all_gather(x->device, comm->scratch, static_cast<size_t>(x->numel), nccl::kFloat32,
                                       comm->comm, ctx->stream),
                "ncclAllGather");
    nccl::interleave_columns<<<blocks_for(out->numel, 256, 4096), 256, 0, ctx->stream>>>(
        dev<float>(out), comm->scratch, comm->size, rows(x), cols(x));
    cuda_check(cudaGetLastError(), "interleave_columns");
  });
}

gptoss_status gptoss_comm_broadcast(gptoss_context* ctx, gptoss_comm* comm, gptoss_tensor* x, int32_t root) {
  return guard(ctx, "comm_broadcast", [&] {
    need(x, "x", GPTOSS_F32);
    before_collective(ctx, comm);
    if (root < 0 || root >= comm->size) fail(GPTOSS_INVALID_ARGUMENT, "root " + std::to_string(root) + " is no rank");
    nccl::check(nccl::api().broadcast(x->device, x->device, static_cast<size_t>(x->numel), nccl::kFloat32, root,
                                      comm->comm, ctx->stream),
                "ncclBroadcast");
  });
}

gptoss_status gptoss_comm_barrier(gptoss_context* ctx, gptoss_comm* comm) {
  return guard(ctx, "comm_barrier", [&] {
    before_collective(ctx, comm);
    // A one-element all-reduce every rank must join, then the stream drained: nobody returns before everyone came.
    float* word = static_cast<float*>(ctx->arena.take(sizeof(float)));
    nccl::check(nccl::api().all_reduce(word, word, 1, nccl::kFloat32, nccl::kSum, comm->comm, ctx->stream),
                "ncclAllReduce (barrier)");
    cuda_check(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize");
    ctx->arena.reset();
  });
}

void gptoss_comm_destroy(gptoss_context* ctx, gptoss_comm* comm) {
  if (!ctx || !comm) return;
  cudaSetDevice(ctx->device);
  for (auto it = ctx->comms.begin(); it != ctx->comms.end(); ++it) {
    if (it->get() != comm) continue;
    cudaStreamSynchronize(ctx->stream);
    ctx->comms.erase(it);
    return;
  }
}

}  // extern "C"
