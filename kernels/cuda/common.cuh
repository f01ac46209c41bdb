// Shared device helpers of the CUDA kernels (one file per op beside this one, named like the CPU kernels).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace gptoss::cuda {

__device__ __forceinline__ float bf16_to_f32(uint16_t bits) { return __uint_as_float(static_cast<uint32_t>(bits) << 16); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// FP4 E2M1 values by nibble (bit 3 = sign).
__device__ __constant__ static float kFp4[16] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                                                 -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

/** 2^(s − 127) exactly (s = 0 gives 2^-127, subnormal). */
__device__ __forceinline__ float e8m0(uint8_t s) { return s == 0 ? 5.877471754111438e-39f : __uint_as_float(static_cast<uint32_t>(s) << 23); }

/** Dot of one MXFP4 row (num_blocks × 32 weights) with x, by one warp: lane i takes blocks i, i+32, … */
__device__ __forceinline__ float mxfp4_row_dot(const uint8_t* blocks, const uint8_t* scales, const float* x,
                                               int64_t num_blocks) {
  float acc = 0.f;
  for (int64_t g = threadIdx.x % 32; g < num_blocks; g += 32) {
    const float scale = e8m0(scales[g]);
    const uint8_t* b = blocks + g * 16;
    const float* xg = x + g * 32;
    float block = 0.f;
#pragma unroll
    for (int j = 0; j < 16; j++) block += kFp4[b[j] & 15] * xg[2 * j] + kFp4[b[j] >> 4] * xg[2 * j + 1];
    acc += block * scale;
  }
  return warp_sum(acc);
}

struct Segment {
  int32_t row_offset, num_tokens, start_position, num_blocks;
  const int32_t* full_blocks;
  const int32_t* sliding_blocks;
};

}  // namespace gptoss::cuda
