// The CUDA context's machinery below the ABI: the command queue and its CUDA graphs, per-step scratch memory, the
// pinned staging area for attention descriptors, the device error word and per-op profiling. Included once, by
// ffi/src/gptoss_cuda.cu.
//
// Ops only validate and record commands (a kernel launch with its arguments, a copy); gptoss_flush runs
// them. Each command also appends its launch parameters and argument bits to the step's key. When a step's key
// was seen in one of the last few steps (a decode step: same tensors, same shapes), the step is captured once as a
// CUDA graph (a few are kept) and later steps with that key replay it: one launch instead of ~15 per layer. What varies between such steps
// (token ids, positions, block tables) lives in device tensors or in the pinned descriptor area, whose copy nodes
// read it again at every replay. The context-create flags choose the rest (main.ts maps the environment onto them):
// GPTOSS_FLAG_NO_GRAPHS (GPTOSS_CUDA_GRAPHS=0) launches every command directly; GPTOSS_FLAG_PROFILE
// (GPTOSS_PROFILE=1) times each op with events (and launches directly) and prints the totals when the context is
// destroyed; GPTOSS_FLAG_PROFILE_STEPS (GPTOSS_PROFILE=steps) prints only the host time per flush and graph counts.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

struct Failure {
  gptoss_status status;
  std::string message;
};

[[noreturn]] inline void fail(gptoss_status status, const std::string& message) { throw Failure{status, message}; }

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    fail(err == cudaErrorMemoryAllocation ? GPTOSS_OUT_OF_MEMORY : GPTOSS_INTERNAL,
         std::string(what) + ": " + cudaGetErrorString(err));
  }
}

/** Device memory handed out in order during a step and taken back whole at flush; it grows by replacement. */
class StepArena {
 public:
  void* take(size_t bytes) {
    bytes = (bytes + 255) / 256 * 256;
    if (used_ + bytes > capacity_) {
      // The old buffer may still be read by commands of this step: it is freed at the next reset.
      if (base_) retired_.push_back(base_);
      capacity_ = std::max<size_t>({capacity_ * 2, bytes * 2, size_t{16} << 20});
      base_ = nullptr;
      used_ = 0;
      cuda_check(cudaMalloc(&base_, capacity_), "cudaMalloc (step scratch)");
    }
    void* p = static_cast<char*>(base_) + used_;
    used_ += bytes;
    return p;
  }
  void reset() {
    for (void* p : retired_) cudaFree(p);
    retired_.clear();
    used_ = 0;
  }
  ~StepArena() {
    reset();
    if (base_) cudaFree(base_);
  }

 private:
  void* base_ = nullptr;
  size_t capacity_ = 0, used_ = 0;
  std::vector<void*> retired_;
};

/**
 * Attention descriptors: written into pinned host memory at enqueue and copied to the device by a command of the
 * step, so no op allocates or synchronizes. Layers of one step share their tables: an identical descriptor is
 * copied once and reused.
 */
class DescriptorStage {
 public:
  /** The device address of `words` for commands of this step (one copy command is recorded when it is new). */
  template <typename Record>
  const int32_t* place(const std::vector<int32_t>& words, Record&& record_copy) {
    if (words == last_ && last_at_ != SIZE_MAX) return device_ + last_at_;
    if (used_ + words.size() > capacity_) grow(words.size());
    std::memcpy(host_ + used_, words.data(), words.size() * sizeof(int32_t));
    record_copy(device_ + used_, host_ + used_, words.size() * sizeof(int32_t));
    last_ = words;
    last_at_ = used_;
    used_ += (words.size() + 63) / 64 * 64;  // 256-byte aligned starts
    return device_ + last_at_;
  }
  void reset() {
    for (int32_t* p : retired_device_) cudaFree(p);
    for (int32_t* p : retired_host_) cudaFreeHost(p);
    retired_device_.clear();
    retired_host_.clear();
    used_ = 0;
    last_at_ = SIZE_MAX;
  }
  ~DescriptorStage() {
    reset();
    if (device_) cudaFree(device_);
    if (host_) cudaFreeHost(host_);
  }

 private:
  void grow(size_t need) {
    if (device_) retired_device_.push_back(device_), retired_host_.push_back(host_);
    capacity_ = std::max<size_t>({capacity_ * 2, need * 2, size_t{1} << 18});
    device_ = nullptr;
    host_ = nullptr;
    used_ = 0;
    last_at_ = SIZE_MAX;
    cuda_check(cudaMalloc(&device_, capacity_ * sizeof(int32_t)), "cudaMalloc (descriptors)");
    cuda_check(cudaMallocHost(&host_, capacity_ * sizeof(int32_t)), "cudaMallocHost (descriptors)");
  }
  int32_t* device_ = nullptr;
  int32_t* host_ = nullptr;
  size_t capacity_ = 0, used_ = 0, last_at_ = SIZE_MAX;
  std::vector<int32_t> last_;
  std::vector<int32_t*> retired_device_, retired_host_;
};

/** One recorded command: the public op it belongs to and how to issue it on a stream. */
struct Command {
  const char* op;
  std::function<void(cudaStream_t)> issue;
};

inline uint64_t bits_of(const void* p) { return reinterpret_cast<uintptr_t>(p); }
inline uint64_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
uint64_t bits_of(T v) {
  return static_cast<uint64_t>(v);
}

/** The queue of one context: commands of the current step, its key, and the graph of the last repeated key. */
class CommandQueue {
 public:
  /** Graphs on unless GPTOSS_FLAG_NO_GRAPHS; per-op events with GPTOSS_FLAG_PROFILE (PROFILE_STEPS: host times). */
  void configure(uint32_t flags) {
    graphs_ = (flags & GPTOSS_FLAG_NO_GRAPHS) == 0;
    profile_ = (flags & GPTOSS_FLAG_PROFILE) != 0;
  }

  /** Records kernel<<<grid, block, shared>>>(args...) for op `op`. */
  template <typename... Params, typename... Args>
  void launch(const char* op, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, Args... args) {
    std::tuple<Params...> packed(static_cast<Params>(args)...);
    sign(bits_of(reinterpret_cast<const void*>(kernel)), grid.x, grid.y, grid.z, block.x, shared);
    std::apply([&](const auto&... a) { sign(bits_of(a)...); }, packed);
    commands_.push_back({op, [=](cudaStream_t s) {
                           std::apply([&](auto... a) { kernel<<<grid, block, shared, s>>>(a...); }, packed);
                         }});
  }

  void copy(const char* op, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    sign(1, bits_of(dst), bits_of(src), bytes, static_cast<uint64_t>(kind));
    commands_.push_back({op, [=](cudaStream_t s) { cudaMemcpyAsync(dst, src, bytes, kind, s); }});
  }

  bool empty() const { return commands_.empty(); }

  /** Issues the step's commands on `stream` (replaying or capturing a graph where it can); the caller syncs. */
  void issue(cudaStream_t stream) {
    if (commands_.empty()) return;
    try {
      issue_step(stream);
    } catch (...) {
      commands_.clear();
      key_.clear();
      throw;
    }
    key_.clear();
    commands_.clear();
  }

  /** After the stream synchronized: adds this step's event times to the per-op totals. */
  void collect_profile() {
    for (auto& [op, events] : timed_) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, events.first, events.second) == cudaSuccess) profile_ms_[op] += ms;
      cudaEventDestroy(events.first);
      cudaEventDestroy(events.second);
    }
    timed_.clear();
  }

  /** Host time of a flush: `issue_ms` spent launching, `wait_ms` waiting for the device; since the last flush. */
  void add_step_times(double enqueue_ms, double issue_ms, double wait_ms) {
    steps_++;
    enqueue_ms_ += enqueue_ms, issue_ms_ += issue_ms, wait_ms_ += wait_ms;
  }

  void print_profile() const {
    for (const auto& [op, ms] : profile_ms_) std::fprintf(stderr, "gptoss profile %-22s %10.1f ms\n", op.c_str(), ms);
    std::fprintf(stderr, "gptoss host: %llu flushes; between flushes (enqueue) %.1f ms, issuing %.1f ms, waiting %.1f ms\n",
                 static_cast<unsigned long long>(steps_), enqueue_ms_, issue_ms_, wait_ms_);
    std::fprintf(stderr, "gptoss cuda graphs: %llu launched, %llu captured\n",
                 static_cast<unsigned long long>(graph_launches_), static_cast<unsigned long long>(captures_));
  }

  ~CommandQueue() {
    for (Graph& g : graphs_cache_) cudaGraphExecDestroy(g.exec);
  }

 private:
  /** A captured step: its key and executable graph; `used` orders eviction. */
  struct Graph {
    uint64_t hash;
    std::vector<uint64_t> key;
    cudaGraphExec_t exec;
    uint64_t used;
  };
  static constexpr size_t kGraphs = 4, kHistory = 4;

  static uint64_t hash_of(const std::vector<uint64_t>& key) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t w : key) h = (h ^ w) * 1099511628211ull;
    return h;
  }

  // A key seen among the last few steps is captured (decode alternates between a few keys: the TS side hands
  // freed tensors back in another order, and every 16 tokens a block is added); a captured key is replayed.
  void issue_step(cudaStream_t stream) {
    const uint64_t hash = hash_of(key_);
    clock_++;
    if (graphs_ && !profile_) {
      for (Graph& g : graphs_cache_) {
        if (g.hash == hash && g.key == key_) {
          g.used = clock_;
          cuda_check(cudaGraphLaunch(g.exec, stream), "cudaGraphLaunch");
          graph_launches_++;
          return;
        }
      }
      const bool seen = std::find(history_.begin(), history_.end(), hash) != history_.end();
      remember(hash);
      if (seen) return capture_and_launch(stream, hash);
    }
    issue_directly(stream);
  }

  void remember(uint64_t hash) {
    history_.push_back(hash);
    if (history_.size() > kHistory) history_.erase(history_.begin());
  }

  template <typename... Words>
  void sign(Words... words) {
    (key_.push_back(static_cast<uint64_t>(words)), ...);
  }

  void issue_directly(cudaStream_t stream) {
    for (const Command& c : commands_) {
      cudaEvent_t start = nullptr, stop = nullptr;
      if (profile_) {
        cudaEventCreate(&start), cudaEventCreate(&stop);
        cudaEventRecord(start, stream);
      }
      c.issue(stream);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) fail(GPTOSS_INTERNAL, std::string(c.op) + ": launch: " + cudaGetErrorString(err));
      if (profile_) {
        cudaEventRecord(stop, stream);
        timed_.emplace_back(c.op, std::make_pair(start, stop));
      }
    }
  }

  void capture_and_launch(cudaStream_t stream, uint64_t hash) {
    cudaGraph_t graph = nullptr;
    cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    for (const Command& c : commands_) c.issue(stream);
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    if (ended != cudaSuccess || !graph) {
      cudaGetLastError();
      graphs_ = false;  // this device or driver cannot capture these commands: launch them one by one from now on
      issue_directly(stream);
      return;
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    cuda_check(made, "cudaGraphInstantiate");
    if (graphs_cache_.size() == kGraphs) {
      auto oldest = std::min_element(graphs_cache_.begin(), graphs_cache_.end(),
                                     [](const Graph& a, const Graph& b) { return a.used < b.used; });
      cudaGraphExecDestroy(oldest->exec);
      graphs_cache_.erase(oldest);
    }
    graphs_cache_.push_back({hash, key_, exec, clock_});
    captures_++;
    cuda_check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    graph_launches_++;
  }

  std::vector<Command> commands_;
  std::vector<uint64_t> key_;
  std::vector<Graph> graphs_cache_;
  std::vector<uint64_t> history_;
  uint64_t clock_ = 0;
  bool graphs_ = true, profile_ = false;
  uint64_t graph_launches_ = 0, captures_ = 0, steps_ = 0;
  double enqueue_ms_ = 0, issue_ms_ = 0, wait_ms_ = 0;
  std::vector<std::pair<const char*, std::pair<cudaEvent_t, cudaEvent_t>>> timed_;
  std::map<std::string, double> profile_ms_;
};
