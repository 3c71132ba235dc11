/**
 * Writes tiny Hugging Face-style MoE checkpoints (config.json + safetensors) for tests: real field and tensor names
 * of each supported family, seeded random weights, optionally sharded with an index file. Returns the values as
 * stored (after rounding to the dtype) so tests can compare what the loader reads back exactly.
 */
import * as fs from 'fs';
import * as path from 'path';
import {
  bf16BitsToFloat32,
  f16BitsToFloat32,
  float32ToBf16Bits,
  float32ToF16Bits,
  writeSafetensors,
  type SafetensorsTensorInput,
} from '../../lib/models/safetensors';
import { f8BitsToNumber, numberToF8Bits, type Float8Dtype } from '../../lib/models/float8';
import { randn } from './random';

export type TinyArch =
  | 'mixtral'
  | 'olmoe'
  | 'qwen2_moe'
  | 'qwen3_moe'
  | 'qwen3_next'
  | 'qwen3_vl_moe'
  | 'qwen3_5_moe'
  | 'deepseek_v2'
  | 'deepseek_v3'
  | 'glm4_moe'
  | 'ernie4_5_moe';

export interface TinyCheckpointOptions {
  hiddenSize: number;
  /** Routed expert width (intermediate_size for Mixtral/OLMoE, moe_intermediate_size otherwise). */
  intermediateSize: number;
  numExperts: number;
  topK: number;
  /** num_hidden_layers; default 2. */
  numLayers?: number;
  /** Storage dtype of every tensor; default 'F32'. */
  dtype?: 'F32' | 'BF16' | 'F16';
  /** Split the tensors over two shards with model.safetensors.index.json. */
  sharded?: boolean;
  /** Default 1. */
  seed?: number;
  /** DeepSeek n_shared_experts; default 1 (0 = none). */
  sharedExperts?: number;
  /** Qwen2-MoE shared_expert_intermediate_size; default 2 x intermediateSize. */
  sharedIntermediateSize?: number;
  /** DeepSeek's and GLM's first_k_dense_replace; default 0. */
  firstKDense?: number;
  /** Extra or overriding config.json fields, applied last (e.g. mlp_only_layers, moe_layer_freq). */
  extraConfig?: Record<string, unknown>;
  /**
   * Store every expert projection (routed and shared) in FP8 with scale tensors, as published FP8 checkpoints do
   * (the router gate and bias keep `dtype`): `block` writes `<name>_scale_inv` per block and a `quant_method: "fp8"`
   * config with `weight_block_size` (default [128, 128]); `tensor` and `row` write compressed-tensors'
   * `<name>_scale`. Scales are stored as `scaleDtype` (default F32); sharded, every scale goes to the second shard,
   * away from most of its weights.
   */
  fp8?: {
    dtype: Float8Dtype;
    scales: 'block' | 'tensor' | 'row';
    block?: [number, number];
    scaleDtype?: 'F32' | 'BF16';
  };
  /**
   * Write the routed experts fused, as transformers v5 saves them: `<block>.experts.gate_up_proj` [E, 2f, d] (gate
   * rows first) and `<block>.experts.down_proj` [E, d, f], Mixtral's block under `mlp`; FP8 scales are stacked per
   * expert ([E] for `tensor`). `tensors` still lists every expert projection under its per-expert name.
   * 'transposed': [E, d, 2f] (gate columns first) and [E, f, d], as Qwen3-VL-MoE stores them.
   */
  fusedExperts?: boolean | 'transposed';
}

export interface StoredTensor {
  shape: number[];
  /** Values as stored, i.e. already rounded to the checkpoint dtype (FP8: dequantised, as the loader returns them). */
  data: Float32Array;
}

export interface TinyCheckpoint {
  dir: string;
  config: Record<string, unknown>;
  /** Layers that got MoE tensors (dense layers get none). */
  moeLayers: number[];
  tensors: Record<string, StoredTensor>;
}

const ARCHITECTURES: Record<TinyArch, string> = {
  mixtral: 'MixtralForCausalLM',
  olmoe: 'OlmoeForCausalLM',
  qwen2_moe: 'Qwen2MoeForCausalLM',
  qwen3_next: 'Qwen3NextForCausalLM',
  qwen3_vl_moe: 'Qwen3VLMoeForConditionalGeneration',
  qwen3_5_moe: 'Qwen3_5MoeForConditionalGeneration',
  qwen3_moe: 'Qwen3MoeForCausalLM',
  deepseek_v2: 'DeepseekV2ForCausalLM',
  deepseek_v3: 'DeepseekV3ForCausalLM',
  glm4_moe: 'Glm4MoeForCausalLM',
  ernie4_5_moe: 'Ernie4_5_MoeForCausalLM',
};

const TORCH_DTYPE = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' } as const;

function buildConfig(arch: TinyArch, opts: TinyCheckpointOptions): Record<string, unknown> {
  const { hiddenSize, intermediateSize, numExperts, topK } = opts;
  const config: Record<string, unknown> = {
    architectures: [ARCHITECTURES[arch]],
    model_type: arch,
    hidden_size: hiddenSize,
    num_hidden_layers: opts.numLayers ?? 2,
    num_attention_heads: 2,
    vocab_size: 64,
    rms_norm_eps: 1e-6,
    torch_dtype: TORCH_DTYPE[opts.dtype ?? 'F32'],
    num_experts_per_tok: topK,
  };
  switch (arch) {
    case 'mixtral':
      Object.assign(config, { intermediate_size: intermediateSize, num_local_experts: numExperts });
      break;
    case 'olmoe':
      Object.assign(config, { intermediate_size: intermediateSize, num_experts: numExperts, norm_topk_prob: false });
      break;
    case 'qwen2_moe':
    case 'qwen3_moe':
    case 'qwen3_next':
    case 'qwen3_vl_moe':
      Object.assign(config, {
        intermediate_size: intermediateSize * 4,
        moe_intermediate_size: intermediateSize,
        num_experts: numExperts,
        decoder_sparse_step: 1,
        mlp_only_layers: [],
        // (left out for Qwen3-Next: its config class renormalises by default)
        // (false for Qwen3-VL-MoE, whose router renormalises whatever its config says)
        ...(arch === 'qwen3_next' ? {} : { norm_topk_prob: arch === 'qwen3_moe' }),
      });
      if (arch === 'qwen2_moe' || arch === 'qwen3_next')
        config.shared_expert_intermediate_size = opts.sharedIntermediateSize ?? 2 * intermediateSize;
      break;
    case 'qwen3_5_moe':
      // (every layer sparse: no mlp_only_layers, decoder_sparse_step or norm_topk_prob in its config)
      Object.assign(config, {
        moe_intermediate_size: intermediateSize,
        num_experts: numExperts,
        shared_expert_intermediate_size: opts.sharedIntermediateSize ?? 2 * intermediateSize,
      });
      break;
    case 'deepseek_v2':
    case 'deepseek_v3': {
      const v3 = arch === 'deepseek_v3';
      const nGroup = numExperts % 4 === 0 && numExperts >= 8 ? 4 : numExperts % 2 === 0 ? 2 : 1;
      Object.assign(config, {
        intermediate_size: intermediateSize * 4,
        moe_intermediate_size: intermediateSize,
        n_routed_experts: numExperts,
        n_shared_experts: opts.sharedExperts ?? 1,
        first_k_dense_replace: opts.firstKDense ?? 0,
        moe_layer_freq: 1,
        norm_topk_prob: v3,
        routed_scaling_factor: v3 ? 2.5 : 1.0,
        scoring_func: v3 ? 'sigmoid' : 'softmax',
        topk_method: v3 ? 'noaux_tc' : 'greedy',
        n_group: v3 ? nGroup : null,
        topk_group: v3 ? Math.max(1, nGroup / 2) : null,
      });
      break;
    }
    case 'ernie4_5_moe': {
      // (its own key names for the expert count and k, as ERNIE 4.5's configs have them)
      delete config.num_experts_per_tok;
      Object.assign(config, {
        intermediate_size: intermediateSize * 4,
        moe_intermediate_size: intermediateSize,
        moe_num_experts: numExperts,
        moe_k: topK,
        moe_num_shared_experts: opts.sharedExperts ?? 1,
        moe_layer_start_index: opts.firstKDense ?? 0,
        moe_layer_end_index: -1,
        moe_layer_interval: 1,
        use_bias: false,
      });
      break;
    }
    case 'glm4_moe': {
      // (GLM-4.5 itself: one group; two here, so that the group rule is exercised)
      const nGroup = numExperts % 2 === 0 && numExperts >= 4 ? 2 : 1;
      Object.assign(config, {
        intermediate_size: intermediateSize * 4,
        moe_intermediate_size: intermediateSize,
        n_routed_experts: numExperts,
        n_shared_experts: opts.sharedExperts ?? 1,
        first_k_dense_replace: opts.firstKDense ?? 0,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
        n_group: nGroup,
        topk_group: 1,
      });
      break;
    }
  }
  if (opts.fp8) {
    const { scales, block = [128, 128] } = opts.fp8;
    config.quantization_config =
      scales === 'block'
        ? { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: block }
        : {
            quant_method: 'compressed-tensors',
            format: 'float-quantized',
            config_groups: {
              group_0: { weights: { num_bits: 8, type: 'float', strategy: scales === 'row' ? 'channel' : 'tensor' } },
            },
          };
  }
  if (arch === 'qwen3_vl_moe' || arch === 'qwen3_5_moe') {
    // a vision-language model: the language model's fields under text_config, quantisation at the top
    const { architectures, quantization_config: quantization, ...text } = config;
    const nested: Record<string, unknown> = { architectures, model_type: arch };
    nested.text_config = { ...text, model_type: `${arch}_text` };
    if (quantization) nested.quantization_config = quantization;
    return { ...nested, ...opts.extraConfig };
  }
  return { ...config, ...opts.extraConfig };
}

const FP8_MAX: Record<Float8Dtype, number> = { F8_E4M3: 448, F8_E5M2: 57344 };

/**
 * Quantises a [rows, cols] weight to FP8 the way checkpoint tools do (each group's scale = its largest magnitude /
 * the format's largest value), returning the stored bytes as float32 (for the writer), the scale tensor and the
 * dequantised values the loader must produce.
 */
function quantiseFp8(
  values: Float32Array,
  shape: number[],
  fp8: NonNullable<TinyCheckpointOptions['fp8']>,
): { stored: Float32Array; scaleShape: number[]; scales: Float32Array; dequantised: Float32Array } {
  const [rows, cols] = shape;
  const [b0, b1] = fp8.scales === 'block' ? (fp8.block ?? [128, 128]) : fp8.scales === 'row' ? [1, cols] : [rows, cols];
  const groupRows = Math.ceil(rows / b0);
  const groupCols = Math.ceil(cols / b1);
  const groupOf = (r: number, c: number) => Math.floor(r / b0) * groupCols + Math.floor(c / b1);
  const scales = new Float32Array(groupRows * groupCols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++)
      scales[groupOf(r, c)] = Math.max(scales[groupOf(r, c)], Math.abs(values[r * cols + c]));
  for (let g = 0; g < scales.length; g++) scales[g] = scales[g] > 0 ? scales[g] / FP8_MAX[fp8.dtype] : 1;
  scales.set(roundToDtype(scales, fp8.scaleDtype ?? 'F32')); // (as stored: what the loader multiplies by)
  const stored = new Float32Array(values.length);
  const dequantised = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      const scale = scales[groupOf(r, c)];
      stored[i] = f8BitsToNumber(numberToF8Bits(values[i] / scale, fp8.dtype), fp8.dtype);
      dequantised[i] = stored[i] * scale;
    }
  }
  const scaleShape = fp8.scales === 'block' ? [groupRows, groupCols] : fp8.scales === 'row' ? [rows, 1] : [];
  return { stored, scaleShape, scales, dequantised };
}

/** Where a layer's tensors sit: a vision-language model's language layers under model.language_model. */
export function layerPrefix(arch: TinyArch, layer: number): string {
  return arch === 'qwen3_vl_moe' || arch === 'qwen3_5_moe'
    ? `model.language_model.layers.${layer}`
    : `model.layers.${layer}`;
}

/** The config a layer is described by: a vision-language model's text_config. */
export function textConfig(config: Record<string, unknown>): Record<string, unknown> {
  return (config.text_config as Record<string, unknown> | undefined) ?? config;
}

/** The Hugging Face rule for which layers are sparse, evaluated on the final config. */
function isMoELayer(arch: TinyArch, config: Record<string, unknown>, layer: number): boolean {
  if (arch === 'qwen3_5_moe') return true;
  if (arch === 'qwen2_moe' || arch === 'qwen3_moe' || arch === 'qwen3_next' || arch === 'qwen3_vl_moe') {
    const mlpOnly = (config.mlp_only_layers as number[] | undefined) ?? [];
    const step = (config.decoder_sparse_step as number | undefined) ?? 1;
    return !mlpOnly.includes(layer) && (layer + 1) % step === 0;
  }
  if (arch === 'glm4_moe') return layer >= ((config.first_k_dense_replace as number | undefined) ?? 1);
  if (arch === 'ernie4_5_moe') {
    const end = config.moe_layer_end_index as number;
    const last = end === -1 ? (config.num_hidden_layers as number) - 1 : end;
    const start = config.moe_layer_start_index as number;
    return layer >= start && layer <= last && (layer + 1) % (config.moe_layer_interval as number) === 0;
  }
  if (arch === 'deepseek_v2' || arch === 'deepseek_v3') {
    const firstDense = (config.first_k_dense_replace as number | undefined) ?? 0;
    const freq = (config.moe_layer_freq as number | undefined) ?? 1;
    return layer >= firstDense && layer % freq === 0;
  }
  return true;
}

/** Shapes of every MoE tensor of one layer, in the order they are written. */
function layerTensorShapes(arch: TinyArch, config: Record<string, unknown>, layer: number): [string, number[]][] {
  const d = config.hidden_size as number;
  const f = (config.moe_intermediate_size ?? config.intermediate_size) as number;
  const numExperts = (config.num_local_experts ??
    config.num_experts ??
    config.n_routed_experts ??
    config.moe_num_experts) as number;
  const mixtral = arch === 'mixtral';
  const prefix = `${layerPrefix(arch, layer)}.${mixtral ? 'block_sparse_moe' : 'mlp'}`;
  const shapes: [string, number[]][] = [[`${prefix}.gate.weight`, [numExperts, d]]];
  const biased = arch === 'deepseek_v3' || arch === 'glm4_moe';
  if (biased) shapes.push([`${prefix}.gate.e_score_correction_bias`, [numExperts]]);
  if (arch === 'ernie4_5_moe') shapes.push([`${prefix}.moe_statics.e_score_correction_bias`, [1, numExperts]]);
  for (let e = 0; e < numExperts; e++) {
    const [w1, w3, w2] = mixtral ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
    shapes.push([`${prefix}.experts.${e}.${w1}.weight`, [f, d]]);
    shapes.push([`${prefix}.experts.${e}.${w3}.weight`, [f, d]]);
    shapes.push([`${prefix}.experts.${e}.${w2}.weight`, [d, f]]);
  }
  let shared: { name: string; width: number } | null = null;
  if (arch === 'qwen2_moe' || arch === 'qwen3_next' || arch === 'qwen3_5_moe')
    shared = { name: 'shared_expert', width: config.shared_expert_intermediate_size as number };
  const nShared = (config.n_shared_experts ?? config.moe_num_shared_experts ?? 0) as number;
  const merged = ['deepseek_v2', 'deepseek_v3', 'glm4_moe', 'ernie4_5_moe'].includes(arch); // (one wide shared expert)
  if (merged && nShared > 0) {
    shared = { name: 'shared_experts', width: nShared * f };
  }
  if (shared) {
    shapes.push([`${prefix}.${shared.name}.gate_proj.weight`, [shared.width, d]]);
    shapes.push([`${prefix}.${shared.name}.up_proj.weight`, [shared.width, d]]);
    shapes.push([`${prefix}.${shared.name}.down_proj.weight`, [d, shared.width]]);
  }
  if (arch === 'qwen2_moe' || arch === 'qwen3_next' || arch === 'qwen3_5_moe')
    shapes.push([`${prefix}.shared_expert_gate.weight`, [1, d]]);
  return shapes;
}

/** Rounds float32 values to what `dtype` stores, using the library's own conversions. */
export function roundToDtype(values: Float32Array, dtype: 'F32' | 'BF16' | 'F16'): Float32Array {
  if (dtype === 'F32') return values.slice();
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    out[i] =
      dtype === 'BF16'
        ? bf16BitsToFloat32(float32ToBf16Bits(values[i]))
        : f16BitsToFloat32(float32ToF16Bits(values[i]));
  }
  return out;
}

/**
 * Writes config.json and the MoE tensors of every MoE layer into `dir` (which must exist), with normal weights of
 * standard deviation 0.05 seeded per tensor. With `sharded`, the tensors are split over two shards listed in
 * model.safetensors.index.json.
 */
export function writeTinyCheckpoint(dir: string, arch: TinyArch, opts: TinyCheckpointOptions): TinyCheckpoint {
  const config = buildConfig(arch, opts);
  const dtype = opts.dtype ?? 'F32';
  const seed = opts.seed ?? 1;
  const text = textConfig(config);
  const numLayers = text.num_hidden_layers as number;
  const moeLayers: number[] = [];
  const inputs: [string, SafetensorsTensorInput][] = [];
  const scaleInputs: [string, SafetensorsTensorInput][] = [];
  const tensors: Record<string, StoredTensor> = {};
  let serial = 0; // (one seed per tensor generated, in order)
  /** Adds a tensor to write; projections become FP8 with their scales when asked (`stack`: experts in dim 0). */
  const emit = (name: string, shape: number[], values: Float32Array, projection: boolean, stack = 1) => {
    if (!(opts.fp8 && projection)) {
      inputs.push([name, { dtype, shape, data: values }]);
      return roundToDtype(values, dtype);
    }
    const fp8 = opts.fp8;
    const matrix = stack > 1 ? shape.slice(1) : shape;
    const size = values.length / stack;
    const parts = Array.from({ length: stack }, (_, e) =>
      quantiseFp8(values.subarray(e * size, (e + 1) * size), matrix, fp8),
    );
    const concat = (key: 'stored' | 'scales' | 'dequantised') => {
      const out = new Float32Array(parts.reduce((n, p) => n + p[key].length, 0));
      let at = 0;
      for (const p of parts) {
        out.set(p[key], at);
        at += p[key].length;
      }
      return out;
    };
    const scaleShape = stack > 1 ? [stack, ...parts[0].scaleShape] : parts[0].scaleShape;
    const scaleName = `${name}${fp8.scales === 'block' ? '_scale_inv' : '_scale'}`;
    inputs.push([name, { dtype: fp8.dtype, shape, data: concat('stored') }]);
    scaleInputs.push([scaleName, { dtype: fp8.scaleDtype ?? 'F32', shape: scaleShape, data: concat('scales') }]);
    tensors[scaleName] = { shape: scaleShape, data: concat('scales') };
    return concat('dequantised');
  };
  const projectionName = /\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$/;
  for (let layer = 0; layer < numLayers; layer++) {
    if (!isMoELayer(arch, text, layer)) continue;
    moeLayers.push(layer);
    const routed: [string, number[], Float32Array][] = [];
    for (const [name, shape] of layerTensorShapes(arch, text, layer)) {
      const values = randn(
        shape.reduce((a, b) => a * b, 1),
        seed * 100003 + serial++,
        0.05,
      );
      if (opts.fusedExperts && /\.experts\.\d+\./.test(name)) {
        routed.push([name, shape, values]);
        continue;
      }
      // (fused, as transformers v5 writes them: Mixtral's block, router included, is `mlp`; ERNIE's statics move
      // under the router)
      const onDisk = !opts.fusedExperts
        ? name
        : name.replace('.block_sparse_moe.', '.mlp.').replace('.mlp.moe_statics.', '.mlp.gate.moe_statics.');
      tensors[name] = { shape, data: emit(onDisk, shape, values, projectionName.test(name)) };
    }
    if (!routed.length) continue;
    // fused: per expert, its gate then its up rows (columns, transposed); and its down projection
    const E = routed.length / 3;
    const [f, d] = routed[0][1];
    const t = opts.fusedExperts === 'transposed';
    // where w1[j][k], w3[j][k] and w2[k][j] of expert e sit in the stacks (j < f, k < d)
    const gateAt = (e: number, j: number, k: number) => e * 2 * f * d + (t ? k * 2 * f + j : j * d + k);
    const upAt = (e: number, j: number, k: number) => e * 2 * f * d + (t ? k * 2 * f + f + j : (f + j) * d + k);
    const downAt = (e: number, j: number, k: number) => e * d * f + (t ? j * d + k : k * f + j);
    const gateUp = new Float32Array(E * 2 * f * d);
    const down = new Float32Array(E * d * f);
    const each = (visit: (e: number, j: number, k: number) => void) => {
      for (let e = 0; e < E; e++) for (let j = 0; j < f; j++) for (let k = 0; k < d; k++) visit(e, j, k);
    };
    each((e, j, k) => {
      gateUp[gateAt(e, j, k)] = routed[3 * e][2][j * d + k];
      gateUp[upAt(e, j, k)] = routed[3 * e + 1][2][j * d + k];
      down[downAt(e, j, k)] = routed[3 * e + 2][2][k * f + j];
    });
    const block = `${layerPrefix(arch, layer)}.mlp.experts`;
    const storedGateUp = emit(`${block}.gate_up_proj`, t ? [E, d, 2 * f] : [E, 2 * f, d], gateUp, true, E);
    const storedDown = emit(`${block}.down_proj`, t ? [E, f, d] : [E, d, f], down, true, E);
    const [w1s, w3s, w2s] = [0, 1, 2].map(() => Array.from({ length: E }, () => new Float32Array(f * d)));
    each((e, j, k) => {
      w1s[e][j * d + k] = storedGateUp[gateAt(e, j, k)];
      w3s[e][j * d + k] = storedGateUp[upAt(e, j, k)];
      w2s[e][k * f + j] = storedDown[downAt(e, j, k)];
    });
    for (let e = 0; e < E; e++) {
      const [w1, w3, w2] = routed.slice(3 * e, 3 * e + 3).map(([name]) => name);
      tensors[w1] = { shape: [f, d], data: w1s[e] };
      tensors[w3] = { shape: [f, d], data: w3s[e] };
      tensors[w2] = { shape: [d, f], data: w2s[e] };
    }
  }
  inputs.push(...scaleInputs);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  if (!opts.sharded) {
    writeSafetensors(path.join(dir, 'model.safetensors'), Object.fromEntries(inputs), { format: 'pt' });
  } else {
    const half = Math.ceil(inputs.length / 2);
    const shards = [inputs.slice(0, half), inputs.slice(half)];
    const weightMap: Record<string, string> = {};
    let totalSize = 0;
    shards.forEach((shard, i) => {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      writeSafetensors(path.join(dir, file), Object.fromEntries(shard), { format: 'pt' });
      for (const [name, input] of shard) {
        weightMap[name] = file;
        totalSize += input.data.length * { F32: 4, BF16: 2, F16: 2, F8_E4M3: 1, F8_E5M2: 1 }[input.dtype];
      }
    });
    const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index, null, 2));
  }
  return { dir, config, moeLayers, tensors };
}
