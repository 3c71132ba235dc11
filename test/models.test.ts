/**
 * Tests of the model-file readers: float16/bfloat16 conversions, the safetensors reader and writer (including
 * malformed, untrusted files), and .npy files. Checkpoint folders and architectures are in models-hf.test.ts.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ModelLoadError, ValidationError } from '../lib/errors';
import { openCheckpoint } from '../lib/models/checkpoint';
import { f8ArrayToFloat32, f8BitsToNumber, numberToF8Bits, type Float8Dtype } from '../lib/models/float8';
import { readNpy, writeNpy } from '../lib/models/npy';
import {
  bf16BitsToFloat32,
  f16BitsToFloat32,
  float32ToBf16Bits,
  float32ToF16Bits,
  openSafetensors,
  writeSafetensors,
} from '../lib/models/safetensors';
import { roundToDtype } from './helpers/checkpoint';
import { randn, rng } from './helpers/random';
import { throwsWith } from './helpers/errors';
import { tempDirs } from './helpers/tmp';

const tmpDir = tempDirs('moe-models-');

function fromBits(bits: number): number {
  return new Float32Array(new Uint32Array([bits]).buffer)[0];
}

// ------------------------------------------------------------------------------------------------ conversions

test('bf16: exact values, ties to even, overflow, specials', () => {
  assert.is(float32ToBf16Bits(1), 0x3f80);
  assert.is(float32ToBf16Bits(-2), 0xc000);
  assert.is(float32ToBf16Bits(-0), 0x8000);
  assert.is(float32ToBf16Bits(fromBits(0x3f808000)), 0x3f80, 'tie rounds down to even');
  assert.is(float32ToBf16Bits(fromBits(0x3f818000)), 0x3f82, 'tie rounds up to even');
  assert.is(float32ToBf16Bits(fromBits(0x3f808001)), 0x3f81, 'above half rounds up');
  assert.is(float32ToBf16Bits(fromBits(0x3f807fff)), 0x3f80, 'below half rounds down');
  assert.is(float32ToBf16Bits(fromBits(0x7f7fffff)), 0x7f80, 'max float32 overflows to inf');
  assert.is(float32ToBf16Bits(Infinity), 0x7f80);
  assert.is(float32ToBf16Bits(-Infinity), 0xff80);
  assert.is(float32ToBf16Bits(fromBits(0x00000001)), 0x0000, 'smallest float32 subnormal rounds to 0');
  assert.is(float32ToBf16Bits(fromBits(0x00018000)), 0x0002, 'subnormal tie to even');
  const nan = float32ToBf16Bits(NaN);
  assert.ok((nan & 0x7f80) === 0x7f80 && (nan & 0x7f) !== 0, 'NaN stays NaN');
  assert.ok(Number.isNaN(bf16BitsToFloat32(float32ToBf16Bits(fromBits(0x7f800001)))), 'signalling NaN payload kept');
  assert.is(bf16BitsToFloat32(0x3f80), 1);
  assert.is(bf16BitsToFloat32(0xff80), -Infinity);
  assert.ok(Object.is(bf16BitsToFloat32(0x8000), -0));
  assert.is(bf16BitsToFloat32(0x0001), fromBits(0x00010000), 'bf16 subnormal');
});

test('f16: exact values, subnormals, ties to even, overflow, specials', () => {
  assert.is(float32ToF16Bits(1), 0x3c00);
  assert.is(float32ToF16Bits(-2), 0xc000);
  assert.is(float32ToF16Bits(-0), 0x8000);
  assert.is(float32ToF16Bits(65504), 0x7bff, 'max half');
  assert.is(float32ToF16Bits(65519), 0x7bff, 'just below the overflow threshold');
  assert.is(float32ToF16Bits(65520), 0x7c00, 'overflow threshold rounds to inf');
  assert.is(float32ToF16Bits(1e6), 0x7c00);
  assert.is(float32ToF16Bits(-Infinity), 0xfc00);
  assert.is(float32ToF16Bits(1 + 2 ** -11), 0x3c00, 'tie rounds down to even');
  assert.is(float32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02, 'tie rounds up to even');
  assert.is(float32ToF16Bits(2 ** -24), 0x0001, 'smallest subnormal');
  assert.is(float32ToF16Bits(2 ** -25), 0x0000, 'half the smallest subnormal ties to 0');
  assert.is(float32ToF16Bits(1.5 * 2 ** -25), 0x0001);
  assert.is(float32ToF16Bits(3 * 2 ** -25), 0x0002, 'subnormal tie rounds up to even');
  assert.is(float32ToF16Bits(1023 * 2 ** -24), 0x03ff, 'largest subnormal');
  assert.is(float32ToF16Bits(1023.5 * 2 ** -24), 0x0400, 'rounds from subnormal into the smallest normal');
  assert.is(float32ToF16Bits(2 ** -14), 0x0400, 'smallest normal');
  assert.is(float32ToF16Bits(-(2 ** -30)), 0x8000, 'tiny negative keeps its sign');
  assert.is(float32ToF16Bits(1e-45), 0x0000, 'float32 subnormal');
  const nan = float32ToF16Bits(NaN);
  assert.ok((nan & 0x7c00) === 0x7c00 && (nan & 0x3ff) !== 0, 'NaN stays NaN');
  assert.ok((float32ToF16Bits(fromBits(0x7f800001)) & 0x3ff) !== 0, 'NaN with low payload is not turned into inf');
  assert.is(f16BitsToFloat32(0x0001), 2 ** -24);
  assert.is(f16BitsToFloat32(0x03ff), 1023 * 2 ** -24);
  assert.is(f16BitsToFloat32(0x0400), 2 ** -14);
  assert.is(f16BitsToFloat32(0x3555), 0.333251953125);
  assert.is(f16BitsToFloat32(0x7c00), Infinity);
  assert.is(f16BitsToFloat32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16BitsToFloat32(0x7e00)));
  assert.ok(Number.isNaN(f16BitsToFloat32(0x7c01)));
  assert.ok(Object.is(f16BitsToFloat32(0x8000), -0));
});

test('every finite f16 and bf16 value survives a round trip', () => {
  for (let h = 0; h < 65536; h++) {
    const half = f16BitsToFloat32(h);
    if (!Number.isNaN(half)) assert.is(float32ToF16Bits(half), h, `f16 0x${h.toString(16)}`);
    const brain = bf16BitsToFloat32(h);
    if (!Number.isNaN(brain)) assert.is(float32ToBf16Bits(brain), h, `bf16 0x${h.toString(16)}`);
  }
});

test('f16 rounding matches a brute-force nearest-even reference on random floats', () => {
  const positives: number[] = [];
  for (let h = 0; h <= 0x7bff; h++) positives.push(f16BitsToFloat32(h));
  const reference = (x: number): number => {
    const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
    const a = Math.abs(x);
    if (a >= 65520) return sign | 0x7c00;
    let lo = 0;
    let hi = positives.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (positives[mid] <= a) lo = mid;
      else hi = mid - 1;
    }
    if (lo === positives.length - 1) return sign | lo;
    const below = a - positives[lo];
    const above = positives[lo + 1] - a;
    const pick = below < above ? lo : above < below ? lo + 1 : lo % 2 === 0 ? lo : lo + 1;
    return sign | pick;
  };
  const uniform = rng(7);
  for (let i = 0; i < 20000; i++) {
    const x = Math.fround((uniform() - 0.5) * 2 ** Math.floor(uniform() * 46 - 28));
    assert.is(float32ToF16Bits(x), reference(x), `x = ${x}`);
  }
});

/** The OCP FP8 formats written out from their definitions: sign, exponent field, mantissa field. */
const F8_SPEC: Record<Float8Dtype, { e: number; m: number; bias: number }> = {
  F8_E4M3: { e: 4, m: 3, bias: 7 },
  F8_E5M2: { e: 5, m: 2, bias: 15 },
};

function f8Spec(bits: number, dtype: Float8Dtype): number {
  const { e, m, bias } = F8_SPEC[dtype];
  const sign = bits >= 128 ? -1 : 1;
  const expField = Math.floor((bits % 128) / 2 ** m);
  const manField = bits % 2 ** m;
  const allOnes = 2 ** e - 1;
  if (dtype === 'F8_E5M2' && expField === allOnes) return manField === 0 ? sign * Infinity : NaN;
  if (dtype === 'F8_E4M3' && expField === allOnes && manField === 2 ** m - 1) return NaN;
  if (expField === 0) return sign * (manField / 2 ** m) * Math.pow(2, 1 - bias);
  return sign * (1 + manField / 2 ** m) * Math.pow(2, expField - bias);
}

test('fp8: every code of E4M3 and E5M2 decodes as the format defines, and the table agrees', () => {
  for (const dtype of ['F8_E4M3', 'F8_E5M2'] as const) {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const table = new Float32Array(256);
    f8ArrayToFloat32(all, dtype, table);
    for (let bits = 0; bits < 256; bits++) {
      const want = f8Spec(bits, dtype);
      assert.ok(Object.is(f8BitsToNumber(bits, dtype), want), `${dtype} 0x${bits.toString(16)}: ${want}`);
      assert.ok(Object.is(table[bits], want), `${dtype} table 0x${bits.toString(16)}`);
    }
  }
  // landmarks of the OCP specification
  assert.is(f8BitsToNumber(0x7e, 'F8_E4M3'), 448);
  assert.is(f8BitsToNumber(0x08, 'F8_E4M3'), 2 ** -6);
  assert.is(f8BitsToNumber(0x01, 'F8_E4M3'), 2 ** -9);
  assert.is(f8BitsToNumber(0xb8, 'F8_E4M3'), -1);
  assert.ok(Number.isNaN(f8BitsToNumber(0xff, 'F8_E4M3')));
  assert.is(f8BitsToNumber(0x7b, 'F8_E5M2'), 57344);
  assert.is(f8BitsToNumber(0xfc, 'F8_E5M2'), -Infinity);
  assert.is(f8BitsToNumber(0x01, 'F8_E5M2'), 2 ** -16);
  assert.is(f8BitsToNumber(0x3c, 'F8_E5M2'), 1);
});

test('fp8: narrowing round-trips every value and rounds to the nearest, ties to even', () => {
  for (const dtype of ['F8_E4M3', 'F8_E5M2'] as const) {
    const positives: number[] = [];
    for (let bits = 0; bits < 128; bits++) {
      const v = f8Spec(bits, dtype);
      if (Number.isFinite(v)) positives.push(v);
      if (!Number.isNaN(v)) {
        assert.is(numberToF8Bits(v, dtype), bits, `${dtype} ${v}`);
        assert.is(numberToF8Bits(-v, dtype), bits | 0x80, `${dtype} ${-v}`);
      }
    }
    for (let i = 0; i + 1 < positives.length; i++) {
      const [lo, hi] = [positives[i], positives[i + 1]];
      const mid = (lo + hi) / 2;
      const even = i % 2 === 0 ? i : i + 1; // (the code of positives[j] is j)
      assert.is(numberToF8Bits(mid, dtype), even, `${dtype} tie between ${lo} and ${hi}`);
      assert.is(numberToF8Bits(lo + (hi - lo) * 0.49, dtype), i, `${dtype} just below the middle of ${lo}, ${hi}`);
      assert.is(numberToF8Bits(lo + (hi - lo) * 0.51, dtype), i + 1, `${dtype} just above the middle of ${lo}, ${hi}`);
    }
    const top = positives[positives.length - 1];
    const step = top - positives[positives.length - 2];
    const special = dtype === 'F8_E4M3' ? 0x7f : 0x7c; // E4M3 has no infinity: NaN, as PyTorch's cast
    const topCode = positives.length - 1;
    // halfway to the next step (480 for E4M3, whose code is NaN; 65536 for E5M2): the tie goes to the even side
    const toEven = topCode % 2 === 0 ? topCode : special;
    assert.is(numberToF8Bits(top + step * 0.49, dtype), topCode, `${dtype} just past the top`);
    assert.is(numberToF8Bits(top + step / 2, dtype), toEven, `${dtype} halfway past the top`);
    assert.is(numberToF8Bits(top + step * 0.51, dtype), special, `${dtype} more than halfway past the top`);
    assert.is(numberToF8Bits(-1e30, dtype), 0x80 | special);
    assert.is(numberToF8Bits(Infinity, dtype), special);
    assert.is(numberToF8Bits(NaN, dtype), 0x7f);
    assert.is(numberToF8Bits(positives[1] * 0.49, dtype), 0, 'under half the smallest subnormal');
  }
});

// ------------------------------------------------------------------------------------------------ safetensors

test('safetensors round trip for F32, BF16 and F16 with metadata and zero-size tensors', () => {
  const file = path.join(tmpDir(), 'weights.safetensors');
  const a = randn(6, 1, 0.5);
  const b = randn(35, 2, 3);
  const c = new Float32Array([0, -0, 1e-6, 7e-8, 65504, 70000, Infinity, -Infinity, NaN, 1 / 3]);
  writeSafetensors(
    file,
    {
      'a.weight': { dtype: 'F32', shape: [2, 3], data: a },
      'b.weight': { dtype: 'BF16', shape: [5, 7], data: b },
      empty: { dtype: 'F16', shape: [0, 4], data: new Float32Array(0) },
      scalar: { dtype: 'BF16', shape: [], data: new Float32Array([2.5]) },
      'c.weight': { dtype: 'F16', shape: [10], data: c },
    },
    { format: 'pt' },
  );
  const bytes = fs.readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  assert.is(headerLength % 8, 0, 'header padded to a multiple of 8');
  const st = openSafetensors(file);
  try {
    assert.equal(st.tensorNames(), ['a.weight', 'b.weight', 'empty', 'scalar', 'c.weight']);
    assert.equal(st.metadata, Object.assign(Object.create(null), { format: 'pt' }));
    assert.equal(st.info('b.weight'), { dtype: 'BF16', shape: [5, 7], byteLength: 70 });
    assert.ok(st.has('empty') && !st.has('missing'));
    const readA = st.readFloat32('a.weight');
    assert.equal(Array.from(readA), Array.from(a));
    assert.is(readA.byteOffset, 0);
    assert.equal(Array.from(st.readFloat32('b.weight')), Array.from(roundToDtype(b, 'BF16')));
    const readC = st.readFloat32('c.weight');
    const expectedC = Array.from(c, (v) => f16BitsToFloat32(float32ToF16Bits(v)));
    assert.equal(Array.from(readC.subarray(0, 8)), expectedC.slice(0, 8));
    assert.ok(Object.is(readC[1], -0));
    assert.is(readC[3], 2 ** -24, '7e-8 rounds to the smallest subnormal');
    assert.is(readC[5], Infinity, '70000 overflows half');
    assert.ok(Number.isNaN(readC[8]));
    assert.is(readC[9], f16BitsToFloat32(0x3555));
    assert.is(st.readFloat32('empty').length, 0);
    assert.equal(Array.from(st.readFloat32('scalar')), [2.5]);
    throwsWith(() => st.info('missing'), ModelLoadError, /no tensor named "missing"/, file);
  } finally {
    st.close();
  }
  throwsWith(() => st.readFloat32('a.weight'), ModelLoadError, /closed/);
  st.close();
});

test('safetensors round trip for F8_E4M3 and F8_E5M2: one byte per value, read back unscaled', () => {
  const file = path.join(tmpDir(), 'fp8.safetensors');
  const a = randn(24, 3, 100);
  const b = new Float32Array([0, -0, 3 * 2 ** -18, 1, -1.1, 57344, 1e6, NaN]);
  writeSafetensors(file, {
    a: { dtype: 'F8_E4M3', shape: [4, 6], data: a },
    b: { dtype: 'F8_E5M2', shape: [8], data: b },
  });
  const st = openSafetensors(file);
  try {
    assert.equal(st.info('a'), { dtype: 'F8_E4M3', shape: [4, 6], byteLength: 24 });
    const readA = st.readFloat32('a');
    assert.equal(
      Array.from(readA),
      Array.from(a, (v) => f8Spec(numberToF8Bits(v, 'F8_E4M3'), 'F8_E4M3')),
    );
    for (let i = 0; i < a.length; i++) {
      const ulp = 2 ** (Math.floor(Math.log2(Math.abs(a[i]))) - 3);
      assert.ok(Math.abs(readA[i] - a[i]) <= ulp / 2 || Math.abs(a[i]) > 448, `a[${i}] = ${a[i]} read ${readA[i]}`);
    }
    const readB = st.readFloat32('b');
    assert.ok(Object.is(readB[1], -0));
    assert.equal(Array.from(readB.subarray(2, 7)), [2 ** -16, 1, -1, 57344, Infinity]);
    assert.ok(Number.isNaN(readB[7]));
  } finally {
    st.close();
  }
});

/** Writes a safetensors file from a raw header (object or text) and a data section of `dataBytes` bytes. */
function rawSafetensors(header: unknown, dataBytes = 0, lengthOverride?: bigint): string {
  const file = path.join(tmpDir(), 'raw.safetensors');
  const headerBytes =
    header instanceof Uint8Array ? header : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(lengthOverride ?? BigInt(headerBytes.length));
  fs.writeFileSync(file, Buffer.concat([prefix, headerBytes, Buffer.alloc(dataBytes, 1)]));
  return file;
}

const f32 = (shape: number[], offsets: unknown) => ({ dtype: 'F32', shape, data_offsets: offsets });

test('safetensors: unsupported dtypes are listed but fail when read', () => {
  const file = rawSafetensors({ q: { dtype: 'I8', shape: [4], data_offsets: [0, 4] }, w: f32([1], [4, 8]) }, 8);
  const st = openSafetensors(file);
  assert.equal(st.tensorNames(), ['q', 'w']);
  assert.equal(st.info('q'), { dtype: 'I8', shape: [4], byteLength: 4 });
  throwsWith(
    () => st.readFloat32('q'),
    ModelLoadError,
    /unsupported dtype: got "I8", expected F32, BF16, F16, F8_E4M3 or F8_E5M2/,
    file,
  );
  assert.is(st.readFloat32('w').length, 1);
  st.close();
});

test('safetensors: malformed files give ModelLoadError naming the file and the problem', () => {
  const dir = tmpDir();
  const short = path.join(dir, 'short.safetensors');
  fs.writeFileSync(short, Buffer.from([1, 2, 3, 4]));
  throwsWith(() => openSafetensors(short), ModelLoadError, /too short.*got 4, expected >= 8 bytes/, short);
  const cases: [string, () => string, RegExp][] = [
    ['zero header length', () => rawSafetensors('{}', 0, 0n), /invalid header length: got 0/],
    ['huge header length', () => rawSafetensors('{}', 0, 2n ** 60n), /invalid header length: got 1152921504606846976/],
    ['header past the end', () => rawSafetensors('{}', 0, 5000n), /past the end of the file: got 5000, expected <= 2/],
    ['bad JSON', () => rawSafetensors('{"a": ', 0), /not valid UTF-8 JSON/],
    ['bad UTF-8', () => rawSafetensors(new Uint8Array([0x7b, 0xff, 0x7d]), 0), /not valid UTF-8 JSON/],
    ['header is an array', () => rawSafetensors([1, 2]), /header is not a JSON object: got \[1,2\]/],
    ['metadata not strings', () => rawSafetensors({ __metadata__: { a: 1 } }), /"__metadata__" value for "a".*got 1/],
    ['metadata not object', () => rawSafetensors({ __metadata__: 'x' }), /"__metadata__" is not an object/],
    ['entry not object', () => rawSafetensors({ w: 5 }), /tensor "w" entry is not an object/],
    [
      'unknown dtype',
      () => rawSafetensors({ w: { dtype: 'Q4', shape: [1], data_offsets: [0, 1] } }, 1),
      /unknown "dtype": got "Q4"/,
    ],
    [
      'prototype key as dtype',
      () => rawSafetensors({ w: { dtype: 'constructor', shape: [1], data_offsets: [0, 1] } }, 1),
      /unknown "dtype": got "constructor"/,
    ],
    ['negative dim', () => rawSafetensors({ w: f32([-1], [0, 0]) }), /invalid dimension.*got \[-1\]/],
    ['fractional dim', () => rawSafetensors({ w: f32([1.5], [0, 0]) }), /invalid dimension/],
    ['rank 9', () => rawSafetensors({ w: f32([1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 4]) }, 4), /invalid "shape"/],
    ['too many elements', () => rawSafetensors({ w: f32([2 ** 21, 2 ** 21], [0, 4]) }, 4), /too large.*at most 2\^40/],
    [
      'offsets outside the file',
      () => rawSafetensors({ w: f32([4], [0, 16]) }, 8),
      /invalid "data_offsets": got \[0,16\], expected .* <= 8/,
    ],
    ['begin after end', () => rawSafetensors({ w: f32([0], [8, 4]) }, 8), /invalid "data_offsets": got \[8,4\]/],
    ['negative begin', () => rawSafetensors({ w: f32([1], [-4, 0]) }, 8), /invalid "data_offsets"/],
    ['offsets not numbers', () => rawSafetensors({ w: f32([1], ['0', '4']) }, 8), /invalid "data_offsets"/],
    [
      'size/shape mismatch',
      () => rawSafetensors({ w: f32([2, 2], [0, 12]) }, 16),
      /wrong size: got 12, expected 16 bytes/,
    ],
    [
      'overlapping tensors',
      () => rawSafetensors({ a: f32([4], [0, 16]), b: f32([4], [8, 24]) }, 24),
      /tensors "a" and "b" overlap/,
    ],
    ['name too long', () => rawSafetensors({ ['n'.repeat(1025)]: f32([0], [0, 0]) }), /invalid tensor name/],
  ];
  for (const [label, make, pattern] of cases) {
    const file = make();
    try {
      openSafetensors(file).close();
      assert.unreachable(`${label}: expected an error`);
    } catch (err) {
      assert.instance(err, ModelLoadError, `${label}: ${String(err)}`);
      assert.match((err as Error).message, pattern, `${label}: ${(err as Error).message}`);
      assert.ok((err as Error).message.startsWith(file), `${label}: message names the file`);
    }
  }
  throwsWith(() => openSafetensors(path.join(dir, 'absent.safetensors')), ModelLoadError, /cannot open/);
});

test('safetensors: a file truncated after opening fails clearly when read', () => {
  const file = rawSafetensors({ w: f32([4], [0, 16]) }, 16);
  const st = openSafetensors(file);
  fs.truncateSync(file, fs.statSync(file).size - 8);
  throwsWith(() => st.readFloat32('w'), ModelLoadError, /file ended while reading tensor "w"/, file);
  st.close();
});

test('writeSafetensors rejects data that does not match the shape', () => {
  const file = path.join(tmpDir(), 'bad.safetensors');
  throwsWith(
    () => writeSafetensors(file, { w: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } }),
    ValidationError,
    /data has 3 elements, expected a Float32Array of 4/,
  );
});

// ------------------------------------------------------------------------------------------------ npy

test('npy round trip for float32 and int32, 64-byte aligned data', () => {
  const dir = tmpDir();
  const cases: [Float32Array | Int32Array, number[]][] = [
    [randn(6, 3), [2, 3]],
    [new Int32Array([1, -2, 3, 2147483647, -2147483648]), [5]],
    [new Float32Array([4.5]), []],
    [new Float32Array(0), [0, 4]],
  ];
  for (const [data, shape] of cases) {
    const file = path.join(dir, `a${shape.join('x')}.npy`);
    writeNpy(file, data, shape);
    const bytes = fs.readFileSync(file);
    const headerLength = bytes.readUInt16LE(8);
    assert.is((10 + headerLength) % 64, 0, 'data starts at a multiple of 64');
    assert.is(bytes[10 + headerLength - 1], 0x0a, 'header ends with a newline');
    const back = readNpy(file);
    assert.equal(back.shape, shape);
    assert.is(back.dtype, data instanceof Float32Array ? 'float32' : 'int32');
    assert.equal(Array.from(back.data), Array.from(data));
  }
  const text = fs.readFileSync(path.join(dir, 'a5.npy')).subarray(10, 70).toString('latin1');
  assert.ok(text.startsWith("{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }"), text);
});

/** Builds .npy bytes with a given version and header text (padded to 64) followed by `data`. */
function rawNpy(header: string, data: Uint8Array, major = 1): string {
  const start = major === 1 ? 10 : 12;
  const total = Math.ceil((start + header.length + 1) / 64) * 64;
  const prefix = Buffer.alloc(start);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]).copy(prefix);
  if (major === 1) prefix.writeUInt16LE(total - start, 8);
  else prefix.writeUInt32LE(total - start, 8);
  const file = path.join(tmpDir(), 'raw.npy');
  const padded = header.padEnd(total - start - 1, ' ') + '\n';
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(padded, 'utf8'), data]));
  return file;
}

test('npy versions 2.0 and 3.0 and NumPy header variants are read', () => {
  const data = new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer);
  for (const major of [2, 3]) {
    const back = readNpy(rawNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", data, major));
    assert.equal(back.shape, [2, 2]);
    assert.equal(Array.from(back.data), [1, 2, 3, 4]);
  }
  const reordered = readNpy(rawNpy('{"shape": [4], "fortran_order": False, "descr": "<i4"}', data));
  assert.equal(reordered.shape, [4]);
  assert.is(reordered.dtype, 'int32');
});

test('a named pipe or a folder in place of a model file is refused at once, never waited on', () => {
  const dir = tmpDir();
  for (const name of ['model.safetensors', 'x.npy', 'config.json']) execFileSync('mkfifo', [path.join(dir, name)]);
  throwsWith(() => openSafetensors(path.join(dir, 'model.safetensors')), ModelLoadError, /not a regular file/);
  throwsWith(() => readNpy(path.join(dir, 'x.npy')), ValidationError, /not a regular file/);
  throwsWith(() => openCheckpoint(dir), ModelLoadError, /config\.json.*not a regular file/);
  const folder = tmpDir();
  fs.mkdirSync(path.join(folder, 'config.json'));
  throwsWith(() => openCheckpoint(folder), ModelLoadError, /not a regular file/);
});

test('malformed npy files give ValidationError naming the file', () => {
  const four = new Uint8Array(16);
  const good = (shape: string, descr = '<f4', order = 'False') =>
    `{'descr': '${descr}', 'fortran_order': ${order}, 'shape': ${shape}, }`;
  const badMagic = path.join(tmpDir(), 'bad.npy');
  fs.writeFileSync(badMagic, Buffer.from('PK\x03\x04 not numpy at all'));
  const badVersion = rawNpy(good('(4,)'), four, 1);
  const bytes = fs.readFileSync(badVersion);
  bytes[6] = 4;
  fs.writeFileSync(badVersion, bytes);
  const longHeader = rawNpy(good('(4,)'), four, 1);
  const longBytes = fs.readFileSync(longHeader);
  longBytes.writeUInt16LE(60000, 8);
  fs.writeFileSync(longHeader, longBytes);
  const cases: [string, string, RegExp][] = [
    ['bad magic', badMagic, /missing the "\\x93NUMPY" magic/],
    ['version 4', badVersion, /unsupported .npy format version 4\.0/],
    ['header past the end', longHeader, /header length 60000 is invalid/],
    ['header not a dict literal', rawNpy("{'descr': '<f4', 'shape': (4,", four), /not a Python dict literal/],
    ['fortran order', rawNpy(good('(2, 2)', '<f4', 'True'), four), /fortran_order is true, expected False/],
    ['big-endian', rawNpy(good('(4,)', '>f4'), four), /unsupported dtype descr ">f4"/],
    ['float64', rawNpy(good('(2,)', '<f8'), four), /unsupported dtype descr "<f8"/],
    ['prototype key as descr', rawNpy(good('(4,)', 'constructor'), four), /unsupported dtype descr "constructor"/],
    ['data too short', rawNpy(good('(5,)'), four), /data is 16 bytes, expected 20/],
    ['data too long', rawNpy(good('(3,)'), four), /data is 16 bytes, expected 12/],
    ['negative dim', rawNpy(good('(-4,)'), four), /shape is \[-4\]/],
  ];
  for (const [label, file, pattern] of cases) {
    try {
      readNpy(file);
      assert.unreachable(`${label}: expected an error`);
    } catch (err) {
      assert.instance(err, ValidationError, `${label}: ${String(err)}`);
      assert.match((err as Error).message, pattern, `${label}: ${(err as Error).message}`);
      assert.ok((err as Error).message.startsWith(file), `${label}: message names the file`);
    }
  }
  throwsWith(() => writeNpy(path.join(tmpDir(), 'x.npy'), new Float32Array(3), [2, 2]), ValidationError, /expected 4/);
});

test.run();
