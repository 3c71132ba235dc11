/**
 * gpt-oss's experts as transformers' GptOssExperts keeps them: each expert's gate and up projections in one stack
 * whose outputs interleave (gate = even, up = odd), bias terms on both stacks, and the clamped SwiGLU. Stored either
 * as bf16/f16/f32 stacks multiplied from the right — `gate_up_proj` [E, d, 2f], `down_proj` [E, f, d] — or as
 * OpenAI's MXFP4 release has them: `<name>_blocks` U8 [E, out, in/32, 16] (two FP4 E2M1 values a byte, the low
 * nibble first) and `<name>_scales` U8 [E, out, in/32] (E8M0: 2^(byte − 127) for 32 inputs), out-major.
 */
import { brief, ModelLoadError } from '../errors';
import type { E4m3ExpertWeights, E4m3Matrix } from '../layer';
import type { ExpertWeights, MoELayerSpec } from './architectures';
import type { Checkpoint } from './checkpoint';
import { f8BitsToNumber, numberToF8Bits } from './float8';

/** gpt-oss's activation constant (transformers hard-codes it) and `swiglu_limit`'s default. */
export const GPT_OSS_ALPHA = 1.702;
export const GPT_OSS_LIMIT = 7;

/** The tensor names of a gpt-oss MoE block (`model.layers.N.mlp`). */
export interface GptOssNames {
  gateUp: string;
  gateUpBias: string;
  down: string;
  downBias: string;
}

export function gptOssNames(prefix: string): GptOssNames {
  return {
    gateUp: `${prefix}.experts.gate_up_proj`,
    gateUpBias: `${prefix}.experts.gate_up_proj_bias`,
    down: `${prefix}.experts.down_proj`,
    downBias: `${prefix}.experts.down_proj_bias`,
  };
}

// E2M1: sign, two exponent bits, one mantissa bit
const FP4_VALUES = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];
const MX_BLOCK = 32;
const E8M0_NAN = 255;

/**
 * MXFP4 [rows, cols] (`blocks` rows × cols/2 bytes, `scales` rows × cols/32 exponents) as float32, row-major.
 * @throws ModelLoadError for the E8M0 NaN code (255) or a value past float32's range, naming the element.
 */
export function dequantizeMxfp4(
  blocks: Uint8Array,
  scales: Uint8Array,
  rows: number,
  cols: number,
  where: string,
): Float32Array {
  const groups = cols / MX_BLOCK;
  if (!Number.isInteger(groups) || blocks.length !== (rows * cols) / 2 || scales.length !== rows * groups)
    throw new ModelLoadError(
      `${where}: MXFP4 of [${rows}, ${cols}] needs ${(rows * cols) / 2} block bytes and ${rows * groups} scales, got ` +
        `${blocks.length} and ${scales.length}`,
    );
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows * groups; i++) {
    const e = scales[i];
    if (e === E8M0_NAN) throw new ModelLoadError(`${where}: scale ${i} is the E8M0 NaN code (255); expected finite`);
    const scale = 2 ** (e - 127);
    const at = i * MX_BLOCK;
    for (let b = 0; b < MX_BLOCK / 2; b++) {
      const byte = blocks[at / 2 + b];
      out[at + 2 * b] = FP4_VALUES[byte & 15] * scale;
      out[at + 2 * b + 1] = FP4_VALUES[byte >> 4] * scale;
    }
    // (4 × 2^126 = 2^128 overflows float32 from exponent 253 on; the first such value is named)
    if (e >= 253)
      for (let k = at; k < at + MX_BLOCK; k++)
        if (!Number.isFinite(out[k]))
          throw new ModelLoadError(`${where}: element ${k} is ${brief(out[k])} in float32; expected finite weights`);
  }
  return out;
}

/** The columns one scale of an 'fp8' layer covers (kFp8Block): four MXFP4 groups. */
const E4M3_BLOCK = 128;
/**
 * An E2M1 value times 2^s as E4M3, for s in [MIN_SHIFT, MAX_SHIFT]; -1 where E4M3 cannot hold it exactly. Within a
 * block of 128 columns the values are scaled by 2^-MAX_SHIFT of the block's largest group scale: its ±6 become ±384,
 * under E4M3's 448, and groups up to 14 binades smaller still land on E4M3 values (its subnormals reach 2^-9).
 */
const MAX_SHIFT = 6;
const MIN_SHIFT = -14;
const E4M3_OF: Int16Array = (() => {
  const table = new Int16Array(16 * (MAX_SHIFT - MIN_SHIFT + 1));
  for (let shift = MIN_SHIFT; shift <= MAX_SHIFT; shift++)
    for (let code = 0; code < 16; code++) {
      const v = FP4_VALUES[code] * 2 ** shift;
      const bits = numberToF8Bits(v, 'F8_E4M3');
      table[(shift - MIN_SHIFT) * 16 + code] = Object.is(f8BitsToNumber(bits, 'F8_E4M3'), v) ? bits : -1;
    }
  return table;
})();

/**
 * MXFP4 [rows, cols] as an 'fp8' layer's E4M3 matrix holding the same values exactly: per row and 128 columns a
 * power-of-two scale, the block's largest group scale over 2^6 (groups without a non-zero value do not count). Null
 * where a value does not fit E4M3 at its block's scale (possible only where a block spans more than 14 binades of
 * group scales; the caller then reads floats, which the layer quantizes again), and where a scale would pass
 * 3.4e38 / 448. The E8M0 NaN scale is refused as dequantizeMxfp4 refuses it.
 */
export function mxfp4ToE4m3(
  blocks: Uint8Array,
  scales: Uint8Array,
  rows: number,
  cols: number,
  where: string,
): E4m3Matrix | null {
  const groups = cols / MX_BLOCK;
  const perBlock = E4M3_BLOCK / MX_BLOCK;
  const blocksPerRow = Math.ceil(cols / E4M3_BLOCK);
  const data = new Uint8Array(rows * cols);
  const out = new Float32Array(rows * blocksPerRow);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < blocksPerRow; b++) {
      const g0 = b * perBlock;
      const g1 = Math.min(groups, g0 + perBlock);
      let top = -1;
      for (let g = g0; g < g1; g++) {
        const e = scales[r * groups + g];
        if (e === E8M0_NAN)
          throw new ModelLoadError(`${where}: scale ${r * groups + g} is the E8M0 NaN code (255); expected finite`);
        const bytes = blocks.subarray(((r * groups + g) * MX_BLOCK) / 2, ((r * groups + g + 1) * MX_BLOCK) / 2);
        if (e > top && bytes.some((v) => (v & 0x77) !== 0)) top = e;
      }
      const base = top < 0 ? 127 : top - MAX_SHIFT; // (an all-zero block: any scale)
      // (a scale times 448, the largest E4M3 value, must stay a finite float32, as the layer checks)
      if (!Number.isFinite(Math.fround(2 ** (base - 127) * 448))) return null;
      out[r * blocksPerRow + b] = 2 ** (base - 127);
      for (let g = g0; g < g1; g++) {
        const shift = scales[r * groups + g] - base;
        const at = (r * groups + g) * MX_BLOCK;
        for (let i = 0; i < MX_BLOCK; i++) {
          const byte = blocks[(at + i) >> 1];
          const code = i % 2 === 0 ? byte & 15 : byte >> 4;
          if ((code & 7) === 0) {
            data[r * cols + g * MX_BLOCK + i] = code << 4; // ±0
            continue;
          }
          const bits = shift < MIN_SHIFT ? -1 : E4M3_OF[(shift - MIN_SHIFT) * 16 + code];
          if (bits < 0) return null;
          data[r * cols + g * MX_BLOCK + i] = bits;
        }
      }
    }
  }
  return { data, scales: out };
}

type CheckTensor = (ckpt: Checkpoint, spec: MoELayerSpec, name: string, shape: number[]) => void;

/**
 * Checks a gpt-oss layer's expert tensors against the config and returns the reader of expert e: w1 / w3 [f, d]
 * (the even / odd outputs of the gate/up stack), w2 [d, f], with b1 / b3 [f] and b2 [d].
 * @throws ModelLoadError for a missing tensor, a wrong shape or dtype.
 */
export function gptOssExperts(
  ckpt: Checkpoint,
  spec: MoELayerSpec,
  names: GptOssNames,
  checkTensor: CheckTensor,
): {
  expert(e: number): ExpertWeights;
  /** MXFP4 experts as E4M3 holding the same values (for 'fp8' layers; mxfp4ToE4m3), else null. */
  expertE4m3(e: number): E4m3ExpertWeights | null;
  layout: 'fused, transposed, interleaved' | 'MXFP4, interleaved';
} {
  const { hiddenSize: d, intermediateSize: f, numExperts: E } = spec;
  const mxfp4 = !ckpt.has(names.gateUp) && ckpt.has(`${names.gateUp}_blocks`);
  checkTensor(ckpt, spec, names.gateUpBias, [E, 2 * f]);
  checkTensor(ckpt, spec, names.downBias, [E, d]);
  const biases = (e: number) => {
    const gateUp = ckpt.readSlice(names.gateUpBias, e, [E, 2 * f]);
    const b1 = new Float32Array(f);
    const b3 = new Float32Array(f);
    for (let j = 0; j < f; j++) {
      b1[j] = gateUp[2 * j];
      b3[j] = gateUp[2 * j + 1];
    }
    return { b1, b3, b2: ckpt.readSlice(names.downBias, e, [E, d]) };
  };
  if (!mxfp4) {
    checkTensor(ckpt, spec, names.gateUp, [E, d, 2 * f]);
    checkTensor(ckpt, spec, names.down, [E, f, d]);
    return {
      layout: 'fused, transposed, interleaved',
      expertE4m3: () => null,
      expert(e) {
        // [d, 2f] and [f, d], multiplied from the right: each transposed to [out, in], gate/up de-interleaved
        const gateUp = ckpt.readSlice(names.gateUp, e, [E, d, 2 * f]);
        const down = ckpt.readSlice(names.down, e, [E, f, d]);
        const w1 = new Float32Array(f * d);
        const w3 = new Float32Array(f * d);
        const w2 = new Float32Array(d * f);
        for (let k = 0; k < d; k++) {
          for (let j = 0; j < f; j++) {
            w1[j * d + k] = gateUp[k * 2 * f + 2 * j];
            w3[j * d + k] = gateUp[k * 2 * f + 2 * j + 1];
            w2[k * f + j] = down[j * d + k];
          }
        }
        return { w1, w3, w2, ...biases(e) };
      },
    };
  }
  for (const [inputs, what] of [
    [d, 'hidden_size'],
    [f, 'intermediate_size'],
  ] as const)
    if (inputs % MX_BLOCK !== 0)
      throw new ModelLoadError(
        `${ckpt.dir}: ${spec.architecture} layer ${spec.layer}: MXFP4 experts need ${what} (${inputs}) to be a ` +
          `multiple of ${MX_BLOCK}`,
      );
  const stack = (name: string, out: number, inputs: number) => {
    const blocks = { name: `${name}_blocks`, shape: [E, out, inputs / MX_BLOCK, MX_BLOCK / 2] };
    const scales = { name: `${name}_scales`, shape: [E, out, inputs / MX_BLOCK] };
    for (const t of [blocks, scales]) {
      if (!ckpt.has(t.name))
        throw new ModelLoadError(
          `${ckpt.dir}: ${spec.architecture} layer ${spec.layer}: tensor ${brief(t.name)} is missing from the checkpoint`,
        );
      const { dtype, shape } = ckpt.info(t.name);
      if (dtype !== 'U8' || shape.length !== t.shape.length || shape.some((v, i) => v !== t.shape[i]))
        throw new ModelLoadError(
          `${ckpt.dir}: ${spec.architecture} layer ${spec.layer}: tensor ${brief(t.name)} is ${dtype} ` +
            `[${shape.join(', ')}], expected U8 [${t.shape.join(', ')}] from config`,
        );
    }
    const read = (e: number) => ({
      blocks: ckpt.readU8Slice(blocks.name, e, blocks.shape),
      scales: ckpt.readU8Slice(scales.name, e, scales.shape),
      where: `${ckpt.dir}: expert ${e} of ${brief(name)}`,
    });
    return {
      floats(e: number) {
        const q = read(e);
        return dequantizeMxfp4(q.blocks, q.scales, out, inputs, q.where);
      },
      e4m3(e: number) {
        const q = read(e);
        return mxfp4ToE4m3(q.blocks, q.scales, out, inputs, q.where);
      },
    };
  };
  const gateUpStack = stack(names.gateUp, 2 * f, d);
  const downStack = stack(names.down, d, f);
  return {
    layout: 'MXFP4, interleaved',
    expertE4m3(e) {
      const gateUp = gateUpStack.e4m3(e);
      const down = gateUp && downStack.e4m3(e);
      if (!gateUp || !down) return null;
      // rows 2j and 2j + 1 of [2f, d] (and of its [2f, ceil(d / 128)] scales): gate and up output j
      const blocksPerRow = Math.ceil(d / E4M3_BLOCK);
      const half = (parity: number): E4m3Matrix => {
        const data = new Uint8Array(f * d);
        const scales = new Float32Array(f * blocksPerRow);
        for (let j = 0; j < f; j++) {
          const r = 2 * j + parity;
          data.set(gateUp.data.subarray(r * d, (r + 1) * d), j * d);
          scales.set(gateUp.scales.subarray(r * blocksPerRow, (r + 1) * blocksPerRow), j * blocksPerRow);
        }
        return { data, scales };
      };
      return { e4m3: { w1: half(0), w3: half(1), w2: down }, ...biases(e) };
    },
    expert(e) {
      // [2f, d] out-major: rows 2j and 2j + 1 are gate and up output j
      const gateUp = gateUpStack.floats(e);
      const w1 = new Float32Array(f * d);
      const w3 = new Float32Array(f * d);
      for (let j = 0; j < f; j++) {
        w1.set(gateUp.subarray(2 * j * d, (2 * j + 1) * d), j * d);
        w3.set(gateUp.subarray((2 * j + 1) * d, (2 * j + 2) * d), j * d);
      }
      return { w1, w3, w2: downStack.floats(e), ...biases(e) };
    },
  };
}
