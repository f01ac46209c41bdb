// GPU memory bandwidth ceiling for bench/model_speed.ts --backend cuda: a read kernel (16-byte loads, the access
// pattern of decode, which only reads weights) and a copy kernel (bytes read + written), each over 4 GiB buffers
// (far beyond L2), the median of 20 timed runs after 3 warm-ups. Prints JSON.
//   nvcc -O3 -arch=native -o /tmp/cuda_membw bench/cuda_membw.cu && /tmp/cuda_membw
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#define CHECK(call)                                                                          \
  do {                                                                                       \
    cudaError_t e = (call);                                                                  \
    if (e != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e));                         \
      return 1;                                                                              \
    }                                                                                        \
  } while (0)

__global__ void read_kernel(const uint4* src, size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const uint4 v = __ldg(src + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *sink = acc;  // keeps the loads; practically never taken
}

__global__ void copy_kernel(uint4* dst, const uint4* src, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) dst[i] = src[i];
}

template <typename Launch>
float median_ms(Launch&& launch) {
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  for (int i = 0; i < 3; i++) launch();
  std::vector<float> times;
  for (int i = 0; i < 20; i++) {
    cudaEventRecord(a);
    launch();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int main() {
  const size_t bytes = size_t{4} << 30, n = bytes / sizeof(uint4);
  uint4 *a = nullptr, *b = nullptr;
  unsigned* sink = nullptr;
  CHECK(cudaMalloc(&a, bytes));
  CHECK(cudaMalloc(&b, bytes));
  CHECK(cudaMalloc(&sink, 4));
  CHECK(cudaMemset(a, 0x5a, bytes));
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const unsigned grid = static_cast<unsigned>(sms * 8);
  const float read_ms = median_ms([&] { read_kernel<<<grid, 256>>>(a, n, sink); });
  const float copy_ms = median_ms([&] { copy_kernel<<<grid, 256>>>(b, a, n); });
  CHECK(cudaGetLastError());
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("{\"device\": \"%s\", \"read_gb_per_s\": %.1f, \"copy_gb_per_s\": %.1f, \"buffer_bytes\": %zu}\n",
              prop.name, bytes / (read_ms * 1e6), 2.0 * bytes / (copy_ms * 1e6), bytes);
  return 0;
}
