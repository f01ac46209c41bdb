// Shared device helpers of the CUDA kernels (one file per op beside this one, named like the CPU kernels) and the
// declarations ffi/src/gptoss_cuda.cu launches. All math is f32; bf16 and MXFP4 weights are widened in registers.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace gptoss::cuda {

__device__ __forceinline__ float bf16_to_f32(uint16_t bits) { return __uint_as_float(static_cast<uint32_t>(bits) << 16); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

/** 16 bytes of weights that are read once: not kept in L1 (ld.global.nc.L1::no_allocate). */
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

/** The 8 bf16 of `w` (low half of each word first) dotted with x[0..8). */
__device__ __forceinline__ float dot8_bf16(uint4 w, const float* x) {
  const float4 a = *reinterpret_cast<const float4*>(x), b = *reinterpret_cast<const float4*>(x + 4);
  float s = __uint_as_float(w.x << 16) * a.x;
  s = fmaf(__uint_as_float(w.x & 0xffff0000u), a.y, s);
  s = fmaf(__uint_as_float(w.y << 16), a.z, s);
  s = fmaf(__uint_as_float(w.y & 0xffff0000u), a.w, s);
  s = fmaf(__uint_as_float(w.z << 16), b.x, s);
  s = fmaf(__uint_as_float(w.z & 0xffff0000u), b.y, s);
  s = fmaf(__uint_as_float(w.w << 16), b.z, s);
  s = fmaf(__uint_as_float(w.w & 0xffff0000u), b.w, s);
  return s;
}

/** 2^(s − 127) exactly (s = 0 gives 2^-127, subnormal). */
__device__ __forceinline__ float e8m0(uint8_t s) {
  return s == 0 ? 5.877471754111438e-39f : __uint_as_float(static_cast<uint32_t>(s) << 23);
}

/** The first failure a kernel found in its inputs (an id out of range); gptoss_flush reports it. */
enum DeviceError : int32_t {
  kDeviceOk = 0,
  kEmbedIdOutOfRange = 1,
  kGatherRowOutOfRange = 2,
  kExpertIdOutOfRange = 3,
};
__device__ __forceinline__ void report(int32_t* error, int32_t code) { atomicCAS(error, 0, code); }

/**
 * One attention segment inside a step's descriptor (device copy): the fields of gptoss_attention's batch words, the
 * block tables as word offsets from the descriptor's start.
 */
struct Segment {
  int32_t row_offset, num_tokens, start_position, num_blocks, full_at, sliding_at;
};

// Kernels (definitions in the .cu file of each op).
__global__ void embed_f32_bf16w(float*, const uint16_t*, const int32_t*, int64_t, int64_t, int32_t*);
__global__ void rmsnorm_f32_bf16w(float*, const float*, const uint16_t*, int64_t, float);
void (*matmul_vec_kernel(int64_t tokens))(float*, const float*, const uint16_t*, const uint16_t*, int64_t, int64_t,
                                          int64_t);
__global__ void matmul_f32_bf16w(float*, const float*, const uint16_t*, const uint16_t*, int64_t, int64_t);
__global__ void rope_f32(float*, float*, const int32_t*, const float*, float, int64_t, int64_t, int64_t);
__global__ void kv_store_f32(float*, float*, const float*, const float*, const int32_t*, int32_t, int64_t, bool);
__global__ void attention_f32(float*, const float*, const float*, const float*, const uint16_t*, const int32_t*,
                              int32_t, int32_t, int32_t, int32_t, int32_t);
__global__ void moe_route_f32(int32_t*, float*, const float*, int64_t, int64_t, int32_t);
__global__ void moe_plan(int32_t*, const int32_t*, int64_t, int32_t, int32_t*);
void (*moe_pairs_kernel(bool gate_up, int64_t slots))(float*, const float*, const int32_t*, const uint8_t*,
                                                      const uint8_t*, const uint16_t*, int32_t, int32_t, int64_t,
                                                      int64_t, float);
__global__ void moe_combine_f32(float*, const float*, const float*, int32_t, int64_t, int64_t);
__global__ void add_f32(float*, const float*, const float*, int64_t);
__global__ void gather_rows_f32(float*, const float*, const int32_t*, int64_t, int64_t, int32_t*);

}  // namespace gptoss::cuda
