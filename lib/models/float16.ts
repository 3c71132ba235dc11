/**
 * Conversions between float32 and the two 16-bit float formats found in checkpoints: bfloat16 (the top half of a
 * float32) and IEEE half precision. Narrowing rounds to nearest, ties to even, as PyTorch and NumPy do, so values
 * written here match what those libraries store; widening is exact, including subnormals, infinities and NaN.
 */

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

function float32Bits(value: number): number {
  scratchF32[0] = value;
  return scratchU32[0];
}

function bitsToFloat32(bits: number): number {
  scratchU32[0] = bits;
  return scratchF32[0];
}

/**
 * Converts a number (first rounded to float32) to bfloat16 bits, rounding to nearest, ties to even.
 * NaN stays NaN (quiet, sign kept); values past the bf16 range become ±Infinity.
 */
export function float32ToBf16Bits(value: number): number {
  const bits = float32Bits(value);
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x0040) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Converts bfloat16 bits (0..65535) to the float32 value they encode, exactly. */
export function bf16BitsToFloat32(bits: number): number {
  return bitsToFloat32((bits & 0xffff) << 16);
}

/**
 * Converts a number (first rounded to float32) to IEEE half-precision bits, rounding to nearest, ties to even,
 * including into and out of the subnormal range. Values of magnitude >= 65520 become ±Infinity; NaN stays a quiet
 * NaN with its sign and top payload bits.
 */
export function float32ToF16Bits(value: number): number {
  const bits = float32Bits(value);
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa !== 0 ? 0x200 | (mantissa >>> 13) : 0);
  if (exponent > 142) return sign | 0x7c00; // |value| >= 2^16: overflow
  let half: number;
  let dropped: number;
  let halfway: number;
  if (exponent >= 113) {
    // Normal half: rebias the exponent (127 -> 15) and drop 13 mantissa bits; a carry may reach infinity.
    half = ((exponent - 112) << 10) | (mantissa >>> 13);
    dropped = mantissa & 0x1fff;
    halfway = 0x1000;
  } else {
    if (exponent < 102) return sign; // |value| <= 2^-25 (half the smallest subnormal) rounds to zero
    // Subnormal half: units of 2^-24; shift the full 24-bit significand right by 126 - exponent (14..24).
    const significand = mantissa | 0x800000;
    const shift = 126 - exponent;
    half = significand >>> shift;
    dropped = significand & ((1 << shift) - 1);
    halfway = 1 << (shift - 1);
  }
  if (dropped > halfway || (dropped === halfway && (half & 1) === 1)) half += 1;
  return sign | half;
}

/** Converts IEEE half-precision bits (0..65535) to the float32 value they encode, exactly (subnormals, ±Inf, NaN). */
export function f16BitsToFloat32(bits: number): number {
  return bitsToFloat32(f16BitsToFloat32Bits(bits));
}

function f16BitsToFloat32Bits(bits: number): number {
  const sign = (bits & 0x8000) << 16;
  const exponent = (bits >>> 10) & 0x1f;
  let mantissa = bits & 0x3ff;
  if (exponent === 0x1f) return (sign | 0x7f800000 | (mantissa << 13)) >>> 0;
  if (exponent !== 0) return (sign | ((exponent + 112) << 23) | (mantissa << 13)) >>> 0;
  if (mantissa === 0) return sign >>> 0;
  // Subnormal: normalise so the leading 1 reaches bit 10, lowering the float32 exponent once per shift.
  let floatExponent = 113;
  while ((mantissa & 0x400) === 0) {
    mantissa <<= 1;
    floatExponent -= 1;
  }
  return (sign | (floatExponent << 23) | ((mantissa & 0x3ff) << 13)) >>> 0;
}

let f16Table: Uint32Array | null = null;

/** Converts bfloat16 bits to float32 into `out` (same length), exactly. */
export function bf16ArrayToFloat32(source: Uint16Array, out: Float32Array): void {
  const outBits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < source.length; i++) outBits[i] = source[i] << 16;
}

/** Converts IEEE half bits to float32 into `out` (same length), exactly, through a 65536-entry table. */
export function f16ArrayToFloat32(source: Uint16Array, out: Float32Array): void {
  if (f16Table === null) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToFloat32Bits(h);
  }
  const table = f16Table;
  const outBits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < source.length; i++) outBits[i] = table[source[i]];
}
