// AMX tile kernels for prefill: 32 weight rows × up to 16 tokens per tile pass, for the dense bf16 matmuls and the
// MXFP4 experts. C = W·Xᵀ with W as the A operand (its rows are tile rows: bf16 weights load straight from the
// checkpoint; MXFP4 rows are decoded to bf16 first, exactly) and the activations as the B operand in the VNNI pair
// layout, prepared once per call.
//
// Precision: TDPBF16PS multiplies bf16 by bf16 (exact in f32) and accumulates in f32. The activations are f32, so
// each is split into three bf16 parts, x = hi + mid + lo (24 significant bits: f32's own precision), and the tile
// product is taken with each part — the result differs from an f32 dot product by summation order only, like the
// vector kernels. (DAZ: a part below 2^−126 counts as 0, as FTZ/DAZ already do in the vector kernels.)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace gptoss::cpu {
namespace {

constexpr int kTileRows = 16;
constexpr int kChunk = 32;  // k elements per tile step (16 bf16 pairs)
constexpr int64_t kPartElems = 16 * 32;  // one B tile: 16 pair rows × 16 tokens × 2

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0, 1: C for weight rows [0, 16) and [16, 32) (16 rows × 16 f32). 2, 3: A (16 rows × 32 bf16).
// 4, 5, 6: B for the hi, mid and lo parts (16 pair rows × 32 bf16).
__attribute__((target("amx-tile"))) void load_config() {
  TileConfig config;
  for (int t = 0; t < 7; t++) {
    config.rows[t] = kTileRows;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
}

uint16_t bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// Writes C tiles 0 and 1 (weight rows × tokens) to out[t * out_stride + row] for the real tokens and rows.
__attribute__((target("amx-tile"))) void store_c(float* out, int64_t out_stride, int64_t tokens, int rows) {
  alignas(64) float c[2][kTileRows][16];
  _tile_stored(0, c[0], 64);
  _tile_stored(1, c[1], 64);
  for (int r = 0; r < rows; r++) {
    const float* line = c[r / 16][r % 16];
    for (int64_t t = 0; t < tokens; t++) out[t * out_stride + r] = line[t];
  }
}

// MXFP4 (2·FP4 values) → bf16, by nibble, as f32 for the per-block scaled table.
alignas(64) const float kFp4Twice[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
// Word w of a decoded block takes code byte w / 2 (both bytes of the word), shifted by 4 for odd w.
alignas(64) const uint8_t kDupBytes[64] = {
    0,  0,  0,  0,  1,  1,  1,  1,  2,  2,  2,  2,  3,  3,  3,  3,  4,  4,  4,  4,  5,  5,
    5,  5,  6,  6,  6,  6,  7,  7,  7,  7,  8,  8,  8,  8,  9,  9,  9,  9,  10, 10, 10, 10,
    11, 11, 11, 11, 12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15};

/** Decodes one MXFP4 block (16 code bytes, one scale) to 32 bf16 values in element order. */
__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512bf16"))) inline __m512i decode_block_bf16(
    const uint8_t* codes, float scale_half, __m512 twice, __m512i dup, __m512i shifts, __m512i low4) {
  const __m512i bytes = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  const __m512i nibbles = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi8(dup, bytes), shifts), low4);
  // 16 scaled values, rounded to bf16: exact (2·FP4 · 2^(e−128) has ≤ 4 significant bits) unless subnormal.
  const __m256bh table = _mm512_cvtneps_pbh(_mm512_mul_ps(twice, _mm512_set1_ps(scale_half)));
  return _mm512_permutexvar_epi16(nibbles, _mm512_castsi256_si512(reinterpret_cast<__m256i>(table)));
}

struct ScaleHalf {
  float value[256];
  ScaleHalf() {
    for (int s = 0; s < 256; s++) value[s] = std::ldexp(0.5f, s - 127);
  }
};
const ScaleHalf kScaleHalf;

}  // namespace

bool amx_available() {
  static const bool available = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512vbmi")) return false;
    unsigned eax, ebx, ecx, edx;
    __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    const bool amx_bf16 = (edx >> 22) & 1, amx_tile = (edx >> 24) & 1;
    if (!amx_bf16 || !amx_tile) return false;
    // Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return available;
}

int64_t amx_prepared_elems(int64_t tokens, int64_t k) {
  return (tokens + 15) / 16 * (k / kChunk) * 3 * kPartElems;
}

void amx_prepare(const float* x, int64_t x_stride, int64_t tokens, int64_t k, uint16_t* out) {
  const int64_t chunks = k / kChunk, token_tiles = (tokens + 15) / 16;
  std::memset(out, 0, static_cast<size_t>(amx_prepared_elems(tokens, k)) * 2);
  for (int64_t t = 0; t < tokens; t++) {
    const int64_t tile = t / 16, column = t % 16;
    for (int64_t i = 0; i < chunks * kChunk; i++) {
      const float v = x[t * x_stride + i];
      const uint16_t hi = bf16_rne(v);
      const float r1 = v - bf16_to_f32(hi);
      const uint16_t mid = bf16_rne(r1);
      const uint16_t lo = bf16_rne(r1 - bf16_to_f32(mid));
      uint16_t* parts = out + (tile * chunks + i / kChunk) * 3 * kPartElems;
      const int64_t at = ((i % kChunk) / 2) * 32 + column * 2 + (i % 2);
      parts[at] = hi;
      parts[kPartElems + at] = mid;
      parts[2 * kPartElems + at] = lo;
    }
  }
  (void)token_tiles;
}

__attribute__((target("amx-tile,amx-bf16"))) void amx_rows32_bf16(const uint16_t* w, int64_t k, const uint16_t* x,
                                                                  int64_t tokens, float* out, int64_t out_stride) {
  load_config();
  const int64_t chunks = k / kChunk;
  for (int64_t tile = 0; tile * 16 < tokens; tile++) {
    _tile_zero(0);
    _tile_zero(1);
    const uint16_t* parts = x + tile * chunks * 3 * kPartElems;
    for (int64_t c = 0; c < chunks; c++) {
      if (tile == 0) {  // 4 chunks ahead in each of the 32 rows (the streamers do not follow 32 streams)
        for (int r = 0; r < 32; r++) _mm_prefetch(reinterpret_cast<const char*>(w + r * k + (c + 4) * kChunk), _MM_HINT_T1);
      }
      _tile_loadd(2, w + c * kChunk, k * 2);
      _tile_loadd(3, w + 16 * k + c * kChunk, k * 2);
      const uint16_t* b = parts + c * 3 * kPartElems;
      _tile_loadd(4, b, 64);
      _tile_loadd(5, b + kPartElems, 64);
      _tile_loadd(6, b + 2 * kPartElems, 64);
      _tile_dpbf16ps(0, 2, 4);
      _tile_dpbf16ps(1, 3, 4);
      _tile_dpbf16ps(0, 2, 5);
      _tile_dpbf16ps(1, 3, 5);
      _tile_dpbf16ps(0, 2, 6);
      _tile_dpbf16ps(1, 3, 6);
    }
    store_c(out + tile * 16 * out_stride, out_stride, std::min<int64_t>(16, tokens - tile * 16), 32);
  }
}

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vbmi,avx512bf16"))) void amx_rows32_mxfp4(
    const uint8_t* blocks, const uint8_t* scales, int64_t k, const uint16_t* x, int64_t tokens, float* out,
    int64_t out_stride) {
  load_config();
  const int64_t chunks = k / kChunk;  // one MXFP4 block per row per chunk
  const __m512 twice = _mm512_load_ps(kFp4Twice);
  const __m512i dup = _mm512_load_si512(kDupBytes);
  const __m512i shifts = _mm512_set1_epi32(4 << 16);  // even words 0, odd words 4
  const __m512i low4 = _mm512_set1_epi16(0x0f);
  alignas(64) uint16_t a[32][32];
  for (int64_t tile = 0; tile * 16 < tokens; tile++) {
    _tile_zero(0);
    _tile_zero(1);
    const uint16_t* parts = x + tile * chunks * 3 * kPartElems;
    for (int64_t c = 0; c < chunks; c++) {
      for (int r = 0; r < 32; r++) {
        const uint8_t* row_blocks = blocks + (r * chunks + c) * 16;
        if (tile == 0 && (c & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(row_blocks + 8 * 16), _MM_HINT_T1);
        const __m512i v = decode_block_bf16(row_blocks, kScaleHalf.value[scales[r * chunks + c]], twice, dup, shifts,
                                            low4);
        _mm512_store_si512(a[r], v);
      }
      _tile_loadd(2, a[0], 64);
      _tile_loadd(3, a[16], 64);
      const uint16_t* b = parts + c * 3 * kPartElems;
      _tile_loadd(4, b, 64);
      _tile_loadd(5, b + kPartElems, 64);
      _tile_loadd(6, b + 2 * kPartElems, 64);
      _tile_dpbf16ps(0, 2, 4);
      _tile_dpbf16ps(1, 3, 4);
      _tile_dpbf16ps(0, 2, 5);
      _tile_dpbf16ps(1, 3, 5);
      _tile_dpbf16ps(0, 2, 6);
      _tile_dpbf16ps(1, 3, 6);
    }
    store_c(out + tile * 16 * out_stride, out_stride, std::min<int64_t>(16, tokens - tile * 16), 32);
  }
}

__attribute__((target("amx-tile"))) void amx_release() { _tile_release(); }

}  // namespace gptoss::cpu
