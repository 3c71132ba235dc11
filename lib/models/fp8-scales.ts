/**
 * Dequantisation of FP8 checkpoints: a weight stored as F8_E4M3 (or F8_E5M2) comes with a tensor of float scales,
 * and its value is the stored number times the scale of its block, row or tensor. Two conventions are read:
 * - `<name>_scale_inv` (DeepSeek-V3/R1, Qwen3 FP8 and other `quant_method: "fp8"` checkpoints): one scale per block
 *   of `quantization_config.weight_block_size` (default 128 x 128), shape [ceil(rows / b0), ceil(cols / b1)].
 *   Despite the name it multiplies, as in DeepSeek's own `weight_dequant`.
 * - `<name>_scale` (compressed-tensors FP8): one scale for the tensor ([] or [1]), one per row ([rows] or
 *   [rows, 1]), or, where the config states a block size (its `block_structure`), one per block as above.
 * The block size is one for the whole checkpoint, as both conventions write it.
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
  /**
   * A fused [E, rows, cols] tensor (experts stacked) whose scales are stacked the same way, [E, ...]: slice e of the
   * scales scales slice e of the tensor, by `kind` over its [rows, cols]. False: `kind` applies to the tensor as is.
   */
  stacked: boolean;
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

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

function blockFrom(value: unknown, field: string, where: string): [number, number] {
  const valid =
    Array.isArray(value) &&
    value.length === 2 &&
    value.every((v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 && v <= 2 ** 20);
  if (!valid) throw new ModelLoadError(`${where}: ${field} is ${brief(value)}, expected two integers in [1, 2^20]`);
  return [value[0], value[1]];
}

/** The block size of block-wise scales, and whether the config states it (else the 128 x 128 convention). */
export interface Fp8Blocks {
  block: [number, number];
  stated: boolean;
}

/**
 * The block size of block-wise FP8 scales from `config.quantization_config`: `weight_block_size` (the "fp8"
 * method), else `config_groups.*.weights.block_structure` (compressed-tensors; every group that states one must
 * state the same), else 128 x 128, not stated.
 * @throws ModelLoadError (naming `where`, the config's file) when a field present is not two integers in
 *   [1, 2^20], or groups disagree.
 */
export function fp8BlockSize(config: Record<string, unknown>, where: string): Fp8Blocks {
  const quant = config.quantization_config;
  if (!isPlainObject(quant)) return { block: DEFAULT_BLOCK, stated: false };
  if (quant.weight_block_size !== undefined && quant.weight_block_size !== null)
    return { block: blockFrom(quant.weight_block_size, 'quantization_config.weight_block_size', where), stated: true };
  let found: { block: [number, number]; field: string } | undefined;
  if (isPlainObject(quant.config_groups)) {
    for (const [group, spec] of Object.entries(quant.config_groups)) {
      const weights = isPlainObject(spec) ? spec.weights : undefined;
      const structure = isPlainObject(weights) ? weights.block_structure : undefined;
      if (structure === undefined || structure === null) continue;
      const field = `quantization_config.config_groups.${group}.weights.block_structure`;
      const block = blockFrom(structure, field, where);
      if (found && !same(found.block, block)) {
        throw new ModelLoadError(
          `${where}: ${field} is ${brief(block)} but ${found.field} is ${brief(found.block)}; ` +
            `expected one block size for every group`,
        );
      }
      found ??= { block, field };
    }
  }
  return found ? { block: found.block, stated: true } : { block: DEFAULT_BLOCK, stated: false };
}

/**
 * Finds and checks the scale tensor of FP8 tensor `name` (shape `shape`), without reading data.
 * @throws ModelLoadError when there is no scale tensor or two, or its dtype or shape does not fit.
 */
export function fp8ScalingOf(ckpt: TensorLookup, name: string, shape: readonly number[], blocks: Fp8Blocks) {
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
  const { block } = blocks;
  const inverse = scaleName.endsWith('_scale_inv'); // the "fp8" method: block-wise only
  // A fused [E, rows, cols] tensor: one scale for all (per tensor), or a scale tensor with the same leading E whose
  // slices follow the 2-D rules on [rows, cols].
  const stacked = shape.length === 3 && info.shape.length >= 1 && info.shape[0] === shape[0] && !same(info.shape, [1]);
  const matrix = stacked ? shape.slice(1) : shape;
  const s = stacked ? info.shape.slice(1) : info.shape;
  const twoD = matrix.length === 2;
  const blockShape = twoD ? [Math.ceil(matrix[0] / block[0]), Math.ceil(matrix[1] / block[1])] : null;
  let kind: Fp8Scaling['kind'] | null = null;
  if (!inverse && (same(s, []) || same(s, [1]))) kind = 'tensor';
  else if (!inverse && twoD && (same(s, [matrix[0]]) || same(s, [matrix[0], 1]))) kind = 'row';
  // (compressed-tensors' per-block scales only where the config states the block, as its "block" strategy does)
  else if (blockShape && (inverse || blocks.stated) && same(s, blockShape)) kind = 'block';
  if (kind === null) {
    // (what would fit: the rules on the weight's matrix, with a leading E for a stack of experts)
    const fused = shape.length === 3;
    const m = fused ? shape.slice(1) : shape;
    const lead = fused ? `${shape[0]}, ` : '';
    const blockWise =
      `[${lead}${Math.ceil(m[0] / block[0])}, ${Math.ceil(m[1] / block[1])}] (blocks of ${block[0]} x ${block[1]}; ` +
      `set quantization_config.weight_block_size for another size)`;
    const perTensor = `[] or [1] (per tensor)${fused ? `, [${shape[0]}] (per expert)` : ''}`;
    const perRow = m.length === 2 ? `, [${lead}${m[0]}] or [${lead}${m[0]}, 1] (per row)` : '';
    const expected = inverse
      ? m.length === 2
        ? blockWise
        : 'a 2-D weight, or a 3-D one of stacked experts (block-wise scales)'
      : perTensor + perRow + (m.length === 2 && blocks.stated ? `, or ${blockWise}` : '');
    throw new ModelLoadError(
      `${where}: scale ${brief(scaleName)} has shape [${info.shape.join(', ')}], expected ${expected}`,
    );
  }
  return { scaleName, kind, block, stacked } satisfies Fp8Scaling;
}

/** Where the scale of element (r, c) of a [rows, cols] matrix is in its scales (for a stacked tensor: in its slice's). */
export function fp8ScaleIndex(scaling: Fp8Scaling, cols: number, r: number, c: number): number {
  const [b0, b1] = scaling.block;
  if (scaling.kind === 'tensor') return 0;
  if (scaling.kind === 'row') return r;
  return Math.floor(r / b0) * Math.ceil(cols / b1) + Math.floor(c / b1);
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
  // Each row is a run of column groups with one scale each (the whole row, or its blocks). `poison` turns NaN as
  // soon as one scaled value is NaN or infinite (v - v is 0 for every finite v), read back from the float32 array:
  // the rounded product may overflow where the double did not.
  const groupWidth = scaling.kind === 'block' ? scaling.block[1] : Math.max(cols, 1);
  const groupsPerRow = Math.ceil(cols / groupWidth);
  let poison = 0;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let g = 0; g < groupsPerRow; g++) {
      const scale = scales[fp8ScaleIndex(scaling, cols, r, g * groupWidth)];
      const end = base + Math.min(cols, (g + 1) * groupWidth);
      for (let i = base + g * groupWidth; i < end; i++) {
        values[i] *= scale;
        const v = values[i];
        poison += v - v;
      }
    }
  }
  const bad = poison === 0 ? -1 : values.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) {
    throw new ModelLoadError(
      `${where}: element ${bad} is ${values[bad]} once scaled (a NaN or infinity code, or an overflow); ` +
        `expected finite weights`,
    );
  }
}
