/** Number formats shared by every layer: bf16 widening and rounding, MXFP4 (E2M1 codes with E8M0 block scales, spec §5.2). */

/** FP4 E2M1 value of each nibble (bit 3 = sign), spec §5.2. */
export const FP4_VALUES: Float32Array = new Float32Array([
  0,
  0.5,
  1,
  1.5,
  2,
  3,
  4,
  6,
  -0,
  -0.5,
  -1,
  -1.5,
  -2,
  -3,
  -4,
  -6,
]);

/** 2^(s − 127) for every E8M0 scale byte s (s = 0 gives 2^−127, a subnormal in f32: exact). */
export const E8M0_VALUES: Float32Array = Float32Array.from({ length: 256 }, (_, s) => 2 ** (s - 127));

/** Widens `count` bf16 values starting at `src[srcOffset]` into `dst[0..count)`. */
export function widenBf16(src: Uint16Array, srcOffset: number, count: number, dst: Float32Array): void {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, count);
  for (let i = 0; i < count; i++) bits[i] = src[srcOffset + i] << 16;
}

/** The f32 value of one bf16 bit pattern. */
export function bf16ToF32(bits: number): number {
  SCRATCH_U32[0] = bits << 16;
  return SCRATCH_F32[0];
}
const SCRATCH_F32 = new Float32Array(1);
const SCRATCH_U32 = new Uint32Array(SCRATCH_F32.buffer);

/** Rounds an f32 to bf16 bits (round to nearest even; NaN stays NaN). */
export function f32ToBf16(value: number): number {
  SCRATCH_F32[0] = value;
  const bits = SCRATCH_U32[0];
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) return (bits >>> 16) | 0x40;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Dequantizes one MXFP4 row into `dst[0..numBlocks·32)`: low nibble = even element, scale 2^(s − 127).
 * @param blocks the tensor's bytes; the row starts at `blockOffset` (16 bytes per block)
 * @param scales the scale bytes; the row's scales start at `scaleOffset`
 */
export function dequantizeMxfp4Row(
  blocks: Uint8Array,
  blockOffset: number,
  scales: Uint8Array,
  scaleOffset: number,
  numBlocks: number,
  dst: Float32Array,
): void {
  let o = 0;
  let b = blockOffset;
  for (let g = 0; g < numBlocks; g++) {
    const scale = E8M0_VALUES[scales[scaleOffset + g]];
    for (let j = 0; j < 16; j++) {
      const byte = blocks[b++];
      dst[o++] = FP4_VALUES[byte & 0x0f] * scale;
      dst[o++] = FP4_VALUES[byte >> 4] * scale;
    }
  }
}

/**
 * Dequantizes a whole MXFP4 tensor (blocks [..., R, K/32, 16], scales [..., R, K/32]) to f32 [..., R, K].
 * For tests and tools: the model never materializes experts.
 */
export function dequantizeMxfp4(blocks: Uint8Array, scales: Uint8Array): Float32Array {
  if (blocks.length !== scales.length * 16) {
    throw new RangeError(`MXFP4 blocks (${blocks.length} B) must be 16 bytes per scale (${scales.length} scales)`);
  }
  const out = new Float32Array(scales.length * 32);
  dequantizeMxfp4Row(blocks, 0, scales, 0, scales.length, out);
  return out;
}
