// The CUDA implementation of ffi/include/gptoss.h: device tensors, ops launched on one stream (enqueue semantics
// come free), gptoss_flush() = synchronize. Kernels in kernels/cuda/ (same names as kernels/cpu/).
// Built by ffi/build_cuda.sh (nvcc, sm_80 + sm_90a + PTX, static cudart). Unverified on a GPU in this repository's CI.
#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../../kernels/cuda/common.cuh"
#include "../include/gptoss.h"

namespace gptoss::cuda {
__global__ void embed_f32_bf16w(float*, const uint16_t*, const int32_t*, int64_t);
__global__ void rmsnorm_f32_bf16w(float*, const float*, const uint16_t*, int64_t, float);
__global__ void matmul_f32_bf16w(float*, const float*, const uint16_t*, const uint16_t*, int64_t, int64_t);
__global__ void rope_f32(float*, float*, const int32_t*, const float*, float, int64_t, int64_t, int64_t);
__global__ void kv_store_f32(float*, float*, const float*, const float*, const Segment*, int32_t, int32_t, int64_t, bool);
__global__ void attention_f32(float*, const float*, const float*, const float*, const uint16_t*, const Segment*,
                              int32_t, int32_t, int32_t, int32_t, int32_t);
__global__ void moe_route_f32(int32_t*, float*, const float*, int64_t, int64_t, int32_t);
__global__ void moe_gate_up_f32(float*, const float*, const int32_t*, const uint8_t*, const uint8_t*, const uint16_t*,
                                int32_t, int64_t, int64_t, float);
__global__ void moe_down_f32(float*, const float*, const int32_t*, const float*, const uint8_t*, const uint8_t*,
                             const uint16_t*, int32_t, int64_t, int64_t);
__global__ void add_f32(float*, const float*, const float*, int64_t);
__global__ void gather_rows_f32(float*, const float*, const int32_t*, int64_t);
}  // namespace gptoss::cuda

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
  std::vector<float*> keys, values;
  uint64_t bytes;
};

struct gptoss_context {
  cudaStream_t stream = nullptr;
  std::string last_error;
  std::vector<std::unique_ptr<gptoss_tensor>> tensors;
  std::vector<std::unique_ptr<gptoss_kv_pool>> pools;
  std::vector<void*> temporaries;  // freed at the next flush
};

namespace {

thread_local std::string g_create_error = "no error";

struct Failure {
  gptoss_status status;
  std::string message;
};

[[noreturn]] void fail(gptoss_status status, const std::string& message) { throw Failure{status, message}; }

size_t dtype_size(gptoss_dtype d) { return d == GPTOSS_BF16 ? 2 : d == GPTOSS_U8 ? 1 : 4; }

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail(err == cudaErrorMemoryAllocation ? GPTOSS_OUT_OF_MEMORY : GPTOSS_INTERNAL,
                               std::string(what) + ": " + cudaGetErrorString(err));
}

const gptoss_tensor* need(const gptoss_tensor* t, const char* name, gptoss_dtype dtype) {
  if (!t) fail(GPTOSS_INVALID_ARGUMENT, std::string(name) + " is a null handle");
  if (t->dtype != dtype) fail(GPTOSS_SHAPE_MISMATCH, std::string(name) + " has the wrong dtype");
  return t;
}

int64_t cols(const gptoss_tensor* t) { return t->shape.empty() ? 1 : t->shape.back(); }
int64_t rows(const gptoss_tensor* t) { return t->shape.empty() ? 1 : t->numel / cols(t); }
void expect(bool ok, const char* message) {
  if (!ok) fail(GPTOSS_SHAPE_MISMATCH, message);
}
template <typename T>
T* dev(const gptoss_tensor* t) {
  return static_cast<T*>(t->device);
}

template <typename F>
gptoss_status guard(gptoss_context* ctx, const char* op, F&& body) {
  if (!ctx) return GPTOSS_INVALID_ARGUMENT;
  try {
    body();
    cuda_check(cudaGetLastError(), "launch");
    return GPTOSS_OK;
  } catch (const Failure& f) {
    ctx->last_error = std::string(op) + ": " + f.message;
    return f.status;
  } catch (const std::exception& e) {
    ctx->last_error = std::string(op) + ": " + e.what();
    return GPTOSS_INTERNAL;
  }
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
    if (host) cuda_check(cudaMemcpy(t->device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
    *out = t.get();
    ctx->tensors.push_back(std::move(t));
  });
}

}  // namespace

extern "C" {

uint32_t gptoss_abi_version(void) { return GPTOSS_ABI_VERSION; }

const char* gptoss_backend_kind(void) { return "cuda"; }

gptoss_status gptoss_context_create(int32_t num_threads, gptoss_context** out) {
  if (!out) return GPTOSS_INVALID_ARGUMENT;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    g_create_error = std::string("no CUDA device: ") + (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return GPTOSS_NO_DEVICE;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  if (prop.major < 8) {
    g_create_error = std::string("CUDA device ") + prop.name + " has compute capability " + std::to_string(prop.major) +
                     "." + std::to_string(prop.minor) + ", below 8.0";
    return GPTOSS_UNSUPPORTED;
  }
  auto ctx = new gptoss_context();
  if (cudaStreamCreate(&ctx->stream) != cudaSuccess) {
    delete ctx;
    return GPTOSS_INTERNAL;
  }
  *out = ctx;
  return GPTOSS_OK;
}

void gptoss_context_destroy(gptoss_context* ctx) {
  if (!ctx) return;
  cudaStreamSynchronize(ctx->stream);
  for (auto& t : ctx->tensors) cudaFree(t->device);
  for (auto& p : ctx->pools) {
    for (float* k : p->keys) cudaFree(k);
    for (float* v : p->values) cudaFree(v);
  }
  for (void* p : ctx->temporaries) cudaFree(p);
  cudaStreamDestroy(ctx->stream);
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

gptoss_status gptoss_tensor_write(gptoss_context* ctx, gptoss_tensor* tensor, const void* data, size_t bytes) {
  return guard(ctx, "tensor_write", [&] {
    if (!tensor || !data) fail(GPTOSS_INVALID_ARGUMENT, "null tensor or data");
    if (bytes != static_cast<size_t>(tensor->numel) * dtype_size(tensor->dtype)) fail(GPTOSS_SHAPE_MISMATCH, "size");
    // Synchronous with respect to the host buffer, ordered after the work already enqueued on the stream.
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
      cuda_check(cudaMalloc(&v, bytes ? bytes : 4), "cudaMalloc");
      pool->keys.push_back(k);
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
    expect(table->shape.size() == 2 && cols(out) == cols(table) && rows(out) == ids->numel, "embed shapes");
    if (ids->numel > 0) embed_f32_bf16w<<<ids->numel, 256, 0, ctx->stream>>>(dev<float>(out), dev<uint16_t>(table), dev<int32_t>(ids), cols(table));
  });
}

gptoss_status gptoss_rmsnorm(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* weight, float eps) {
  return guard(ctx, "rmsnorm_f32_bf16w", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(weight, "weight", GPTOSS_BF16);
    expect(out->numel == x->numel && weight->numel == cols(x), "rmsnorm shapes");
    if (rows(x) > 0) rmsnorm_f32_bf16w<<<rows(x), 256, 0, ctx->stream>>>(dev<float>(out), dev<float>(x), dev<uint16_t>(weight), cols(x), eps);
  });
}

gptoss_status gptoss_matmul(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* weight, gptoss_tensor* bias) {
  return guard(ctx, "matmul_f32_bf16w", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(weight, "weight", GPTOSS_BF16);
    if (bias) need(bias, "bias", GPTOSS_BF16);
    expect(weight->shape.size() == 2 && cols(x) == weight->shape[1] && cols(out) == weight->shape[0] && rows(out) == rows(x),
           "matmul shapes");
    const int64_t n = weight->shape[0];
    const dim3 grid(static_cast<unsigned>((n + 7) / 8), static_cast<unsigned>(rows(x)));
    if (rows(x) > 0) matmul_f32_bf16w<<<grid, 256, 0, ctx->stream>>>(dev<float>(out), dev<float>(x), dev<uint16_t>(weight),
                                                                   bias ? dev<uint16_t>(bias) : nullptr, n, weight->shape[1]);
  });
}

gptoss_status gptoss_rope(gptoss_context* ctx, gptoss_tensor* q, gptoss_tensor* k, gptoss_tensor* positions,
                          gptoss_tensor* inv_freq, float concentration) {
  return guard(ctx, "rope_f32", [&] {
    need(q, "q", GPTOSS_F32), need(k, "k", GPTOSS_F32), need(positions, "positions", GPTOSS_I32), need(inv_freq, "inv_freq", GPTOSS_F32);
    const int64_t head_dim = inv_freq->numel * 2;
    expect(head_dim > 0 && cols(q) % head_dim == 0 && cols(k) % head_dim == 0 && rows(q) == positions->numel, "rope shapes");
    if (positions->numel > 0) rope_f32<<<positions->numel, 256, 0, ctx->stream>>>(dev<float>(q), dev<float>(k), dev<int32_t>(positions),
                                                                               dev<float>(inv_freq), concentration, cols(q), cols(k), head_dim);
  });
}

gptoss_status gptoss_attention(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* q, gptoss_tensor* k, gptoss_tensor* v,
                               gptoss_tensor* sinks, gptoss_kv_pool* pool, const gptoss_attention_args* args,
                               const int32_t* batch, size_t batch_length) {
  return guard(ctx, "attention_f32", [&] {
    need(out, "out", GPTOSS_F32), need(q, "q", GPTOSS_F32), need(k, "k", GPTOSS_F32), need(v, "v", GPTOSS_F32);
    need(sinks, "sinks", GPTOSS_BF16);
    if (!pool || !args || !batch || batch_length == 0) fail(GPTOSS_INVALID_ARGUMENT, "null pool, args or batch");
    const gptoss_attention_args a = *args;
    if (a.layer < 0 || a.layer >= pool->spec.num_layers || a.head_dim > 256 || a.num_heads % a.num_key_value_heads != 0) {
      fail(GPTOSS_INVALID_ARGUMENT, "bad attention arguments");
    }
    // The block tables go to the device once per call; segments point into that copy.
    int32_t* words = nullptr;
    cuda_check(cudaMalloc(&words, batch_length * sizeof(int32_t)), "cudaMalloc");
    ctx->temporaries.push_back(words);
    cuda_check(cudaMemcpyAsync(words, batch, batch_length * sizeof(int32_t), cudaMemcpyHostToDevice, ctx->stream), "copy");
    std::vector<Segment> segments;
    size_t at = 1;
    int32_t max_tokens = 0;
    for (int32_t s = 0; s < batch[0]; s++) {
      if (at + 4 > batch_length) fail(GPTOSS_INVALID_ARGUMENT, "truncated batch descriptor");
      Segment seg{batch[at], batch[at + 1], batch[at + 2], batch[at + 3], words + at + 4, words + at + 4 + batch[at + 3]};
      at += 4 + 2 * static_cast<size_t>(seg.num_blocks);
      if (at > batch_length) fail(GPTOSS_INVALID_ARGUMENT, "truncated block tables");
      max_tokens = std::max(max_tokens, seg.num_tokens);
      segments.push_back(seg);
    }
    Segment* device_segments = nullptr;
    cuda_check(cudaMalloc(&device_segments, segments.size() * sizeof(Segment) + 1), "cudaMalloc");
    ctx->temporaries.push_back(device_segments);
    cuda_check(cudaMemcpyAsync(device_segments, segments.data(), segments.size() * sizeof(Segment), cudaMemcpyHostToDevice,
                               ctx->stream), "copy");
    cuda_check(cudaStreamSynchronize(ctx->stream), "sync");  // the host vector dies at return
    if (segments.empty() || max_tokens == 0) return;
    const int64_t kv_width = int64_t{a.num_key_value_heads} * a.head_dim;
    const dim3 store_grid(max_tokens, static_cast<unsigned>(segments.size()));
    kv_store_f32<<<store_grid, 128, 0, ctx->stream>>>(pool->keys[a.layer], pool->values[a.layer], dev<float>(k), dev<float>(v),
                                                       device_segments, static_cast<int32_t>(segments.size()),
                                                       pool->spec.block_size, kv_width, a.window > 0);
    const dim3 grid(max_tokens, a.num_heads, static_cast<unsigned>(segments.size()));
    attention_f32<<<grid, 32, 0, ctx->stream>>>(dev<float>(out), dev<float>(q), pool->keys[a.layer], pool->values[a.layer],
                                                dev<uint16_t>(sinks), device_segments, pool->spec.block_size, a.num_heads,
                                                a.num_key_value_heads, a.head_dim, a.window);
  });
}

gptoss_status gptoss_moe_route(gptoss_context* ctx, gptoss_tensor* ids, gptoss_tensor* weights, gptoss_tensor* logits, int32_t top_k) {
  return guard(ctx, "moe_route_f32", [&] {
    need(ids, "ids", GPTOSS_I32), need(weights, "weights", GPTOSS_F32), need(logits, "logits", GPTOSS_F32);
    expect(top_k > 0 && top_k <= cols(logits) && ids->numel == rows(logits) * top_k, "route shapes");
    if (rows(logits) > 0) moe_route_f32<<<(rows(logits) + 127) / 128, 128, 0, ctx->stream>>>(
        dev<int32_t>(ids), dev<float>(weights), dev<float>(logits), rows(logits), cols(logits), top_k);
  });
}

gptoss_status gptoss_moe_mlp(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* ids, gptoss_tensor* weights,
                             const gptoss_moe_weights* experts, const gptoss_moe_args* args) {
  return guard(ctx, "moe_mlp_f32_mxfp4w", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(ids, "ids", GPTOSS_I32), need(weights, "weights", GPTOSS_F32);
    if (!experts || !args) fail(GPTOSS_INVALID_ARGUMENT, "null experts or args");
    const gptoss_moe_weights e = *experts;
    need(e.gate_up_blocks, "gate_up_blocks", GPTOSS_U8), need(e.gate_up_scales, "gate_up_scales", GPTOSS_U8);
    need(e.gate_up_bias, "gate_up_bias", GPTOSS_BF16), need(e.down_blocks, "down_blocks", GPTOSS_U8);
    need(e.down_scales, "down_scales", GPTOSS_U8), need(e.down_bias, "down_bias", GPTOSS_BF16);
    const int64_t hidden = cols(x), inter = args->intermediate_size, slots = ids->numel;
    const int32_t top_k = static_cast<int32_t>(cols(ids));
    expect(out->numel == x->numel && rows(ids) == rows(x) && hidden % 32 == 0 && inter % 32 == 0, "moe shapes");
    float* act = nullptr;
    cuda_check(cudaMalloc(&act, static_cast<size_t>(slots * inter) * sizeof(float) + 4), "cudaMalloc");
    ctx->temporaries.push_back(act);
    cuda_check(cudaMemsetAsync(out->device, 0, static_cast<size_t>(out->numel) * sizeof(float), ctx->stream), "memset");
    if (slots == 0) return;
    moe_gate_up_f32<<<dim3((inter + 7) / 8, slots), 256, 0, ctx->stream>>>(
        act, dev<float>(x), dev<int32_t>(ids), dev<uint8_t>(e.gate_up_blocks), dev<uint8_t>(e.gate_up_scales),
        dev<uint16_t>(e.gate_up_bias), top_k, hidden, inter, args->swiglu_limit);
    moe_down_f32<<<dim3((hidden + 7) / 8, slots), 256, 0, ctx->stream>>>(
        dev<float>(out), act, dev<int32_t>(ids), dev<float>(weights), dev<uint8_t>(e.down_blocks), dev<uint8_t>(e.down_scales),
        dev<uint16_t>(e.down_bias), top_k, hidden, inter);
  });
}

gptoss_status gptoss_add(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* a, gptoss_tensor* b) {
  return guard(ctx, "add_f32", [&] {
    need(out, "out", GPTOSS_F32), need(a, "a", GPTOSS_F32), need(b, "b", GPTOSS_F32);
    expect(out->numel == a->numel && a->numel == b->numel, "operands differ in size");
    if (a->numel > 0) add_f32<<<static_cast<unsigned>(std::min<int64_t>((a->numel + 255) / 256, 4096)), 256, 0, ctx->stream>>>(
        dev<float>(out), dev<float>(a), dev<float>(b), a->numel);
  });
}

gptoss_status gptoss_gather_rows(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* rows_t) {
  return guard(ctx, "gather_rows_f32", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(rows_t, "rows", GPTOSS_I32);
    expect(cols(out) == cols(x) && rows(out) == rows_t->numel, "gather shapes");
    if (rows_t->numel > 0) gather_rows_f32<<<rows_t->numel, 256, 0, ctx->stream>>>(dev<float>(out), dev<float>(x), dev<int32_t>(rows_t), cols(x));
  });
}

gptoss_status gptoss_flush(gptoss_context* ctx) {
  return guard(ctx, "flush", [&] {
    cuda_check(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize");
    for (void* p : ctx->temporaries) cudaFree(p);
    ctx->temporaries.clear();
  });
}

}  // extern "C"
