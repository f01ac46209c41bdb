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
// 4, 5, 6: B for the hi, mid and lo parts (16 pair rows × 32 bf16); packed: 4, and 5, 6, 7 = A, A, B of a second
// chunk.
__attribute__((target("amx-tile"))) void load_config() {
  TileConfig config;
  for (int t = 0; t < 8; t++) {
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

/**
 * B layout. Standard: 16 tokens per tile pass, one B tile per part (3 tile products per A tile). Packed, for up to
 * 5 tokens: 5 tokens × 3 parts in the columns of one B tile (column 3t + p), 1 tile product per A tile, the parts
 * summed when C is stored. More packed passes would decode MXFP4 rows again per pass, which costs more than the
 * tile products saved (bench/native_kernels.sh: 20b MoE at 64 tokens, 86 → 120 ms per layer).
 */
struct Layout {
  bool packed;
  int64_t tokens_per_pass, b_tiles_per_chunk, passes;
};
Layout layout_for(int64_t tokens) {
  if (tokens <= 5) return {true, 5, 1, 1};
  return {false, 16, 3, (tokens + 15) / 16};
}

// Writes C tiles 0 and 1 of one pass to out[t * out_stride + row]: packed columns 3t..3t+2 are hi, mid, lo parts.
__attribute__((target("amx-tile"))) void store_pass(const Layout& layout, float* out, int64_t out_stride,
                                                    int64_t tokens) {
  if (!layout.packed) return store_c(out, out_stride, tokens, 32);
  alignas(64) float c[2][kTileRows][16];
  _tile_stored(0, c[0], 64);
  _tile_stored(1, c[1], 64);
  for (int r = 0; r < 32; r++) {
    const float* line = c[r / 16][r % 16];
    for (int64_t t = 0; t < tokens; t++) out[t * out_stride + r] = line[3 * t] + line[3 * t + 1] + line[3 * t + 2];
  }
}


// C tiles 0, 1 += A tiles 2, 3 × this chunk's B: one tile (packed) or the hi, mid and lo parts (tiles 4, 5, 6).
__attribute__((target("amx-tile,amx-bf16"))) inline void multiply_chunk(const uint16_t* b, bool packed) {
  _tile_loadd(4, b, 64);
  _tile_dpbf16ps(0, 2, 4);
  _tile_dpbf16ps(1, 3, 4);
  if (packed) return;
  _tile_loadd(5, b + kPartElems, 64);
  _tile_loadd(6, b + 2 * kPartElems, 64);
  _tile_dpbf16ps(0, 2, 5);
  _tile_dpbf16ps(1, 3, 5);
  _tile_dpbf16ps(0, 2, 6);
  _tile_dpbf16ps(1, 3, 6);
}

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
  const Layout layout = layout_for(tokens);
  return layout.passes * (k / kChunk) * layout.b_tiles_per_chunk * kPartElems;
}

void amx_prepare(const float* x, int64_t x_stride, int64_t tokens, int64_t k, uint16_t* out, bool mxfp4_order) {
  const Layout layout = layout_for(tokens);
  const int64_t chunks = k / kChunk;
  const bool split = mxfp4_order && chunks % 2 == 0;
  std::memset(out, 0, static_cast<size_t>(amx_prepared_elems(tokens, k)) * 2);
  for (int64_t t = 0; t < tokens; t++) {
    const int64_t pass = t / layout.tokens_per_pass, slot = t % layout.tokens_per_pass;
    for (int64_t i = 0; i < chunks * kChunk; i++) {
      const float v = x[t * x_stride + i];
      const uint16_t hi = bf16_rne(v);
      const float r1 = v - bf16_to_f32(hi);
      const uint16_t mid = bf16_rne(r1);
      const uint16_t lo = bf16_rne(r1 - bf16_to_f32(mid));
      const uint16_t part[3] = {hi, mid, lo};
      // Chunk and position of element i. Natural order: chunk i / 32, position i % 32. MXFP4 split order (see
      // amx_rows32_mxfp4): per two blocks, one chunk of their even elements and one of their odd elements.
      int64_t chunk = i / kChunk, position = i % kChunk;
      if (split) {
        const int64_t j = i % 64, e = j % 32;
        chunk = (i / 64) * 2 + e % 2;
        position = 16 * (j / 32) + e / 2;
      }
      uint16_t* b = out + (pass * chunks + chunk) * layout.b_tiles_per_chunk * kPartElems;
      const int64_t row = position / 2;  // the bf16 pair (2·row, 2·row + 1) of this chunk
      for (int p = 0; p < 3; p++) {
        const int64_t column = layout.packed ? 3 * slot + p : slot;
        uint16_t* tile = layout.packed ? b : b + p * kPartElems;
        tile[row * 32 + column * 2 + (position % 2)] = part[p];
      }
    }
  }
}

__attribute__((target("amx-tile,amx-bf16"))) void amx_rows32_bf16(const uint16_t* w, int64_t k, const uint16_t* x,
                                                                  int64_t tokens, float* out, int64_t out_stride) {
  load_config();
  const int64_t chunks = k / kChunk;
  const Layout layout = layout_for(tokens);
  for (int64_t tile = 0; tile < layout.passes; tile++) {
    _tile_zero(0);
    _tile_zero(1);
    const uint16_t* parts = x + tile * chunks * layout.b_tiles_per_chunk * kPartElems;
    for (int64_t c = 0; c < chunks; c++) {
      if (tile == 0) {  // 4 chunks ahead in each of the 32 rows (the streamers do not follow 32 streams)
        for (int r = 0; r < 32; r++) _mm_prefetch(reinterpret_cast<const char*>(w + r * k + (c + 4) * kChunk), _MM_HINT_T1);
      }
      _tile_loadd(2, w + c * kChunk, k * 2);
      _tile_loadd(3, w + 16 * k + c * kChunk, k * 2);
      multiply_chunk(parts + c * layout.b_tiles_per_chunk * kPartElems, layout.packed);
    }
    const int64_t first = tile * layout.tokens_per_pass;
    store_pass(layout, out + first * out_stride, out_stride, std::min(layout.tokens_per_pass, tokens - first));
  }
}

void amx_rows32_mxfp4_pairs(const uint8_t* blocks, const uint8_t* scales, int64_t k, const uint16_t* x, int64_t tokens,
                            float* out, int64_t out_stride);

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vbmi,avx512bf16"))) void amx_rows32_mxfp4(
    const uint8_t* blocks, const uint8_t* scales, int64_t k, const uint16_t* x, int64_t tokens, float* out,
    int64_t out_stride) {
  if ((k / kChunk) % 2 == 0) return amx_rows32_mxfp4_pairs(blocks, scales, k, x, tokens, out, out_stride);
  load_config();
  const int64_t chunks = k / kChunk;  // one MXFP4 block per row per chunk
  const __m512 twice = _mm512_load_ps(kFp4Twice);
  const __m512i dup = _mm512_load_si512(kDupBytes);
  const __m512i shifts = _mm512_set1_epi32(4 << 16);  // even words 0, odd words 4
  const __m512i low4 = _mm512_set1_epi16(0x0f);
  alignas(64) uint16_t a[32][32];
  const Layout layout = layout_for(tokens);
  for (int64_t tile = 0; tile < layout.passes; tile++) {
    _tile_zero(0);
    _tile_zero(1);
    const uint16_t* parts = x + tile * chunks * layout.b_tiles_per_chunk * kPartElems;
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
      multiply_chunk(parts + c * layout.b_tiles_per_chunk * kPartElems, layout.packed);
    }
    const int64_t first = tile * layout.tokens_per_pass;
    store_pass(layout, out + first * out_stride, out_stride, std::min(layout.tokens_per_pass, tokens - first));
  }
}

namespace {

// bf16 bits of the doubled FP4 values (−0 as +0), twice: one copy per block of a pair.
alignas(64) const uint16_t kFp4TwiceBf16[32] = {
    0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40c0, 0x4100, 0x4140, 0x0000, 0xbf80, 0xc000, 0xc040, 0xc080, 0xc0c0, 0xc100, 0xc140,
    0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40c0, 0x4100, 0x4140, 0x0000, 0xbf80, 0xc000, 0xc040, 0xc080, 0xc0c0, 0xc100, 0xc140};

/**
 * Decodes two consecutive MXFP4 blocks of a row into two chunks: `evens` = the even elements of both blocks (16 +
 * 16), `odds` = their odd elements — the split order amx_prepare(…, mxfp4_order) gives the activations. The table
 * is scaled by adding e − 128 to the exponents of its nonzero entries (exact: 2·FP4 has ≤ 2 significant bits),
 * valid for 2 ≤ e ≤ 252; other scales take the rounding path (f32 multiply, exact except for subnormals).
 */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void decode_pair_bf16(const uint8_t* codes,
                                                                                   const uint8_t* scales,
                                                                                   __m512i* evens, __m512i* odds) {
  const __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes)));
  const __m512i half = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(16), 1);
  const __m512i even_idx = _mm512_ternarylogic_epi32(words, _mm512_set1_epi16(0x0f), half, 0xea);  // (a & b) | c
  const __m512i odd_idx = _mm512_or_si512(_mm512_srli_epi16(words, 4), half);
  __m512i table;
  const unsigned e0 = scales[0], e1 = scales[1];
  if (e0 - 2 <= 250 && e1 - 2 <= 250) {
    const __m512i adjust = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>((int(e0) - 128) * 128)),
                                              _mm256_set1_epi16(static_cast<int16_t>((int(e1) - 128) * 128)), 1);
    const __m512i base = _mm512_load_si512(kFp4TwiceBf16);
    table = _mm512_mask_add_epi16(base, 0xfefefefe, base, adjust);
  } else {
    const __m512 twice = _mm512_load_ps(kFp4Twice);
    const __m256bh t0 = _mm512_cvtneps_pbh(_mm512_mul_ps(twice, _mm512_set1_ps(kScaleHalf.value[e0])));
    const __m256bh t1 = _mm512_cvtneps_pbh(_mm512_mul_ps(twice, _mm512_set1_ps(kScaleHalf.value[e1])));
    table = _mm512_inserti64x4(_mm512_castsi256_si512(reinterpret_cast<__m256i>(t0)), reinterpret_cast<__m256i>(t1), 1);
  }
  *evens = _mm512_permutexvar_epi16(even_idx, table);
  *odds = _mm512_permutexvar_epi16(odd_idx, table);
}

}  // namespace

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16"))) void amx_rows32_mxfp4_pairs(
    const uint8_t* blocks, const uint8_t* scales, int64_t k, const uint16_t* x, int64_t tokens, float* out,
    int64_t out_stride) {
  load_config();
  const int64_t chunks = k / kChunk;
  alignas(64) uint16_t a[2][32][32];
  const Layout layout = layout_for(tokens);
  for (int64_t tile = 0; tile < layout.passes; tile++) {
    _tile_zero(0);
    _tile_zero(1);
    const uint16_t* parts = x + tile * chunks * layout.b_tiles_per_chunk * kPartElems;
    for (int64_t c = 0; c < chunks; c += 2) {
      for (int r = 0; r < 32; r++) {
        const uint8_t* row_blocks = blocks + (r * chunks + c) * 16;
        if (tile == 0 && (c & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(row_blocks + 8 * 16), _MM_HINT_T1);
        __m512i evens, odds;
        decode_pair_bf16(row_blocks, scales + r * chunks + c, &evens, &odds);
        _mm512_store_si512(a[0][r], evens);
        _mm512_store_si512(a[1][r], odds);
      }
      const uint16_t* b = parts + c * layout.b_tiles_per_chunk * kPartElems;
      if (layout.packed) {
        _tile_loadd(2, a[0][0], 64);
        _tile_loadd(3, a[0][16], 64);
        _tile_loadd(4, b, 64);
        _tile_loadd(5, a[1][0], 64);
        _tile_loadd(6, a[1][16], 64);
        _tile_loadd(7, b + kPartElems, 64);
        _tile_dpbf16ps(0, 2, 4);
        _tile_dpbf16ps(1, 3, 4);
        _tile_dpbf16ps(0, 5, 7);
        _tile_dpbf16ps(1, 6, 7);
      } else {
        for (int half = 0; half < 2; half++) {
          _tile_loadd(2, a[half][0], 64);
          _tile_loadd(3, a[half][16], 64);
          multiply_chunk(b + half * 3 * kPartElems, false);
        }
      }
    }
    const int64_t first = tile * layout.tokens_per_pass;
    store_pass(layout, out + first * out_stride, out_stride, std::min(layout.tokens_per_pass, tokens - first));
  }
}

__attribute__((target("amx-tile"))) void amx_release() { _tile_release(); }

}  // namespace gptoss::cpu
