/**
 * Dequantisation of FP8 checkpoints: a weight stored as F8_E4M3 (or F8_E5M2) comes with a tensor of float scales,
 * and its value is the stored number times the scale of its block, row or tensor. Two conventions are read:
 * - `<name>_scale_inv` (DeepSeek-V3/R1, Qwen3 FP8 and other `quant_method: "fp8"` checkpoints): one scale per block
 *   of `quantization_config.weight_block_size` (default 128 x 128), shape [ceil(rows / b0), ceil(cols / b1)].
 *   Despite the name it multiplies, as in DeepSeek's own `weight_dequant`.
 * - `<name>_scale` (compressed-tensors FP8): one scale for the tensor ([] or [1]), one per row ([rows] or
 *   [rows, 1]), or one per block as above (block size from the config's `block_structure`).
 * Activation scales (`input_scale`) are not used: activations stay in float32 / bf16. A scale tensor must be F32,
 * BF16 or F16 and finite, and so must every scaled weight. Files are untrusted: every shape is checked before
 * anything is read, and errors name the tensor, what it has and what was expected.
 */
import { brief, ModelLoadError } from '../errors';
import type { SafetensorsTensorInfo } from './safetensors';

/** How one FP8 tensor is scaled. */
export interface Fp8Scaling {
  scaleName: string;
  /** tensor: one scale; row: one per row; block: one per [block[0], block[1]] tile of a 2-D tensor. */
  kind: 'tensor' | 'row' | 'block';
  block: [number, number];
}

/** What {@link fp8ScalingOf} needs of a checkpoint. */
export interface TensorLookup {
  readonly dir: string;
  has(name: string): boolean;
  info(name: string): SafetensorsTensorInfo;
}

const DEFAULT_BLOCK: [number, number] = [128, 128];
const SCALE_DTYPES = ['F32', 'BF16', 'F16'];

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function blockFrom(value: unknown, field: string, where: string): [number, number] {
  const valid =
    Array.isArray(value) &&
    value.length === 2 &&
    value.every((v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 && v <= 2 ** 20);
  if (!valid) throw new ModelLoadError(`${where}: ${field} is ${brief(value)}, expected two integers in [1, 2^20]`);
  return [value[0], value[1]];
}

/**
 * The block size of block-wise FP8 scales from `config.quantization_config`: `weight_block_size` (the "fp8"
 * method), else the first `config_groups.*.weights.block_structure` (compressed-tensors), else 128 x 128.
 * @throws ModelLoadError (naming `where`, the config's file) when the field present is not two integers in [1, 2^20].
 */
export function fp8BlockSize(config: Record<string, unknown>, where: string): [number, number] {
  const quant = config.quantization_config;
  if (!isPlainObject(quant)) return DEFAULT_BLOCK;
  if (quant.weight_block_size !== undefined && quant.weight_block_size !== null)
    return blockFrom(quant.weight_block_size, 'quantization_config.weight_block_size', where);
  if (isPlainObject(quant.config_groups)) {
    for (const [group, spec] of Object.entries(quant.config_groups)) {
      const weights = isPlainObject(spec) ? spec.weights : undefined;
      const structure = isPlainObject(weights) ? weights.block_structure : undefined;
      if (structure !== undefined && structure !== null)
        return blockFrom(structure, `quantization_config.config_groups.${group}.weights.block_structure`, where);
    }
  }
  return DEFAULT_BLOCK;
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

/**
 * Finds and checks the scale tensor of FP8 tensor `name` (shape `shape`), without reading data.
 * @throws ModelLoadError when there is no scale tensor or two, or its dtype or shape does not fit.
 */
export function fp8ScalingOf(ckpt: TensorLookup, name: string, shape: readonly number[], block: [number, number]) {
  const where = `${ckpt.dir}: FP8 tensor ${brief(name)} (shape [${shape.join(', ')}])`;
  const candidates = [`${name}_scale_inv`, `${name}_scale`].filter((n) => ckpt.has(n));
  if (candidates.length !== 1) {
    const problem = candidates.length === 0 ? 'has no scale tensor' : 'has two scale tensors';
    throw new ModelLoadError(`${where} ${problem}; expected exactly one of ${brief(`${name}_scale_inv`)} or "_scale"`);
  }
  const scaleName = candidates[0];
  const info = ckpt.info(scaleName);
  if (!SCALE_DTYPES.includes(info.dtype)) {
    throw new ModelLoadError(`${where}: scale ${brief(scaleName)} has dtype ${info.dtype}, expected F32, BF16 or F16`);
  }
  const s = info.shape;
  const blocks = shape.length === 2 ? [Math.ceil(shape[0] / block[0]), Math.ceil(shape[1] / block[1])] : null;
  let kind: Fp8Scaling['kind'] | null = null;
  if (scaleName.endsWith('_scale') && (same(s, []) || same(s, [1]))) kind = 'tensor';
  else if (scaleName.endsWith('_scale') && shape.length === 2 && (same(s, [shape[0]]) || same(s, [shape[0], 1])))
    kind = 'row';
  else if (blocks && same(s, blocks)) kind = 'block';
  if (kind === null) {
    const expected = blocks
      ? `[${blocks.join(', ')}] (blocks of ${block[0]} x ${block[1]}; set quantization_config.weight_block_size ` +
        `for another size)${scaleName.endsWith('_scale') ? `, [], [1] or [${shape[0]}, 1]` : ''}`
      : `[] or [1] (a block-wise scale needs a 2-D tensor)`;
    throw new ModelLoadError(`${where}: scale ${brief(scaleName)} has shape [${s.join(', ')}], expected ${expected}`);
  }
  return { scaleName, kind, block } satisfies Fp8Scaling;
}

/**
 * Multiplies `values` (the stored FP8 numbers of a tensor of shape `shape`, row-major) by their scales, in place.
 * @throws ModelLoadError naming the tensor and element for a non-finite scale or scaled weight.
 */
export function applyFp8Scaling(
  values: Float32Array,
  shape: readonly number[],
  scales: Float32Array,
  scaling: Fp8Scaling,
  where: string,
): void {
  for (let i = 0; i < scales.length; i++) {
    if (!Number.isFinite(scales[i])) {
      throw new ModelLoadError(`${where}: scale ${brief(scaling.scaleName)} holds ${scales[i]} at element ${i}`);
    }
  }
  const cols = shape.length === 2 ? shape[1] : values.length;
  const rows = cols === 0 ? 0 : values.length / cols;
  const [b0, b1] = scaling.block;
  const blocksPerRow = Math.ceil(cols / b1);
  let bad = -1;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const scaleRow = scaling.kind === 'block' ? Math.floor(r / b0) * blocksPerRow : 0;
    for (let c = 0; c < cols; c++) {
      const scale =
        scaling.kind === 'tensor'
          ? scales[0]
          : scaling.kind === 'row'
            ? scales[r]
            : scales[scaleRow + Math.floor(c / b1)];
      values[base + c] *= scale;
      const v = values[base + c]; // (read back: the product rounded to float32 may overflow where its double did not)
      if (v - v !== 0 && bad < 0) bad = base + c; // NaN or ±Infinity
    }
  }
  if (bad >= 0) {
    throw new ModelLoadError(
      `${where}: element ${bad} is ${values[bad]} once scaled (a NaN or infinity code, or an overflow); ` +
        `expected finite weights`,
    );
  }
}
