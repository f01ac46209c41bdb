// NCCL for the CUDA library, loaded with dlopen (no nccl.h, no link-time dependency): the library builds and loads
// without NCCL, and only gptoss_nccl_open() says, in one line, that it is missing. The few declarations below are
// NCCL's stable C ABI (nccl.h 2.x): ncclResult_t is an int, ncclUniqueId 128 bytes, ncclFloat32 = 7, ncclSum = 0.
#pragma once

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <string>

#include "../include/gptoss.h"
#include "cuda_queue.cuh"

namespace gptoss::cuda::nccl {

using Comm = void*;
struct UniqueId {
  char internal[GPTOSS_NCCL_UNIQUE_ID_BYTES];
};
constexpr int kFloat32 = 7;
constexpr int kSum = 0;
/** The oldest NCCL whose collectives and error strings we rely on (2.12, 2022: ncclGetLastError and graph capture). */
constexpr int kMinVersion = 21200;

/** The entry points we call, resolved once per library handle. */
struct Api {
  int (*get_version)(int*) = nullptr;
  int (*get_unique_id)(UniqueId*) = nullptr;
  int (*comm_init_rank)(Comm*, int, UniqueId, int) = nullptr;
  int (*comm_destroy)(Comm) = nullptr;
  int (*all_reduce)(const void*, void*, size_t, int, int, Comm, cudaStream_t) = nullptr;
  int (*all_gather)(const void*, void*, size_t, int, Comm, cudaStream_t) = nullptr;
  int (*broadcast)(const void*, void*, size_t, int, int, Comm, cudaStream_t) = nullptr;
  const char* (*error_string)(int) = nullptr;
};

/** The process's NCCL: one handle at a time (a later open with another path replaces it when no comm is live). */
struct Library {
  std::mutex mutex;
  void* handle = nullptr;
  std::string path;
  Api api;
  int version = 0;
  int live_comms = 0;
};

inline Library& library() {
  static Library lib;
  return lib;
}

template <typename F>
void resolve(void* handle, const std::string& path, const char* name, F& slot) {
  slot = reinterpret_cast<F>(dlsym(handle, name));
  if (!slot) fail(GPTOSS_UNSUPPORTED, path + " lacks " + name + " (not an NCCL library, or one older than 2.12)");
}

/** Opens NCCL (`path` empty: "libnccl.so.2" through the dynamic loader) and checks its version; returns it. */
inline int open(const std::string& requested) {
  Library& lib = library();
  std::lock_guard<std::mutex> lock(lib.mutex);
  const std::string path = requested.empty() ? "libnccl.so.2" : requested;
  if (lib.handle && lib.path == path) return lib.version;
  if (lib.handle && lib.live_comms > 0) {
    fail(GPTOSS_INVALID_ARGUMENT, "NCCL is already open from " + lib.path + " with live communicators");
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    fail(GPTOSS_UNSUPPORTED, "cannot load NCCL (" + std::string(why ? why : path) +
                                 "): install NCCL 2.12+ (libnccl2) or set GPTOSS_NCCL_LIBRARY to libnccl.so.2");
  }
  Api api;
  try {
    resolve(handle, path, "ncclGetVersion", api.get_version);
    resolve(handle, path, "ncclGetUniqueId", api.get_unique_id);
    resolve(handle, path, "ncclCommInitRank", api.comm_init_rank);
    resolve(handle, path, "ncclCommDestroy", api.comm_destroy);
    resolve(handle, path, "ncclAllReduce", api.all_reduce);
    resolve(handle, path, "ncclAllGather", api.all_gather);
    resolve(handle, path, "ncclBroadcast", api.broadcast);
    resolve(handle, path, "ncclGetErrorString", api.error_string);
  } catch (...) {
    dlclose(handle);
    throw;
  }
  int version = 0;
  if (api.get_version(&version) != 0 || version < kMinVersion) {
    dlclose(handle);
    fail(GPTOSS_UNSUPPORTED, path + " is NCCL " + std::to_string(version) + "; gpt-oss-deno needs 2.12 (21200) or newer");
  }
  if (lib.handle) dlclose(lib.handle);
  lib.handle = handle;
  lib.path = path;
  lib.api = api;
  lib.version = version;
  return version;
}

/** The open library's entry points, or a one-line failure when gptoss_nccl_open() has not succeeded. */
inline const Api& api() {
  Library& lib = library();
  std::lock_guard<std::mutex> lock(lib.mutex);
  if (!lib.handle) fail(GPTOSS_INVALID_ARGUMENT, "NCCL is not open (call gptoss_nccl_open first)");
  return lib.api;
}

/** Fails with NCCL's own words for a non-zero result. */
inline void check(int result, const char* what) {
  if (result == 0) return;
  const char* text = library().api.error_string ? library().api.error_string(result) : "unknown error";
  fail(GPTOSS_INTERNAL, std::string(what) + ": " + text + " (ncclResult_t " + std::to_string(result) + ")");
}

/** out[t, r·n + j] = gathered[r, t, j]: NCCL's rank-major all-gather laid out as the ranks' columns side by side. */
__global__ void interleave_columns(float* out, const float* gathered, int64_t ranks, int64_t rows, int64_t n) {
  const int64_t total = ranks * rows * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / (rows * n), t = (i / n) % rows, j = i % n;
    out[t * ranks * n + r * n + j] = gathered[i];
  }
}

}  // namespace gptoss::cuda::nccl
