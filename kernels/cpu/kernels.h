// CPU kernels of the native backend: one file per op, named like the op (and like kernels/cuda/ and the
// TypeScript op table). Activations f32; weights bf16 (raw bits) or MXFP4 (u8 codes + E8M0 scales).
// Each kernel parallelises with OpenMP over its own outer loop; callers run them one after another.
#pragma once
#include <cstddef>
#include <cstdint>
#include <immintrin.h>

namespace gptoss::cpu {

/** Which vector code paths this CPU takes (chosen once per process, at the first kernel or context). */
enum class Isa { scalar, avx2, avx512, avx512vnni, avx512amx };
Isa detect_isa();
/**
 * Caps the path before it is chosen ("" = no cap); returns false with a message for an unknown name or when the
 * path is already fixed at another cap.
 */
bool request_isa(const char* name, const char** error);
/** The path detect_isa() would choose now, without fixing it. */
Isa preview_isa();
/** Whether the AMX tile kernels are in use (detect_isa() == Isa::avx512amx; cached). */
bool use_amx();
const char* isa_name(Isa isa);

/**
 * Activations prepared for the integer MXFP4 dot (DotKernels::mxfp4_q), one group per 4 blocks (128 elements).
 * Each block's 32 values become integers q = round(x · (2²¹ − 1) / max|x|) (22 bits with sign), stored as three
 * int8 digits, q = hi·2¹⁴ + mid·2⁷ + lo with hi signed and mid, lo in [0, 127], split into the block's even and odd
 * elements (matching the low and high nibbles of the codes). The weights enter as 2·FP4 + 12 ∈ [0, 24] (unsigned,
 * for VPDPBUSD), and corr = −12·Σq undoes the offset. Every product and sum is exact in int32; the only rounding is
 * q itself: |Δx| ≤ max|x|·2⁻²², the size of f32's own rounding of the block's largest element, so a dot product
 * differs from the f32 kernels by about as much as two f32 summation orders do.
 */
struct alignas(64) QGroup {
  int8_t hi_even[64], hi_odd[64];
  uint8_t mid_even[64], mid_odd[64], lo_even[64], lo_odd[64];
  float scale[16];    // max|x| / (2²¹ − 1) of each block, on that block's 4 lanes
  int32_t corr[16];   // −12·Σq of each block, in the block's first lane (0 in the other three)
  float block_scale[4];   // scale of each block, once (the AVX2 dot's 8-block steps)
  int32_t block_corr[4];  // corr of each block, once
};
inline int64_t q_groups(int64_t k) { return (k / 32 + 3) / 4; }
/** Prepares one activation row (k a multiple of 32) for mxfp4_q: q_groups(k) groups. */
void prepare_mxfp4_q(const float* x, int64_t k, QGroup* out);

/** Dot products of one weight row with up to 4 activation rows (x + t * x_stride), accumulated in f32. */
struct DotKernels {
  void (*bf16)(const uint16_t* w, const float* x, int64_t x_stride, int64_t k, int rows, float* out);
  /**
   * One MXFP4 row: `num_blocks` blocks of 32 weights (16 code bytes + 1 scale byte each). `x` is in the split layout
   * of split_for_mxfp4(): per block, the 16 even elements then the 16 odd ones, matching low and high nibbles.
   */
  void (*mxfp4)(const uint8_t* blocks, const uint8_t* scales, const float* x, int64_t x_stride, int64_t num_blocks,
                int rows, float* out);
  /** An f32 row (a weight row decoded once, for prefill batches of more than 4 tokens). */
  void (*f32)(const float* w, const float* x, int64_t x_stride, int64_t k, int rows, float* out);
  /**
   * One MXFP4 row against up to 4 prepared activation rows (x + t * x_stride groups) with integer dot products
   * (VPDPBUSD with AVX-512 VNNI, VPMADDUBSW + VPMADDWD with AVX2, plain C on the scalar path): for decode (few
   * tokens per expert), where the f32 kernel is bound by decoding codes, not by memory.
   */
  void (*mxfp4_q)(const uint8_t* blocks, const uint8_t* scales, const QGroup* x, int64_t x_stride,
                  int64_t num_blocks, int rows, float* out);
  /** The same against activations of prepare_mxfp4_q8 (the q8 mode: one 8-bit digit per value). */
  void (*mxfp4_q8)(const uint8_t* blocks, const uint8_t* scales, const QGroup* x, int64_t x_stride,
                   int64_t num_blocks, int rows, float* out);
  /**
   * One Q8_0 weight row (k int8 values, k / 32 f32 scales) against up to 4 Q8_0 activation rows (x + t * x_stride
   * values, x_scales + t * x_stride / 32 scales); k a multiple of 32.
   */
  void (*q8)(const int8_t* w, const float* w_scales, const int8_t* x, const float* x_scales, int64_t x_stride,
             int64_t k, int rows, float* out);
};

// The integer kernels of int8.cpp, for the DotKernels table.
void mxfp4_q_portable(const uint8_t*, const uint8_t*, const QGroup*, int64_t, int64_t, int, float*);
void mxfp4_q8_portable(const uint8_t*, const uint8_t*, const QGroup*, int64_t, int64_t, int, float*);
void mxfp4_q_avx2_exact(const uint8_t*, const uint8_t*, const QGroup*, int64_t, int64_t, int, float*);
void mxfp4_q8_avx2(const uint8_t*, const uint8_t*, const QGroup*, int64_t, int64_t, int, float*);
void q8_dot_portable(const int8_t*, const float*, const int8_t*, const float*, int64_t, int64_t, int, float*);
void q8_dot_avx2(const int8_t*, const float*, const int8_t*, const float*, int64_t, int64_t, int, float*);

/**
 * The q8 mode's activations for the MXFP4 dot (DotKernels::mxfp4_q8): QGroups with only the hi digits, each value
 * q = round(x · 127 / max|x|) of its 32-block (|Δx| ≤ max|x| / 254), corr = −12·Σq.
 */
void prepare_mxfp4_q8(const float* x, int64_t k, QGroup* out);
/** Q8_0 of one row (k a multiple of 32): per 32-block q = round(v · 127 / max|v|), scale max|v| / 127. */
void quantize_q8_row(const float* x, int64_t k, int8_t* q, float* scales);
void quantize_q8_bf16_row(const uint16_t* w, int64_t k, int8_t* q, float* scales);
/**
 * out[T, N] = x[T, K] · Wᵀ + b for a Q8_0 weight (N × K int8 values, then N × K / 32 f32 scales): the activations
 * are quantized to Q8_0 per token, then each weight row meets 4 tokens per dot call.
 */
void matmul_f32_q8w(float* out, const float* x, const int8_t* weight, const float* weight_scales,
                    const uint16_t* bias, int64_t num_tokens, int64_t n, int64_t k);

/** Reorders activations for the MXFP4 dot: per 32-element block, even elements first, then odd ones. */
void split_for_mxfp4(const float* x, int64_t k, float* out);

/** Decodes one MXFP4 row to f32 in the split layout of split_for_mxfp4 (per block: evens, then odds). */
void dequantize_mxfp4_split(const uint8_t* blocks, const uint8_t* scales, int64_t num_blocks, float* out);
/**
 * out[t * out_stride + r] = w[r] · x[t] (+ bias[r]) for up to 4 weight rows (pitch w_pitch; bf16 or f32) × up to 4
 * activation rows, in AVX-512 register blocks: each weight vector is loaded once for every token and each
 * activation vector once for every row. Returns false, doing nothing, where that path is not available (no AVX-512,
 * k not a multiple of 16).
 */
bool block_dot(const uint16_t* w, int rows, int64_t w_pitch, const float* x, int64_t x_stride, int tokens, int64_t k,
               const uint16_t* bias, float* out, int64_t out_stride);
bool block_dot(const float* w, int rows, int64_t w_pitch, const float* x, int64_t x_stride, int tokens, int64_t k,
               const uint16_t* bias, float* out, int64_t out_stride);
/** Decodes one bf16 weight row to f32. */
void widen_bf16_row(const uint16_t* w, int64_t k, float* out);
/** Decodes one MXFP4 row (num_blocks × 32 weights) to f32, in element order. */
void dequantize_mxfp4_row(const uint8_t* blocks, const uint8_t* scales, int64_t num_blocks, float* out);
const DotKernels& dot_kernels();

/**
 * AMX tile kernels (kernels/cpu/amx.cpp) for prefill: 32 weight rows against up to 16 tokens per tile pass. Only
 * where the CPU has AMX-BF16 (plus AVX512-BF16/VBMI for the MXFP4 decode) and Linux granted the tile state;
 * A cap of avx512-vnni or narrower (gptoss_context_create's isa) turns them off. k must be a multiple of 32.
 */
bool amx_available();
/** Elements (u16) of the prepared activations for `tokens` rows of length k. */
int64_t amx_prepared_elems(int64_t tokens, int64_t k);
/**
 * Splits activations into three bf16 parts in the tiles' pair layout (zero padded). mxfp4_order: the k order that
 * amx_rows32_mxfp4 decodes weights in (per two blocks: their even elements, then their odd ones) — pass true for
 * activations of MXFP4 rows, false for bf16 rows.
 */
void amx_prepare(const float* x, int64_t x_stride, int64_t tokens, int64_t k, uint16_t* out, bool mxfp4_order);
/** out[t * out_stride + r] = Σ_k W[r, k] · x[t, k] for the 32 bf16 rows at w (row pitch k) and every token. */
void amx_rows32_bf16(const uint16_t* w, int64_t k, const uint16_t* x, int64_t tokens, float* out, int64_t out_stride);
/** The same for 32 MXFP4 rows (k / 32 blocks each), decoded to bf16 exactly on the way. */
void amx_rows32_mxfp4(const uint8_t* blocks, const uint8_t* scales, int64_t k, const uint16_t* x, int64_t tokens,
                      float* out, int64_t out_stride);
/** Gives the tile state back (end of a thread's AMX work). */
void amx_release();

void embed_f32_bf16w(float* out, const uint16_t* table, const int32_t* ids, int64_t num_tokens, int64_t hidden);
void rmsnorm_f32_bf16w(float* out, const float* x, const uint16_t* weight, int64_t rows, int64_t hidden, float eps);
void matmul_f32_bf16w(float* out, const float* x, const uint16_t* weight, const uint16_t* bias, int64_t num_tokens,
                      int64_t n, int64_t k);
void rope_f32(float* q, float* k, const int32_t* positions, const float* inv_freq, float concentration,
              int64_t num_tokens, int64_t q_width, int64_t k_width, int64_t head_dim);

/** One sequence's slice of a step and its block tables. */
struct Segment {
  int32_t row_offset;
  int32_t num_tokens;
  int32_t start_position;
  int32_t num_blocks;
  const int32_t* full_blocks;
  const int32_t* sliding_blocks;
};

/** One layer's K/V storage: [num_blocks, block_size, kv_width] f32 each. */
struct KvLayer {
  float* keys;
  float* values;
  int64_t num_blocks;
  int32_t window;
};

void attention_f32(float* out, const float* q, const float* k, const float* v, const uint16_t* sinks,
                   const KvLayer& layer, int32_t block_size, const Segment* segments, int32_t num_segments,
                   int32_t num_heads, int32_t num_kv_heads, int32_t head_dim);

void moe_route_f32(int32_t* ids, float* weights, const float* logits, int64_t num_tokens, int64_t num_experts,
                   int32_t top_k);

/** Packed experts of one layer. */
struct MoeWeights {
  const uint8_t* gate_up_blocks;
  const uint8_t* gate_up_scales;
  const uint16_t* gate_up_bias;
  const uint8_t* down_blocks;
  const uint8_t* down_scales;
  const uint16_t* down_bias;
  int64_t num_experts;
};

/** int8_activations: the q8 mode (8-bit activations per 32-block into every expert dot; see prepare_mxfp4_q8). */
void moe_mlp_f32_mxfp4w(float* out, const float* x, const int32_t* ids, const float* weights, const MoeWeights& w,
                        int64_t num_tokens, int32_t top_k, int64_t hidden, int64_t intermediate, float swiglu_limit,
                        bool int8_activations);

void add_f32(float* out, const float* a, const float* b, int64_t n);
void gather_rows_f32(float* out, const float* x, const int32_t* rows, int64_t num_rows, int64_t width);

/**
 * How far ahead the weight streams prefetch, and into which cache: past the 4 KiB page the hardware streamers stop
 * at. Into L2 (T1) by default, so that the prefetches queue in L2's larger miss buffers instead of L1's: measured on
 * 2 cores with mapped weights (bench/native_kernels.cpp), bf16 GEMV 16.4–17.2 GB/s with 4 KiB into L1 → 19.4–20.1
 * with 8 KiB into L2. Into L1 (T0) for the compute-heavy integer MXFP4 dots (AVX2, both modes; VNNI, exact digits),
 * whose loads would otherwise wait on L2 while the vector pipes are busy: on a 2-core Zen 4 with the weights in
 * anonymous huge pages, as the server keeps them, T1 → T0 took the AVX2 q8-mode dot from 21.6–22.0 GB/s to 27–36 and
 * its MoE layer at 1 token from 18.3–21.2 to 23.5–24.7; the exact VNNI MoE layer from 17.9–19.6 to 23.3, while the
 * bf16 GEMV and the VNNI q8-mode dot did as well or better with T1 (native_kernels.sh, same run).
 */
constexpr int64_t kPrefetchAhead = 8192;
enum class Fetch { l2, l1 };
template <Fetch F = Fetch::l2>
inline void prefetch_weights(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchAhead, F == Fetch::l1 ? _MM_HINT_T0 : _MM_HINT_T1);
}

/**
 * Prefetches [p, p + bytes) into L2. The hardware streamers stop at 4 KiB page boundaries, and weights mapped from
 * the checkpoint sit on 4 KiB pages, so the row loops fetch a few rows ahead themselves.
 */
inline void prefetch_range(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 2);
}

/** e^x for |x| ≤ 88 (Cephes' expf: range reduction by ln 2, degree-7 polynomial; ≤ 2 ulp). */
__attribute__((target("avx512f"))) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

/** e^x for |x| ≤ 88, 8 lanes (the same Cephes polynomial as exp_avx512; the power of two built in the exponent). */
__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n for n in [−126, 127] (x ≥ −87 keeps n ≥ −126): the biased exponent n + 127 shifted into place.
  const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2));
}

/** bf16 bits → f32. */
inline float bf16_to_f32(uint16_t bits) {
  union {
    uint32_t u;
    float f;
  } v{static_cast<uint32_t>(bits) << 16};
  return v.f;
}

}  // namespace gptoss::cpu
