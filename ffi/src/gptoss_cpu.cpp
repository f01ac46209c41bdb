// The CPU implementation of ffi/include/gptoss.h: handles, validation at enqueue, a command queue run by
// gptoss_flush(), and the kernels in kernels/cpu/.
#include <omp.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xmmintrin.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <set>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "../../kernels/cpu/kernels.h"
#include "../include/gptoss.h"

using namespace gptoss::cpu;

struct gptoss_tensor {
  gptoss_dtype dtype;
  std::vector<int64_t> shape;
  int64_t numel;
  void* data;
  bool owned;
  /** Owned memory from mmap (map_weights: copies and quantized weights), released with munmap; else aligned_alloc's. */
  size_t mapped_bytes = 0;
};

/** Releases a tensor's owned memory. */
void release(gptoss_tensor* t) {
  if (!t->owned) return;
  if (t->mapped_bytes) munmap(t->data, t->mapped_bytes);
  else std::free(t->data);
}

/**
 * Anonymous memory for weights the context makes (copies, quantized tensors), in whole 2 MiB pages with the
 * huge-page hint: where transparent huge pages are "madvise" (Debian's default), memory from aligned_alloc streams
 * through 4 KiB pages and a TLB miss every 4 KiB.
 */
void* map_weights(size_t bytes, size_t* length) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  *length = std::max(page, (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20));
  void* memory = mmap(nullptr, *length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  madvise(memory, *length, MADV_HUGEPAGE);  // a hint, ignored where THP is off
  return memory;
}

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

struct gptoss_kv_pool {
  gptoss_kv_pool_spec spec;
  std::vector<KvLayer> layers;
  /** calloc'ed: large blocks come from mmap as untouched zero pages, so a big pool costs nothing until used. */
  std::vector<std::unique_ptr<float, FreeDeleter>> storage;
  uint64_t bytes;
};

/**
 * Threads when the caller gives none: 0 (OpenMP's own choice) when OMP_NUM_THREADS is set, else one per physical
 * core this process may run on (SMT siblings share a core's vector units and its bandwidth: a second thread per core
 * only adds contention to these kernels).
 */
int default_threads() {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  if (omp && *omp) return 0;
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return 0;
  std::set<std::pair<int, int>> cores;  // (package, core)
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    int package = -1, core = -1;
    if (FILE* f = std::fopen((dir + "physical_package_id").c_str(), "r")) {
      if (std::fscanf(f, "%d", &package) != 1) package = -1;
      std::fclose(f);
    }
    if (FILE* f = std::fopen((dir + "core_id").c_str(), "r")) {
      if (std::fscanf(f, "%d", &core) != 1) core = -1;
      std::fclose(f);
    }
    if (core < 0) return 0;  // no topology (a container without sysfs): OpenMP's choice
    cores.insert({package, core});
  }
  return static_cast<int>(cores.size());
}

/**
 * The one thread that runs every step of a context: every OpenMP parallel region then has the same master, the
 * same team and the same warm caches. gptoss_flush is called with `nonblocking: true`, i.e. on whichever of Deno's
 * blocking-pool threads is free; each of those would otherwise become the master of its own OpenMP team. The load's
 * parallel work (gptoss_tensor_quantize, gptoss_tensor_copy) runs here too: one more team, even idle, makes libgomp
 * manage more threads than there are CPUs, and it then spins only ~1,000 times at a barrier before sleeping, so every
 * barrier of every op became a futex wake. Measured on 2 cores (mini, q8, decode): a 32-row router matmul took
 * 60–100 µs, of which ~50 in fork, barrier and join; 10 µs with one team.
 */
class StepThread {
 public:
  explicit StepThread(int num_threads) : thread_([this, num_threads] { loop(num_threads); }) {}
  ~StepThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  /** Runs `job` on the step thread; the caller waits on a condition variable (no CPU). */
  void run(const std::function<void()>& job) {
    std::unique_lock<std::mutex> lock(mu_);
    job_ = &job;
    done_ = false;
    cv_.notify_all();
    cv_.wait(lock, [this] { return done_; });
  }

 private:
  void loop(int num_threads) {
    if (num_threads <= 0) num_threads = default_threads();
    if (num_threads > 0) omp_set_num_threads(num_threads);  // an ICV of the calling thread: set it on the master
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || job_ != nullptr; });
      if (stop_) return;
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      job_ = nullptr;
      done_ = true;
      cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void()>* job_ = nullptr;
  bool done_ = false, stop_ = false;
  std::thread thread_;
};

struct gptoss_context {
  std::unique_ptr<StepThread> step_thread;
  /** GPTOSS_FLAG_PROFILE: time spent per op, printed to stderr when the context is destroyed. */
  bool profile = false;
  /** GPTOSS_FLAG_INT8_ACTIVATIONS: the q8 mode's MoE activations. */
  bool int8_activations = false;
  std::vector<std::pair<std::string, double>> profile_ms;
  std::string last_error;
  std::vector<std::pair<std::string, std::function<void()>>> queue;
  std::vector<std::unique_ptr<gptoss_tensor>> tensors;
  std::vector<std::unique_ptr<gptoss_kv_pool>> pools;
};

namespace {

size_t dtype_size(gptoss_dtype d) {
  switch (d) {
    case GPTOSS_F32:
    case GPTOSS_I32: return 4;
    case GPTOSS_BF16: return 2;
    case GPTOSS_U8:
    case GPTOSS_Q8_0: return 1;  // plus the scales: see tensor_bytes
  }
  return 0;
}

/** Bytes of a tensor's storage (a Q8_0 matrix carries one f32 scale per 32 values after its int8 values). */
size_t tensor_bytes(const gptoss_tensor* t) {
  const size_t values = static_cast<size_t>(t->numel) * dtype_size(t->dtype);
  return t->dtype == GPTOSS_Q8_0 ? values + static_cast<size_t>(t->numel / 32) * 4 : values;
}

const char* dtype_name(gptoss_dtype d) {
  switch (d) {
    case GPTOSS_F32: return "f32";
    case GPTOSS_BF16: return "bf16";
    case GPTOSS_U8: return "u8";
    case GPTOSS_I32: return "i32";
    case GPTOSS_Q8_0: return "q8_0";
  }
  return "?";
}

/** Thrown by validation; turned into a status and gptoss_last_error() at the ABI boundary. */
struct Failure {
  gptoss_status status;
  std::string message;
};

[[noreturn]] void fail(gptoss_status status, const std::string& message) { throw Failure{status, message}; }

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
T* ptr(const gptoss_tensor* t) {
  return static_cast<T*>(t->data);
}

/** Runs `body` (validation + enqueue) and converts failures into a status and the context's last error. */
gptoss_status guard(gptoss_context* ctx, const char* op, const std::function<void()>& body) {
  if (!ctx) return GPTOSS_INVALID_ARGUMENT;
  try {
    body();
    return GPTOSS_OK;
  } catch (const Failure& f) {
    ctx->last_error = std::string(op) + ": " + f.message;
    return f.status;
  } catch (const std::bad_alloc&) {
    ctx->last_error = std::string(op) + ": out of memory";
    return GPTOSS_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    ctx->last_error = std::string(op) + ": " + e.what();
    return GPTOSS_INTERNAL;
  }
}

gptoss_status make_tensor(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape, void* data,
                          bool owned, gptoss_tensor** out) {
  return guard(ctx, owned ? "tensor_alloc" : "tensor_wrap", [&] {
    if (!out) fail(GPTOSS_INVALID_ARGUMENT, "out is null");
    if (dtype < GPTOSS_F32 || dtype > GPTOSS_I32) fail(GPTOSS_INVALID_ARGUMENT, "unknown dtype " + std::to_string(dtype));
    if (ndim < 0 || ndim > 8 || (ndim > 0 && !shape)) fail(GPTOSS_INVALID_ARGUMENT, "bad rank or null shape");
    auto t = std::make_unique<gptoss_tensor>();
    t->dtype = static_cast<gptoss_dtype>(dtype);
    t->numel = 1;
    for (int32_t i = 0; i < ndim; i++) {
      if (shape[i] < 0) fail(GPTOSS_INVALID_ARGUMENT, "negative dimension");
      t->shape.push_back(shape[i]);
      t->numel *= shape[i];
    }
    const size_t bytes = static_cast<size_t>(t->numel) * dtype_size(t->dtype);
    if (owned) {
      t->data = std::aligned_alloc(64, ((bytes + 63) / 64) * 64 + 64);
      if (!t->data) throw std::bad_alloc();
    } else {
      if (!data && bytes > 0) fail(GPTOSS_INVALID_ARGUMENT, "data is null");
      t->data = data;
    }
    t->owned = owned;
    *out = t.get();
    ctx->tensors.push_back(std::move(t));
  });
}

}  // namespace

extern "C" {

uint32_t gptoss_abi_version(void) { return GPTOSS_ABI_VERSION; }

const char* gptoss_backend_kind(void) {
  // Not cached and not fixing the path: a probe must not decide what a later context asks for.
  thread_local std::string kind;
  kind = std::string("cpu/") + isa_name(preview_isa());
  return kind.c_str();
}

namespace {
/** Why the last gptoss_context_create() on this thread failed. */
thread_local std::string g_create_error = "no context (gptoss_context_create failed or was not called)";
}  // namespace

gptoss_status gptoss_context_create(int32_t num_threads, uint32_t flags, const char* isa, gptoss_context** out) {
  if (!out) return GPTOSS_INVALID_ARGUMENT;
  if ((flags >> 16) != 0) {
    g_create_error = "the CPU library has one device (device " + std::to_string(flags >> 16) + " asked for)";
    return GPTOSS_INVALID_ARGUMENT;
  }
  const char* isa_error = nullptr;
  if (!gptoss::cpu::request_isa(isa, &isa_error)) {
    g_create_error = std::string(isa_error) + " (asked for \"" + (isa ? isa : "") + "\", fixed at " +
                     gptoss::cpu::isa_name(gptoss::cpu::detect_isa()) + ")";
    return std::string(isa_error).rfind("unknown", 0) == 0 ? GPTOSS_INVALID_ARGUMENT : GPTOSS_UNSUPPORTED;
  }
  gptoss::cpu::detect_isa();  // fixes the path now, not at the first op
  try {
    *out = new gptoss_context();
    (*out)->profile = (flags & (GPTOSS_FLAG_PROFILE | GPTOSS_FLAG_PROFILE_STEPS)) != 0;
    (*out)->int8_activations = (flags & GPTOSS_FLAG_INT8_ACTIVATIONS) != 0;
    (*out)->step_thread = std::make_unique<StepThread>(num_threads);
  } catch (const std::bad_alloc&) {
    delete *out;
    *out = nullptr;
    return GPTOSS_OUT_OF_MEMORY;
  } catch (const std::system_error&) {
    delete *out;
    *out = nullptr;
    return GPTOSS_INTERNAL;
  }
  return GPTOSS_OK;
}

void gptoss_context_destroy(gptoss_context* ctx) {
  if (!ctx) return;
  for (auto& [name, ms] : ctx->profile_ms) std::fprintf(stderr, "gptoss profile %-22s %10.1f ms\n", name.c_str(), ms);
  for (auto& t : ctx->tensors)
    release(t.get());
  delete ctx;
}

const char* gptoss_last_error(gptoss_context* ctx) {
  return ctx ? ctx->last_error.c_str() : g_create_error.c_str();
}

gptoss_status gptoss_tensor_wrap(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape, void* data,
                                 gptoss_tensor** out) {
  return make_tensor(ctx, dtype, ndim, shape, data, false, out);
}

gptoss_status gptoss_tensor_alloc(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape,
                                  gptoss_tensor** out) {
  return make_tensor(ctx, dtype, ndim, shape, nullptr, true, out);
}

gptoss_status gptoss_tensor_quantize(gptoss_context* ctx, const void* bf16, int64_t n, int64_t k, int32_t dtype,
                                     gptoss_tensor** out) {
  return guard(ctx, "tensor_quantize", [&] {
    if (!out || (!bf16 && n * k > 0)) fail(GPTOSS_INVALID_ARGUMENT, "out or data is null");
    if (dtype != GPTOSS_Q8_0) fail(GPTOSS_UNSUPPORTED, "only bf16 → q8_0 is implemented");
    expect(n >= 0 && k > 0 && k % 32 == 0,
           "the matrix must be [N, K] with K a multiple of 32, got [" + std::to_string(n) + ", " + std::to_string(k) + "]");
    auto t = std::make_unique<gptoss_tensor>();
    t->dtype = GPTOSS_Q8_0;
    t->shape = {n, k};
    t->numel = n * k;
    t->owned = true;
    t->data = map_weights(tensor_bytes(t.get()), &t->mapped_bytes);
    int8_t* values = ptr<int8_t>(t.get());
    float* scales = reinterpret_cast<float*>(values + n * k);
    const uint16_t* source = static_cast<const uint16_t*>(bf16);
    ctx->step_thread->run([&] {  // on the step thread's OpenMP team (see StepThread)
#pragma omp parallel for schedule(static)
      for (int64_t row = 0; row < n; row++) quantize_q8_bf16_row(source + row * k, k, values + row * k, scales + row * (k / 32));
    });
    *out = t.get();
    ctx->tensors.push_back(std::move(t));
  });
}

gptoss_status gptoss_tensor_copy(gptoss_context* ctx, int32_t dtype, int32_t ndim, const int64_t* shape, void* data,
                                 int32_t release_source, gptoss_tensor** out) {
  gptoss_tensor* wrapped = nullptr;
  const gptoss_status status = make_tensor(ctx, dtype, ndim, shape, data, false, &wrapped);
  if (status != GPTOSS_OK) return status;
  return guard(ctx, "tensor_copy", [&] {
    const size_t bytes = tensor_bytes(wrapped);
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t length = 0;
    void* memory = map_weights(bytes, &length);
    const size_t chunk = 1u << 20;
    ctx->step_thread->run([&] {  // on the step thread's OpenMP team (see StepThread)
#pragma omp parallel for schedule(static)
      for (size_t at = 0; at < bytes; at += chunk) {
        std::memcpy(static_cast<uint8_t*>(memory) + at, static_cast<const uint8_t*>(data) + at, std::min(chunk, bytes - at));
      }
    });
    // release_source: the source's whole pages leave this process (a file mapping's stay in the page cache).
    const uintptr_t first = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
    const uintptr_t last = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
    if (release_source && last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
    wrapped->data = memory;
    wrapped->owned = true;
    wrapped->mapped_bytes = length;
    *out = wrapped;
  });
}

gptoss_status gptoss_tensor_write(gptoss_context* ctx, gptoss_tensor* tensor, const void* data, size_t bytes) {
  return guard(ctx, "tensor_write", [&] {
    if (!tensor || !data) fail(GPTOSS_INVALID_ARGUMENT, "null tensor or data");
    const size_t size = tensor_bytes(tensor);
    if (bytes != size) fail(GPTOSS_SHAPE_MISMATCH, std::to_string(bytes) + " bytes for a tensor of " + std::to_string(size));
    std::vector<uint8_t> copy(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
    ctx->queue.emplace_back("tensor_write", [tensor, copy = std::move(copy)] { std::memcpy(tensor->data, copy.data(), copy.size()); });
  });
}

gptoss_status gptoss_tensor_read(gptoss_context* ctx, gptoss_tensor* tensor, void* data, size_t bytes) {
  const gptoss_status status = gptoss_flush(ctx);
  if (status != GPTOSS_OK) return status;
  return guard(ctx, "tensor_read", [&] {
    if (!tensor || !data) fail(GPTOSS_INVALID_ARGUMENT, "null tensor or data");
    const size_t size = tensor_bytes(tensor);
    if (bytes != size) fail(GPTOSS_SHAPE_MISMATCH, std::to_string(bytes) + " bytes for a tensor of " + std::to_string(size));
    std::memcpy(data, tensor->data, bytes);
  });
}

void gptoss_tensor_free(gptoss_context* ctx, gptoss_tensor* tensor) {
  if (!ctx || !tensor) return;
  for (auto it = ctx->tensors.begin(); it != ctx->tensors.end(); ++it) {
    if (it->get() == tensor) {
      release(tensor);
      ctx->tensors.erase(it);
      return;
    }
  }
}

gptoss_status gptoss_kv_pool_create(gptoss_context* ctx, const gptoss_kv_pool_spec* spec, const int32_t* layer_windows,
                                    gptoss_kv_pool** out) {
  return guard(ctx, "kv_pool_create", [&] {
    if (!spec || !out || (!layer_windows && spec->num_layers > 0)) fail(GPTOSS_INVALID_ARGUMENT, "null argument");
    if (spec->num_layers < 0 || spec->block_size <= 0 || spec->num_full_blocks < 0 || spec->num_sliding_blocks < 0 ||
        spec->num_key_value_heads <= 0 || spec->head_dim <= 0) {
      fail(GPTOSS_INVALID_ARGUMENT, "bad pool shape");
    }
    auto pool = std::make_unique<gptoss_kv_pool>();
    pool->spec = *spec;
    pool->bytes = 0;
    const int64_t row = static_cast<int64_t>(spec->num_key_value_heads) * spec->head_dim;
    for (int32_t l = 0; l < spec->num_layers; l++) {
      const int32_t window = layer_windows[l];
      const int64_t blocks = window > 0 ? spec->num_sliding_blocks : spec->num_full_blocks;
      const int64_t size = blocks * spec->block_size * row;
      auto keys = std::unique_ptr<float, FreeDeleter>(static_cast<float*>(std::calloc(static_cast<size_t>(size), sizeof(float))));
      auto values = std::unique_ptr<float, FreeDeleter>(static_cast<float*>(std::calloc(static_cast<size_t>(size), sizeof(float))));
      if ((size > 0 && !keys) || (size > 0 && !values)) throw std::bad_alloc();
      pool->layers.push_back(KvLayer{keys.get(), values.get(), blocks, window});
      pool->storage.push_back(std::move(keys));
      pool->storage.push_back(std::move(values));
      pool->bytes += static_cast<uint64_t>(size) * 8;
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
           "out " + shape_text(out) + " must be [ids, hidden of table " + shape_text(table) + "]");
    const int64_t vocab = table->shape[0];
    ctx->queue.emplace_back("embed_f32_bf16w", [=] {
      for (int64_t t = 0; t < ids->numel; t++) {
        const int32_t id = ptr<int32_t>(ids)[t];
        if (id < 0 || id >= vocab) fail(GPTOSS_INVALID_ARGUMENT, "token id " + std::to_string(id) + " outside the vocabulary");
      }
      embed_f32_bf16w(ptr<float>(out), ptr<uint16_t>(table), ptr<int32_t>(ids), ids->numel, cols(table));
    });
  });
}

gptoss_status gptoss_rmsnorm(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* weight,
                             float eps) {
  return guard(ctx, "rmsnorm_f32_bf16w", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(weight, "weight", GPTOSS_BF16);
    expect(out->numel == x->numel && weight->numel == cols(x), "x " + shape_text(x) + " and weight " + shape_text(weight));
    ctx->queue.emplace_back("rmsnorm_f32_bf16w", [=] {
      rmsnorm_f32_bf16w(ptr<float>(out), ptr<float>(x), ptr<uint16_t>(weight), rows(x), cols(x), eps);
    });
  });
}

gptoss_status gptoss_matmul(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* weight,
                            gptoss_tensor* bias) {
  return guard(ctx, "matmul_f32_bf16w", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32);
    if (!weight || weight->dtype != GPTOSS_Q8_0) need(weight, "weight", GPTOSS_BF16);
    if (bias) need(bias, "bias", GPTOSS_BF16);
    expect(weight->shape.size() == 2, "weight must be [N, K], got " + shape_text(weight));
    const int64_t n = weight->shape[0], k = weight->shape[1];
    expect(cols(x) == k, "x " + shape_text(x) + " does not match weight " + shape_text(weight));
    expect(cols(out) == n && rows(out) == rows(x), "out " + shape_text(out) + " must be [" + std::to_string(rows(x)) + ", " + std::to_string(n) + "]");
    expect(!bias || bias->numel == n, "bias " + (bias ? shape_text(bias) : std::string()) + " must have N entries");
    if (weight->dtype == GPTOSS_Q8_0) {
      const int8_t* values = ptr<int8_t>(weight);
      const float* scales = reinterpret_cast<const float*>(values + n * k);
      ctx->queue.emplace_back("matmul_f32_q8w", [=] {
        matmul_f32_q8w(ptr<float>(out), ptr<float>(x), values, scales, bias ? ptr<uint16_t>(bias) : nullptr, rows(x), n, k);
      });
      return;
    }
    ctx->queue.emplace_back("matmul_f32_bf16w", [=] {
      matmul_f32_bf16w(ptr<float>(out), ptr<float>(x), ptr<uint16_t>(weight), bias ? ptr<uint16_t>(bias) : nullptr,
                       rows(x), n, k);
    });
  });
}

gptoss_status gptoss_rope(gptoss_context* ctx, gptoss_tensor* q, gptoss_tensor* k, gptoss_tensor* positions,
                          gptoss_tensor* inv_freq, float concentration) {
  return guard(ctx, "rope_f32", [&] {
    need(q, "q", GPTOSS_F32), need(k, "k", GPTOSS_F32), need(positions, "positions", GPTOSS_I32);
    need(inv_freq, "inv_freq", GPTOSS_F32);
    const int64_t head_dim = inv_freq->numel * 2;
    expect(head_dim > 0 && head_dim <= 512 && cols(q) % head_dim == 0 && cols(k) % head_dim == 0,
           "head_dim " + std::to_string(head_dim) + " does not divide q " + shape_text(q) + " and k " + shape_text(k));
    expect(rows(q) == positions->numel && rows(k) == positions->numel, "q, k and positions differ in tokens");
    ctx->queue.emplace_back("rope_f32", [=] {
      rope_f32(ptr<float>(q), ptr<float>(k), ptr<int32_t>(positions), ptr<float>(inv_freq), concentration, rows(q),
               cols(q), cols(k), head_dim);
    });
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
        a.num_heads % a.num_key_value_heads != 0) {
      fail(GPTOSS_SHAPE_MISMATCH, "heads do not match the pool");
    }
    expect(cols(q) == int64_t{a.num_heads} * a.head_dim && cols(k) == int64_t{a.num_key_value_heads} * a.head_dim &&
               k->numel == v->numel && out->numel == q->numel && sinks->numel == a.num_heads,
           "q " + shape_text(q) + ", k " + shape_text(k) + " or sinks do not match the heads");
    // Copy and check the batch descriptor now: the caller's buffer may be reused before flush.
    auto words = std::make_shared<std::vector<int32_t>>(batch, batch + batch_length);
    auto segments = std::make_shared<std::vector<Segment>>();
    size_t at = 1;
    const int32_t count = batch_length > 0 ? (*words)[0] : -1;
    if (count < 0) fail(GPTOSS_INVALID_ARGUMENT, "empty batch descriptor");
    const KvLayer& layer = pool->layers[static_cast<size_t>(a.layer)];
    for (int32_t s = 0; s < count; s++) {
      if (at + 4 > words->size()) fail(GPTOSS_INVALID_ARGUMENT, "truncated batch descriptor");
      Segment seg{(*words)[at], (*words)[at + 1], (*words)[at + 2], (*words)[at + 3], nullptr, nullptr};
      at += 4;
      if (seg.num_blocks < 0 || at + 2 * static_cast<size_t>(seg.num_blocks) > words->size()) {
        fail(GPTOSS_INVALID_ARGUMENT, "truncated block tables");
      }
      seg.full_blocks = words->data() + at;
      seg.sliding_blocks = words->data() + at + seg.num_blocks;
      at += 2 * static_cast<size_t>(seg.num_blocks);
      const int64_t end = int64_t{seg.start_position} + seg.num_tokens;
      if (seg.row_offset < 0 || seg.num_tokens < 0 || seg.start_position < 0 || seg.row_offset + seg.num_tokens > rows(q)) {
        fail(GPTOSS_INVALID_ARGUMENT, "segment rows out of range");
      }
      if ((end + pool->spec.block_size - 1) / pool->spec.block_size > seg.num_blocks) {
        fail(GPTOSS_INVALID_ARGUMENT, "block table too short for position " + std::to_string(end - 1));
      }
      // Every block a query of this step touches must exist in this layer's group.
      const int64_t first = a.window > 0 ? std::max<int64_t>(0, seg.start_position - a.window + 1) : 0;
      const int32_t* table = a.window > 0 ? seg.sliding_blocks : seg.full_blocks;
      for (int64_t b = first / pool->spec.block_size; b * pool->spec.block_size < end; b++) {
        if (table[b] < 0 || table[b] >= layer.num_blocks) fail(GPTOSS_INVALID_ARGUMENT, "invalid block id in table");
      }
      segments->push_back(seg);
    }
    const int32_t block_size = pool->spec.block_size;
    ctx->queue.emplace_back("attention_f32", [=] {
      attention_f32(ptr<float>(out), ptr<float>(q), ptr<float>(k), ptr<float>(v), ptr<uint16_t>(sinks), layer,
                    block_size, segments->data(), static_cast<int32_t>(segments->size()), a.num_heads,
                    a.num_key_value_heads, a.head_dim);
      (void)words;  // keeps the block tables alive until the command ran
    });
  });
}

gptoss_status gptoss_moe_route(gptoss_context* ctx, gptoss_tensor* ids, gptoss_tensor* weights, gptoss_tensor* logits,
                               int32_t top_k) {
  return guard(ctx, "moe_route_f32", [&] {
    need(ids, "ids", GPTOSS_I32), need(weights, "weights", GPTOSS_F32), need(logits, "logits", GPTOSS_F32);
    expect(top_k > 0 && top_k <= cols(logits) && ids->numel == rows(logits) * top_k && weights->numel == ids->numel,
           "ids/weights must be [tokens, top_k] for logits " + shape_text(logits));
    ctx->queue.emplace_back("moe_route_f32", [=] {
      moe_route_f32(ptr<int32_t>(ids), ptr<float>(weights), ptr<float>(logits), rows(logits), cols(logits), top_k);
    });
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
    const int64_t hidden = cols(x), inter = args->intermediate_size;
    expect(e.gate_up_blocks->shape.size() == 4, "gate_up_blocks must be [E, 2I, H/32, 16]");
    const int64_t num_experts = e.gate_up_blocks->shape[0];
    expect(e.gate_up_blocks->shape[1] == 2 * inter && e.gate_up_blocks->shape[2] * 32 == hidden &&
               e.gate_up_scales->numel * 16 == e.gate_up_blocks->numel && e.gate_up_bias->numel == num_experts * 2 * inter,
           "gate_up tensors do not match hidden " + std::to_string(hidden) + " and intermediate " + std::to_string(inter));
    expect(e.down_blocks->numel == num_experts * hidden * inter / 2 && e.down_scales->numel * 16 == e.down_blocks->numel &&
               e.down_bias->numel == num_experts * hidden,
           "down tensors do not match");
    expect(out->numel == x->numel && rows(ids) == rows(x) && weights->numel == ids->numel, "out/ids/weights shapes");
    const int32_t top_k = static_cast<int32_t>(cols(ids));
    const float limit = args->swiglu_limit;
    const bool int8 = ctx->int8_activations;
    MoeWeights w{ptr<uint8_t>(e.gate_up_blocks), ptr<uint8_t>(e.gate_up_scales), ptr<uint16_t>(e.gate_up_bias),
                 ptr<uint8_t>(e.down_blocks),    ptr<uint8_t>(e.down_scales),    ptr<uint16_t>(e.down_bias),
                 num_experts};
    ctx->queue.emplace_back("moe_mlp_f32_mxfp4w", [=] {
      for (int64_t i = 0; i < ids->numel; i++) {
        const int32_t id = ptr<int32_t>(ids)[i];
        if (id < 0 || id >= num_experts) fail(GPTOSS_INVALID_ARGUMENT, "expert id out of range");
      }
      moe_mlp_f32_mxfp4w(ptr<float>(out), ptr<float>(x), ptr<int32_t>(ids), ptr<float>(weights), w, rows(x), top_k,
                         hidden, inter, limit, int8);
    });
  });
}

gptoss_status gptoss_add(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* a, gptoss_tensor* b) {
  return guard(ctx, "add_f32", [&] {
    need(out, "out", GPTOSS_F32), need(a, "a", GPTOSS_F32), need(b, "b", GPTOSS_F32);
    expect(out->numel == a->numel && a->numel == b->numel, "operands differ in size");
    ctx->queue.emplace_back("add_f32", [=] { add_f32(ptr<float>(out), ptr<float>(a), ptr<float>(b), a->numel); });
  });
}

gptoss_status gptoss_gather_rows(gptoss_context* ctx, gptoss_tensor* out, gptoss_tensor* x, gptoss_tensor* rows_t) {
  return guard(ctx, "gather_rows_f32", [&] {
    need(out, "out", GPTOSS_F32), need(x, "x", GPTOSS_F32), need(rows_t, "rows", GPTOSS_I32);
    expect(cols(out) == cols(x) && rows(out) == rows_t->numel, "out must be [rows, width of x]");
    ctx->queue.emplace_back("gather_rows_f32", [=] {
      for (int64_t r = 0; r < rows_t->numel; r++) {
        const int32_t row = ptr<int32_t>(rows_t)[r];
        if (row < 0 || row >= rows(x)) fail(GPTOSS_INVALID_ARGUMENT, "row index out of range");
      }
      gather_rows_f32(ptr<float>(out), ptr<float>(x), ptr<int32_t>(rows_t), rows_t->numel, cols(x));
    });
  });
}

gptoss_status gptoss_flush(gptoss_context* ctx) {
  if (!ctx) return GPTOSS_INVALID_ARGUMENT;
  if (ctx->queue.empty()) return GPTOSS_OK;
  gptoss_status status = GPTOSS_OK;
  ctx->step_thread->run([&] {
    // Flush denormals to zero on every worker thread (and this one): a subnormal product costs a microcode assist
    // of ~100 cycles on x86, and values below 1.2e-38 cannot change any logit we report.
#pragma omp parallel
    _mm_setcsr(_mm_getcsr() | 0x8040);
    _mm_setcsr(_mm_getcsr() | 0x8040);
    auto queue = std::move(ctx->queue);
    ctx->queue.clear();
    for (auto& [name, command] : queue) {
      const double start = ctx->profile ? omp_get_wtime() : 0;
      status = guard(ctx, name.c_str(), command);
      if (status != GPTOSS_OK) return;  // the rest of the step is dropped
      if (ctx->profile) {
        const double ms = (omp_get_wtime() - start) * 1000;
        auto it =
            std::find_if(ctx->profile_ms.begin(), ctx->profile_ms.end(), [&](auto& p) { return p.first == name; });
        if (it == ctx->profile_ms.end()) ctx->profile_ms.emplace_back(name, ms);
        else it->second += ms;
      }
    }
  });
  return status;
}

// ---- Devices and collectives: a CUDA matter. CPU ranks share host memory (src/backends/communicator.ts). ----

namespace {
gptoss_status no_devices(const char* what) {
  g_create_error = std::string(what) + ": the CPU library has no CUDA devices or NCCL (ranks in one process use the "
                   "host communicator)";
  return GPTOSS_UNSUPPORTED;
}
gptoss_status no_collectives(gptoss_context* ctx, const char* what) {
  if (!ctx) return GPTOSS_INVALID_ARGUMENT;
  ctx->last_error = std::string(what) + ": the CPU library has no NCCL (ranks in one process use the host communicator)";
  return GPTOSS_UNSUPPORTED;
}
}  // namespace

gptoss_status gptoss_device_count(int32_t*) { return no_devices("device_count"); }
gptoss_status gptoss_device_info(int32_t, gptoss_device_props*) { return no_devices("device_info"); }
gptoss_status gptoss_nccl_open(const char*, int32_t*) { return no_devices("nccl_open"); }
gptoss_status gptoss_nccl_unique_id(uint8_t*, size_t) { return no_devices("nccl_unique_id"); }
gptoss_status gptoss_comm_init(gptoss_context* ctx, const uint8_t*, size_t, int32_t, int32_t, gptoss_comm**) {
  return no_collectives(ctx, "comm_init");
}
gptoss_status gptoss_comm_all_reduce_sum(gptoss_context* ctx, gptoss_comm*, gptoss_tensor*) {
  return no_collectives(ctx, "comm_all_reduce_sum");
}
gptoss_status gptoss_comm_all_gather(gptoss_context* ctx, gptoss_comm*, gptoss_tensor*, gptoss_tensor*) {
  return no_collectives(ctx, "comm_all_gather");
}
gptoss_status gptoss_comm_broadcast(gptoss_context* ctx, gptoss_comm*, gptoss_tensor*, int32_t) {
  return no_collectives(ctx, "comm_broadcast");
}
gptoss_status gptoss_comm_barrier(gptoss_context* ctx, gptoss_comm*) { return no_collectives(ctx, "comm_barrier"); }
void gptoss_comm_destroy(gptoss_context*, gptoss_comm*) {}

}  // extern "C"
