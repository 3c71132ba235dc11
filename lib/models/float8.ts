/**
 * The two 8-bit float formats of FP8 checkpoints (OCP 8-bit floating point, as PyTorch's `float8_e4m3fn` and
 * `float8_e5m2` store them):
 * - E4M3: 1 sign, 4 exponent (bias 7) and 3 mantissa bits; no infinities, S.1111.111 is NaN; largest value 448.
 * - E5M2: 1 sign, 5 exponent (bias 15) and 2 mantissa bits; IEEE infinities and NaNs; largest finite 57344.
 * Both have subnormals. Widening to float32 is exact (a 256-entry table per format). Narrowing, used to write test
 * fixtures, rounds to nearest, ties to even, as PyTorch's cast does; what rounds past the largest finite value
 * (above 464 for E4M3, from 61440 for E5M2, where the tie goes to the even side) is NaN for E4M3, which has no
 * infinity (as PyTorch's cast), and ±Infinity for E5M2.
 */

export type Float8Dtype = 'F8_E4M3' | 'F8_E5M2';

interface Float8Format {
  mantissaBits: number;
  bias: number;
  /** E5M2: an all-ones exponent means Infinity (mantissa 0) or NaN. E4M3: only all-ones bits are NaN. */
  ieeeSpecials: boolean;
  maxFinite: number;
}

const FORMATS: Readonly<Record<Float8Dtype, Float8Format>> = {
  F8_E4M3: { mantissaBits: 3, bias: 7, ieeeSpecials: false, maxFinite: 448 },
  F8_E5M2: { mantissaBits: 2, bias: 15, ieeeSpecials: true, maxFinite: 57344 },
};

export function isFloat8Dtype(dtype: string): dtype is Float8Dtype {
  return dtype === 'F8_E4M3' || dtype === 'F8_E5M2';
}

/** The value that 8 bits (0..255) encode in `dtype`. */
export function f8BitsToNumber(bits: number, dtype: Float8Dtype): number {
  const { mantissaBits, bias, ieeeSpecials } = FORMATS[dtype];
  const sign = bits & 0x80 ? -1 : 1;
  const exponentMax = (0x7f >> mantissaBits) & 0xff;
  const exponent = (bits & 0x7f) >> mantissaBits;
  const mantissa = bits & ((1 << mantissaBits) - 1);
  if (ieeeSpecials && exponent === exponentMax) return mantissa === 0 ? sign * Infinity : NaN;
  if (!ieeeSpecials && (bits & 0x7f) === 0x7f) return NaN;
  // (exponent 0: subnormal, no implicit leading one, the exponent of the smallest normal)
  const significand = exponent === 0 ? mantissa : (1 << mantissaBits) + mantissa;
  return sign * significand * 2 ** (Math.max(exponent, 1) - bias - mantissaBits);
}

function roundHalfToEven(n: number): number {
  const floor = Math.floor(n);
  const rest = n - floor;
  if (rest !== 0.5) return rest < 0.5 ? floor : floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * Converts a number (first rounded to float32) to `dtype` bits, rounding to nearest, ties to even. NaN gives 0x7f;
 * see the file comment for values past the largest finite one.
 */
export function numberToF8Bits(value: number, dtype: Float8Dtype): number {
  const { mantissaBits, bias, ieeeSpecials, maxFinite } = FORMATS[dtype];
  const v = Math.fround(value);
  if (Number.isNaN(v)) return 0x7f;
  const sign = v < 0 || Object.is(v, -0) ? 0x80 : 0;
  const special = sign | (ieeeSpecials ? 0x7f & ~((1 << mantissaBits) - 1) : 0x7f);
  const magnitude = Math.abs(v);
  if (magnitude === Infinity) return special;
  const minNormalExponent = 1 - bias;
  let exponent = minNormalExponent;
  if (magnitude >= 2 ** minNormalExponent) {
    exponent = Math.floor(Math.log2(magnitude));
    while (2 ** exponent > magnitude) exponent -= 1;
    while (2 ** (exponent + 1) <= magnitude) exponent += 1;
  }
  // One unit in the last place at this exponent; magnitude / quantum is exact (a float32 over a power of two).
  const quantum = 2 ** (exponent - mantissaBits);
  const rounded = roundHalfToEven(magnitude / quantum) * quantum;
  if (rounded > maxFinite) return special;
  if (rounded < 2 ** minNormalExponent) return sign | (rounded / 2 ** (minNormalExponent - mantissaBits));
  // (rounding may have carried into the next binade)
  const e = rounded >= 2 ** (exponent + 1) ? exponent + 1 : exponent;
  const mantissa = rounded / 2 ** (e - mantissaBits) - (1 << mantissaBits);
  return sign | ((e + bias) << mantissaBits) | mantissa;
}

const tables = new Map<Float8Dtype, Float32Array>();

/** Widens `dtype` bytes to float32 into `out` (same length), exactly. */
export function f8ArrayToFloat32(source: Uint8Array, dtype: Float8Dtype, out: Float32Array): void {
  let table = tables.get(dtype);
  if (table === undefined) {
    table = new Float32Array(256);
    for (let bits = 0; bits < 256; bits++) table[bits] = f8BitsToNumber(bits, dtype);
    tables.set(dtype, table);
  }
  for (let i = 0; i < source.length; i++) out[i] = table[source[i]];
}
