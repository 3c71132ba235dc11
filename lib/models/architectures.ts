/**
 * Adapters from Hugging Face MoE model families (Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE, Qwen3-Next, the language
 * layers of Qwen3-VL-MoE, Qwen3.5-MoE and Llama 4, DeepSeek-V2/V3, GLM-4.5, ERNIE 4.5, gpt-oss) to one
 * layer description: sizes, which layers are sparse, and the tensor names of the router, experts and shared
 * experts. Each family names and sizes these differently in `config.json` and in the weights; this file is the only
 * place that knows those differences. Experts are read lazily because a whole layer can be several GB in float32.
 */
import { brief, ModelLoadError, ValidationError } from '../errors';
import type { E4m3ExpertWeights, ExpertBiases, ResolvedActivation } from '../layer';
import type { Checkpoint } from './checkpoint';
import { GPT_OSS_ALPHA, GPT_OSS_LIMIT, gptOssExperts, gptOssNames, type GptOssNames } from './gpt-oss';
import { ARCHITECTURE_OF_MODEL_TYPE, expertCountKey, textConfigOf } from './router-config';

/** Tensor names of one SwiGLU expert: w1 = gate_proj [f, d], w3 = up_proj [f, d], w2 = down_proj [d, f]. */
export interface ExpertTensorNames {
  w1: string;
  w3: string;
  w2: string;
}

/** One sparse layer of a supported Hugging Face model: sizes and tensor names. */
export interface MoELayerSpec {
  /** Model class, e.g. 'MixtralForCausalLM'. */
  architecture: string;
  /** `config.model_type`, e.g. 'mixtral'. */
  modelType: string;
  layer: number;
  hiddenSize: number;
  /** Width f of each routed expert. */
  intermediateSize: number;
  numExperts: number;
  topK: number;
  names: {
    /** Router weight [numExperts, hiddenSize]. */
    gate: string;
    /** Router score-correction bias [numExperts] (DeepSeek, GLM, ERNIE; see `requiresBias`, `biasShape`). */
    bias?: string;
    expert(e: number): ExpertTensorNames;
    /** Shared expert(s), always applied; `gate` is Qwen2-MoE's sigmoid gate weight [1, hiddenSize]. */
    shared?: ExpertTensorNames & { gate?: string };
    /**
     * The same layer saved with fused experts (transformers v5's in-memory layout, which its save_pretrained writes
     * with `save_original_format=False`, as some trainers and quantisers do): every expert's
     * gate and up projections in one [numExperts, 2 x f, hiddenSize] tensor (gate rows first), the down projections in
     * [numExperts, hiddenSize, f], and the router's weight under `gate` (Mixtral's block moves from
     * `block_sparse_moe` to `mlp`). Read when the checkpoint has these instead of expert 0's own tensors; stacks
     * stored transposed ([numExperts, hiddenSize, 2 x f] and [numExperts, f, hiddenSize], Qwen3-VL-MoE's) too.
     */
    fused: {
      gate: string;
      gateUp: string;
      down: string;
      /** Where the layout moves the bias too (ERNIE). */
      bias?: string;
    };
    /** gpt-oss: the router's bias term [numExperts] (added to the logits). */
    logitBias?: string;
    /** gpt-oss: its expert stacks, whose layout is its own (lib/models/gpt-oss.ts); `expert` and `fused` unused. */
    gptOss?: GptOssNames;
  };
  /** The experts' activation where it is not SwiGLU (gpt-oss). */
  activation?: ResolvedActivation;
  /** Llama 4: the routing weight scales each routed expert's input (MoELayerOptions.weightInputs). */
  weightInputs?: boolean;
  /** Width of the shared expert (DeepSeek: n_shared_experts x moe_intermediate_size). */
  sharedIntermediateSize?: number;
  /**
   * True when the model's routing cannot work without `names.bias` (DeepSeek `topk_method: noaux_tc`, the V3
   * default); otherwise the bias is loaded only if the checkpoint has it. Router rules themselves come from
   * router-config.ts.
   */
  requiresBias?: boolean;
  /** The bias tensor's shape: [numExperts], or ERNIE 4.5's [1, numExperts] (one group). */
  biasShape?: number[];
}

/** Float32 expert weights, row-major: w1 and w3 [f, d], w2 [d, f]; biases where the model has them (gpt-oss). */
export interface ExpertWeights extends ExpertBiases {
  w1: Float32Array;
  w3: Float32Array;
  w2: Float32Array;
}

/** Router and shared weights of one layer, read eagerly; routed experts read on demand by `expert(e)`. */
export interface LoadedMoELayer {
  spec: MoELayerSpec;
  /** [numExperts, hiddenSize]. */
  gateWeight: Float32Array;
  /** [numExperts]. */
  bias?: Float32Array;
  /** The router's bias term [numExperts] (gpt-oss). */
  logitBias?: Float32Array;
  /**
   * Reads expert `e` from the checkpoint (a fresh copy each call), so callers can pack and drop one expert before
   * reading the next. @throws ValidationError when `e` is not an integer in [0, numExperts).
   */
  expert(e: number): ExpertWeights;
  /**
   * Expert `e` as the checkpoint stores it in E4M3 (for an 'fp8' layer), or null where {@link Checkpoint.readE4m3}
   * cannot keep it: weights of another dtype, fused stacks.
   */
  expertE4m3(e: number): E4m3ExpertWeights | null;
  shared?: ExpertWeights & { intermediateSize: number; /** [hiddenSize] */ gate?: Float32Array };
  /** The shared expert in E4M3 as {@link expertE4m3}, or null. */
  sharedE4m3(): E4m3ExpertWeights | null;
  /** The tensors the routed experts are read from: one per projection and expert, or the fused pair. */
  expertLayout: 'per-expert' | 'fused' | 'fused, transposed' | 'fused, transposed, interleaved' | 'MXFP4, interleaved';
}

/** w1, w3 [f, d] and w2 [d, f] as stored in E4M3, or null unless all three can be kept so. */
function e4m3Of(
  ckpt: Checkpoint,
  names: { w1: string; w3: string; w2: string },
  f: number,
  d: number,
): E4m3ExpertWeights | null {
  const w1 = ckpt.readE4m3(names.w1, [f, d]);
  const w3 = w1 && ckpt.readE4m3(names.w3, [f, d]);
  const w2 = w3 && ckpt.readE4m3(names.w2, [d, f]);
  return w1 && w3 && w2 ? { e4m3: { w1, w3, w2 } } : null;
}

/** Every model type whose layers load. */
type Family = keyof typeof ARCHITECTURE_OF_MODEL_TYPE;

const ARCHITECTURE_OF: Readonly<Record<Family, string>> = ARCHITECTURE_OF_MODEL_TYPE;

const SUPPORTED = Object.entries(ARCHITECTURE_OF)
  .map(([type, arch]) => `${arch} (${type})`)
  .join(', ');

function familyOf(config: Record<string, unknown>): { family: Family; architecture: string } {
  const architectures = config.architectures;
  const named = Array.isArray(architectures) && typeof architectures[0] === 'string' ? architectures[0] : undefined;
  const modelType = typeof config.model_type === 'string' ? config.model_type : undefined;
  const byName = (Object.keys(ARCHITECTURE_OF) as Family[]).find((f) => ARCHITECTURE_OF[f] === named);
  const byType =
    modelType !== undefined && Object.hasOwn(ARCHITECTURE_OF, modelType) ? (modelType as Family) : undefined;
  if (byName && byType && byName !== byType) {
    throw new ModelLoadError(
      `config: architectures[0] is ${brief(named)} but model_type is ${brief(modelType)}; expected matching values`,
    );
  }
  const family = byName ?? byType;
  if (!family) {
    throw new ModelLoadError(
      `config: unsupported model (architectures[0] ${brief(named)}, model_type ${brief(modelType)}); ` +
        `supported: ${SUPPORTED}`,
    );
  }
  return { family, architecture: named ?? ARCHITECTURE_OF[family] };
}

/** Reads config fields for one architecture, with errors that name the field, value and expectation. */
class ConfigReader {
  constructor(
    private readonly config: Record<string, unknown>,
    private readonly architecture: string,
  ) {}

  /** Whether `key` is present with exactly `value`. */
  has(key: string, value: unknown): boolean {
    return Object.hasOwn(this.config, key) && this.config[key] === value;
  }

  /** A finite number above 0 (`fallback` when left out). */
  positive(key: string, fallback: number): number {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'number' || !(Math.fround(value) > 0) || !Number.isFinite(Math.fround(value)))
      throw this.error(key, value, 'a number > 0 (a finite float32)');
    return value;
  }

  int(key: string, min: number, fallback?: number): number {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
      throw this.error(key, value, `an integer >= ${min}`);
    }
    return value;
  }

  string(key: string, fallback: string, allowed: readonly string[]): string {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'string' || !allowed.includes(value)) throw this.error(key, value, allowed.join(' | '));
    return value;
  }

  intList(key: string): number[] {
    const value = this.config[key] ?? [];
    if (!Array.isArray(value) || !value.every((v) => Number.isSafeInteger(v))) {
      throw this.error(key, value, 'a list of integers');
    }
    return value as number[];
  }

  error(key: string, value: unknown, expected: string): ModelLoadError {
    return new ModelLoadError(`config (${this.architecture}): "${key}" is ${brief(value)}, expected ${expected}`);
  }
}

/** The errors {@link resolveMoELayer} throws for a dense layer (a fact of the model, not a fault of the files). */
const denseLayerErrors = new WeakSet<Error>();

function denseLayerError(architecture: string, layer: number, reason: string): ModelLoadError {
  const err = new ModelLoadError(`${architecture} layer ${layer} is a dense MLP layer, not an MoE layer: ${reason}`);
  denseLayerErrors.add(err);
  return err;
}

/** Whether `err` is resolveMoELayer's refusal of a dense layer (whatever words a path or tensor name adds). */
export function isDenseLayerError(err: unknown): boolean {
  return err instanceof Error && denseLayerErrors.has(err);
}

function expertNames(prefix: string, style: 'mixtral' | 'hf'): (e: number) => ExpertTensorNames {
  if (style === 'mixtral') {
    return (e) => ({
      w1: `${prefix}.experts.${e}.w1.weight`,
      w3: `${prefix}.experts.${e}.w3.weight`,
      w2: `${prefix}.experts.${e}.w2.weight`,
    });
  }
  return (e) => projNames(`${prefix}.experts.${e}`);
}

/** The fused expert tensors of the block at `prefix` (see MoELayerSpec.names.fused). */
function fusedNames(prefix: string): MoELayerSpec['names']['fused'] {
  return {
    gate: `${prefix}.gate.weight`,
    gateUp: `${prefix}.experts.gate_up_proj`,
    down: `${prefix}.experts.down_proj`,
  };
}

function projNames(prefix: string): ExpertTensorNames {
  return { w1: `${prefix}.gate_proj.weight`, w3: `${prefix}.up_proj.weight`, w2: `${prefix}.down_proj.weight` };
}

/**
 * DeepSeek's, GLM's and ERNIE's shared experts: `count` (config key `key`, `fallback` when left out, none when null)
 * experts of the routed width merged into one `shared_experts` MLP at `prefix`.
 */
function mergedSharedExperts(read: ConfigReader, spec: MoELayerSpec, prefix: string, key: string, fallback: number) {
  const count = read.has(key, null) ? 0 : read.int(key, 0, fallback);
  if (count === 0) return;
  spec.names.shared = projNames(`${prefix}.shared_experts`);
  spec.sharedIntermediateSize = count * spec.intermediateSize;
}

/** Qwen2/3-MoE, Qwen3-Next: sparse iff not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0. */
function checkQwenSparse(read: ConfigReader, architecture: string, layer: number): void {
  const mlpOnly = read.intList('mlp_only_layers');
  const step = read.int('decoder_sparse_step', 1, 1);
  if (mlpOnly.includes(layer)) throw denseLayerError(architecture, layer, `it is listed in mlp_only_layers`);
  if ((layer + 1) % step !== 0) {
    throw denseLayerError(architecture, layer, `(layer + 1) % decoder_sparse_step (${step}) != 0`);
  }
}

/**
 * DeepSeek: sparse iff layer >= first_k_dense_replace and layer % moe_layer_freq == 0. Keys left out take the
 * defaults of transformers' config classes (DeepseekV3Config: first_k_dense_replace 3; V2: 0).
 */
function checkDeepseekSparse(read: ConfigReader, architecture: string, layer: number, v3: boolean): void {
  const firstDense = read.int('first_k_dense_replace', 0, v3 ? 3 : 0);
  const freq = read.int('moe_layer_freq', 1, 1);
  if (layer < firstDense) {
    throw denseLayerError(architecture, layer, `layers below first_k_dense_replace (${firstDense}) are dense`);
  }
  if (layer % freq !== 0) throw denseLayerError(architecture, layer, `layer % moe_layer_freq (${freq}) != 0`);
}

/**
 * Describes MoE layer `layer` of a Hugging Face model from its `config.json`. The model is recognised by
 * `architectures[0]` or `model_type`.
 * @throws ValidationError when `layer` is not an integer in [0, num_hidden_layers).
 * @throws ModelLoadError for an unsupported model (the message lists supported ones), a missing or invalid config
 *   field, or a dense (non-MoE) layer, naming the layer and the config rule that makes it dense.
 */
export function resolveMoELayer(
  outerConfig: Record<string, unknown>,
  layer: number,
  tensors?: Pick<Checkpoint, 'has'>,
): MoELayerSpec {
  const { family, architecture } = familyOf(outerConfig);
  let config: Record<string, unknown>;
  try {
    config = textConfigOf(outerConfig);
  } catch (err) {
    throw new ModelLoadError(`config (${architecture}): ${(err as Error).message}`, { cause: err });
  }
  const read = new ConfigReader(config, architecture);
  const numLayers = read.int('num_hidden_layers', 1);
  if (!Number.isSafeInteger(layer) || layer < 0 || layer >= numLayers) {
    throw new ValidationError(
      `${architecture}: layer is ${brief(layer)}, expected an integer in [0, ${numLayers - 1}] (num_hidden_layers ${numLayers})`,
    );
  }
  const hiddenSize = read.int('hidden_size', 1);
  // (a vision-language model's language layers sit under model.language_model on the Hub, under model.layers in a
  // text-only extract; the layer's router tells which, the config's class where neither is found)
  const plain = `model.layers.${layer}`;
  const language = `model.language_model.layers.${layer}`;
  const vl = family === 'qwen3_vl_moe' || family === 'qwen3_5_moe' || family === 'qwen3_5_moe_text';
  const found = (prefix: string) => tensors?.has(`${prefix}.mlp.gate.weight`) === true;
  const base = !vl
    ? plain
    : found(language) !== found(plain)
      ? found(language)
        ? language
        : plain
      : family === 'qwen3_5_moe_text'
        ? plain
        : language;
  let spec: MoELayerSpec;
  switch (family) {
    case 'mixtral': {
      const prefix = `${base}.block_sparse_moe`;
      spec = {
        architecture,
        modelType: family,
        layer,
        hiddenSize,
        intermediateSize: read.int('intermediate_size', 1),
        numExperts: read.int('num_local_experts', 1),
        topK: read.int('num_experts_per_tok', 1),
        names: {
          gate: `${prefix}.gate.weight`,
          expert: expertNames(prefix, 'mixtral'),
          fused: fusedNames(`${base}.mlp`),
        },
      };
      break;
    }
    case 'olmoe':
    case 'qwen2_moe':
    case 'qwen3_moe':
    case 'qwen3_next':
    case 'qwen3_vl_moe':
    case 'qwen3_5_moe':
    case 'qwen3_5_moe_text': {
      // (Qwen3.5-MoE: every layer is sparse, its config has no mlp_only_layers nor decoder_sparse_step)
      const everyLayer = family === 'olmoe' || family === 'qwen3_5_moe' || family === 'qwen3_5_moe_text';
      if (!everyLayer) checkQwenSparse(read, architecture, layer);
      const prefix = `${base}.mlp`;
      spec = {
        architecture,
        modelType: family,
        layer,
        hiddenSize,
        intermediateSize: read.int(family === 'olmoe' ? 'intermediate_size' : 'moe_intermediate_size', 1),
        numExperts: read.int(expertCountKey(config), 1),
        topK: read.int('num_experts_per_tok', 1),
        names: { gate: `${prefix}.gate.weight`, expert: expertNames(prefix, 'hf'), fused: fusedNames(prefix) },
      };
      // (Qwen3-Next's and Qwen3.5-MoE's sparse block is Qwen2-MoE's, sigmoid-gated shared expert included)
      const gatedShared = ['qwen2_moe', 'qwen3_next', 'qwen3_5_moe', 'qwen3_5_moe_text'].includes(family);
      if (gatedShared) {
        spec.names.shared = { ...projNames(`${prefix}.shared_expert`), gate: `${prefix}.shared_expert_gate.weight` };
        // (Qwen3NextConfig's default: 512)
        spec.sharedIntermediateSize = read.int(
          'shared_expert_intermediate_size',
          1,
          family === 'qwen2_moe' ? undefined : 512,
        );
      }
      break;
    }
    case 'ernie4_5_moe': {
      // Ernie4_5_MoeConfig: sparse iff (layer + 1) % moe_layer_interval == 0 and moe_layer_start_index <= layer <=
      // moe_layer_end_index (-1: the last layer); experts without bias terms (use_bias false, as released)
      const interval = read.int('moe_layer_interval', 1, 1);
      const start = read.int('moe_layer_start_index', 0, 1);
      const endIndex = read.int('moe_layer_end_index', -1, -1);
      const end = endIndex === -1 ? numLayers - 1 : endIndex;
      if (layer < start || layer > end) {
        throw denseLayerError(
          architecture,
          layer,
          `outside moe_layer_start_index..moe_layer_end_index (${start}..${end})`,
        );
      }
      if ((layer + 1) % interval !== 0) {
        throw denseLayerError(architecture, layer, `(layer + 1) % moe_layer_interval (${interval}) != 0`);
      }
      // (false as Python reads it: False, 0 or None)
      if (![undefined, null, false, 0].includes(config.use_bias as never)) {
        throw read.error('use_bias', config.use_bias, 'false (expert projections with bias terms are not supported)');
      }
      // weights renormalised by their sum; transformers divides by max(sum, moe_norm_min), the same unless a
      // configured minimum is large enough to matter
      const normMin = config.moe_norm_min;
      if (normMin !== undefined && !(typeof normMin === 'number' && normMin >= 0 && normMin <= 1e-6)) {
        throw read.error('moe_norm_min', normMin, 'a number in [0, 1e-6] (the weights are renormalised by their sum)');
      }
      const prefix = `${base}.mlp`;
      const intermediateSize = read.int('moe_intermediate_size', 1);
      const numExperts = read.int(config.moe_num_experts === undefined ? 'num_experts' : 'moe_num_experts', 1);
      spec = {
        architecture,
        modelType: family,
        layer,
        hiddenSize,
        intermediateSize,
        numExperts,
        topK: read.int(config.moe_k === undefined ? 'num_experts_per_tok' : 'moe_k', 1),
        names: {
          gate: `${prefix}.gate.weight`,
          bias: `${prefix}.moe_statics.e_score_correction_bias`,
          expert: expertNames(prefix, 'hf'),
          // (transformers v5 moves the statics under the router as it fuses the experts)
          fused: { ...fusedNames(prefix), bias: `${prefix}.gate.moe_statics.e_score_correction_bias` },
        },
        // (moe_use_aux_free false: trained without the bias; Baidu's code has no statics then)
        requiresBias: config.moe_use_aux_free !== false,
        biasShape: [1, numExperts],
      };
      mergedSharedExperts(read, spec, prefix, 'moe_num_shared_experts', 2);
      break;
    }
    case 'glm4_moe': {
      // (Glm4MoeConfig's defaults: first_k_dense_replace 1, one shared expert; every layer after the dense ones is
      // sparse, and the router always has its score-correction bias)
      const firstDense = read.int('first_k_dense_replace', 0, 1);
      if (layer < firstDense) {
        throw denseLayerError(architecture, layer, `layers below first_k_dense_replace (${firstDense}) are dense`);
      }
      const prefix = `${base}.mlp`;
      const intermediateSize = read.int('moe_intermediate_size', 1);
      spec = {
        architecture,
        modelType: family,
        layer,
        hiddenSize,
        intermediateSize,
        numExperts: read.int('n_routed_experts', 1),
        topK: read.int('num_experts_per_tok', 1),
        names: {
          gate: `${prefix}.gate.weight`,
          bias: `${prefix}.gate.e_score_correction_bias`,
          expert: expertNames(prefix, 'hf'),
          fused: fusedNames(prefix),
        },
        requiresBias: true,
      };
      mergedSharedExperts(read, spec, prefix, 'n_shared_experts', 1);
      break;
    }
    case 'llama4':
    case 'llama4_text': {
      // Llama4TextConfig: MoE layers are moe_layers, else every interleave_moe_layer_step-th (default 1: all; a
      // dense conversion writes moe_layers [] with a step of 0, which only matters without the list); the block under
      // feed_forward (router, experts as transposed stacks with the gate first, an ungated shared expert of the
      // experts' width), found under language_model.model (Llama4ForConditionalGeneration, as on the Hub) or model
      // (Llama4ForCausalLM); model.language_model is taken too
      const listed = config.moe_layers;
      if (listed !== undefined && listed !== null) {
        if (!read.intList('moe_layers').includes(layer))
          throw denseLayerError(architecture, layer, 'it is not listed in moe_layers');
      } else {
        const step = read.int('interleave_moe_layer_step', 1, 1);
        if ((layer + 1) % step !== 0)
          throw denseLayerError(architecture, layer, `(layer + 1) % interleave_moe_layer_step (${step}) != 0`);
      }
      const candidates = [
        `language_model.model.layers.${layer}`,
        `model.language_model.layers.${layer}`,
        `model.layers.${layer}`,
      ].map((p) => `${p}.feed_forward`);
      const prefix =
        candidates.find((p) => tensors?.has(`${p}.router.weight`)) ??
        (family === 'llama4' ? candidates[0] : candidates[2]);
      const intermediateSize = read.int('intermediate_size', 1);
      spec = {
        architecture,
        modelType: family,
        layer,
        hiddenSize,
        intermediateSize,
        numExperts: read.int('num_local_experts', 1, 16),
        topK: read.int('num_experts_per_tok', 1, 1),
        names: {
          gate: `${prefix}.router.weight`,
          expert: expertNames(prefix, 'hf'),
          fused: {
            gate: `${prefix}.router.weight`,
            gateUp: `${prefix}.experts.gate_up_proj`,
            down: `${prefix}.experts.down_proj`,
          },
          shared: projNames(`${prefix}.shared_expert`),
        },
        sharedIntermediateSize: intermediateSize,
        weightInputs: true,
      };
      break;
    }
    case 'gpt_oss': {
      // (every layer is sparse; transformers reads num_experts_per_tok, OpenAI's own config experts_per_token, the
      // same value in released checkpoints; swiglu_limit as transformers' MXFP4 experts and OpenAI's code read it,
      // where transformers' eager experts hard-code its default 7, and alpha fixed at 1.702 as in both)
      const prefix = `${base}.mlp`;
      spec = {
        architecture,
        modelType: family,
        layer,
        hiddenSize,
        intermediateSize: read.int('intermediate_size', 1),
        numExperts: read.int('num_local_experts', 1),
        topK: read.int(config.num_experts_per_tok === undefined ? 'experts_per_token' : 'num_experts_per_tok', 1),
        names: {
          gate: `${prefix}.router.weight`,
          logitBias: `${prefix}.router.bias`,
          expert: expertNames(prefix, 'hf'),
          fused: fusedNames(prefix),
          gptOss: gptOssNames(prefix),
        },
        activation: { kind: 'gptOss', alpha: GPT_OSS_ALPHA, limit: read.positive('swiglu_limit', GPT_OSS_LIMIT) },
      };
      break;
    }
    case 'deepseek_v2':
    case 'deepseek_v3': {
      checkDeepseekSparse(read, architecture, layer, family === 'deepseek_v3');
      const prefix = `${base}.mlp`;
      const intermediateSize = read.int('moe_intermediate_size', 1);
      const numExperts = read.int('n_routed_experts', 1);
      const topkMethod = read.string('topk_method', family === 'deepseek_v3' ? 'noaux_tc' : 'greedy', [
        'greedy',
        'group_limited_greedy',
        'noaux_tc',
      ]);
      spec = {
        architecture,
        modelType: family,
        layer,
        hiddenSize,
        intermediateSize,
        numExperts,
        topK: read.int('num_experts_per_tok', 1),
        names: {
          gate: `${prefix}.gate.weight`,
          bias: `${prefix}.gate.e_score_correction_bias`,
          expert: expertNames(prefix, 'hf'),
          fused: fusedNames(prefix),
        },
        requiresBias: topkMethod === 'noaux_tc',
      };
      // (left out: DeepseekV3Config's default is 1 shared expert, V2's none)
      mergedSharedExperts(read, spec, prefix, 'n_shared_experts', family === 'deepseek_v3' ? 1 : 0);
      break;
    }
  }
  if (spec.topK > spec.numExperts) {
    const key = family === 'ernie4_5_moe' && config.moe_k !== undefined ? 'moe_k' : 'num_experts_per_tok';
    throw read.error(key, spec.topK, `at most the number of experts (${spec.numExperts})`);
  }
  return spec;
}

/** Checks that a tensor exists with the given shape and a readable dtype (and scales), without reading its data. */
export function checkTensor(ckpt: Checkpoint, spec: MoELayerSpec, name: string, shape: number[]): void {
  const where = `${ckpt.dir}: ${spec.architecture} layer ${spec.layer}`;
  if (!ckpt.has(name)) throw new ModelLoadError(`${where}: tensor ${brief(name)} is missing from the checkpoint`);
  const info = ckpt.info(name);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw new ModelLoadError(
      `${where}: tensor ${brief(name)} has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}] from config`,
    );
  }
  try {
    ckpt.scalingOf(name); // (a readable dtype; an FP8 tensor's scale tensor present and of the right shape)
  } catch (err) {
    if (!(err instanceof ModelLoadError)) throw err;
    throw new ModelLoadError(`${spec.architecture} layer ${spec.layer}: ${err.message}`, { cause: err });
  }
}

/**
 * Loads the router weight, optional score-correction bias and shared expert of the layer `spec` describes, after
 * checking the shape and dtype of every tensor of the layer (routed experts included) against the config.
 * Routed experts are read later, one at a time, through `expert(e)`.
 * @throws ModelLoadError when a tensor is missing, has the wrong shape or an unsupported dtype, or is unreadable.
 */
export function loadMoELayerWeights(ckpt: Checkpoint, spec: MoELayerSpec): LoadedMoELayer {
  const { hiddenSize: d, intermediateSize: f, numExperts } = spec;
  if (spec.names.gptOss) return loadGptOssLayer(ckpt, spec, spec.names.gptOss);
  const gateShape = [numExperts, d];
  // (fused only where expert 0's own tensor is absent: a checkpoint with both is read as per-expert, as before)
  const fused = !ckpt.has(spec.names.expert(0).w1) && ckpt.has(spec.names.fused.gateUp) ? spec.names.fused : null;
  // Stacks come in two orientations: transformers v5's [E, 2f, d] and [E, d, f] (weights as nn.Linear keeps them),
  // and the transposed [E, d, 2f] and [E, f, d] (Qwen3-VL-MoE's, multiplied from the right), gate before up in
  // both. The down stack tells them apart (d != f), or, where d == f, the gate/up one (2f != d).
  const shapeOf = (name: string) => (ckpt.has(name) ? ckpt.info(name).shape : []);
  const same = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
  const transposed =
    fused !== null &&
    (d !== f ? same(shapeOf(fused.down), [numExperts, f, d]) : same(shapeOf(fused.gateUp), [numExperts, d, 2 * f]));
  const gateUpShape = transposed ? [numExperts, d, 2 * f] : [numExperts, 2 * f, d];
  const downShape = transposed ? [numExperts, f, d] : [numExperts, d, f];
  const gate = fused ? fused.gate : spec.names.gate;
  checkTensor(ckpt, spec, gate, gateShape);
  if (fused) {
    checkTensor(ckpt, spec, fused.gateUp, gateUpShape);
    checkTensor(ckpt, spec, fused.down, downShape);
    // (per-row scales of a transposed stack would scale its input rows, which no checkpoint means)
    for (const name of [fused.gateUp, fused.down]) {
      if (transposed && ckpt.scalingOf(name)?.kind === 'row') {
        throw new ModelLoadError(
          `${ckpt.dir}: ${spec.architecture} layer ${spec.layer}: ${brief(name)} is stored transposed with per-row ` +
            `scales; expected per-tensor or block scales for a transposed stack`,
        );
      }
    }
    // Block scales over the stacked gate and up put the gate's last and the up's first rows (columns, transposed)
    // in one block unless f is a multiple of the block's side there; scales made per projection and joined would
    // then be as many and be read askew.
    const scaling = ckpt.scalingOf(fused.gateUp);
    const side = scaling?.block[transposed ? 1 : 0] ?? 1;
    if (scaling?.kind === 'block' && f % side !== 0) {
      throw new ModelLoadError(
        `${ckpt.dir}: ${spec.architecture} layer ${spec.layer}: block-scaled ${brief(fused.gateUp)} with f = ${f}, ` +
          `not a multiple of the block's ${side} ${transposed ? 'columns' : 'rows'}: whether a block spans the gate ` +
          `and up ${transposed ? 'columns' : 'rows'} is ambiguous; expected f a multiple of it`,
      );
    }
  }
  for (let e = 0; e < (fused ? 0 : numExperts); e++) {
    const names = spec.names.expert(e);
    checkTensor(ckpt, spec, names.w1, [f, d]);
    checkTensor(ckpt, spec, names.w3, [f, d]);
    checkTensor(ckpt, spec, names.w2, [d, f]);
  }
  const checkIndex = (e: number) => checkExpertIndex(e, numExperts);
  const layer: LoadedMoELayer = {
    spec,
    gateWeight: ckpt.readFloat32(gate, gateShape),
    expert(e: number): ExpertWeights {
      checkIndex(e);
      if (fused && !transposed) {
        // expert e's [2f, d] slice: gate rows, then up rows (transformers chunks the product in two the same way)
        const gateUp = ckpt.readSlice(fused.gateUp, e, gateUpShape);
        return {
          w1: gateUp.subarray(0, f * d),
          w3: gateUp.subarray(f * d),
          w2: ckpt.readSlice(fused.down, e, downShape),
        };
      }
      if (fused) {
        // expert e's [d, 2f] slice: gate columns, then up columns; [f, d] for down: each transposed to [out, in]
        const gateUp = ckpt.readSlice(fused.gateUp, e, gateUpShape);
        const down = ckpt.readSlice(fused.down, e, downShape);
        const w1 = new Float32Array(f * d);
        const w3 = new Float32Array(f * d);
        const w2 = new Float32Array(d * f);
        for (let k = 0; k < d; k++) {
          for (let j = 0; j < f; j++) {
            w1[j * d + k] = gateUp[k * 2 * f + j];
            w3[j * d + k] = gateUp[k * 2 * f + f + j];
            w2[k * f + j] = down[j * d + k];
          }
        }
        return { w1, w3, w2 };
      }
      const names = spec.names.expert(e);
      return {
        w1: ckpt.readFloat32(names.w1, [f, d]),
        w3: ckpt.readFloat32(names.w3, [f, d]),
        w2: ckpt.readFloat32(names.w2, [d, f]),
      };
    },
    expertE4m3(e: number): E4m3ExpertWeights | null {
      checkIndex(e);
      if (fused) return null;
      const names = spec.names.expert(e);
      return e4m3Of(ckpt, names, f, d);
    },
    sharedE4m3: () =>
      spec.names.shared === undefined || spec.sharedIntermediateSize === undefined
        ? null
        : e4m3Of(ckpt, spec.names.shared, spec.sharedIntermediateSize, d),
    expertLayout: transposed ? 'fused, transposed' : fused ? 'fused' : 'per-expert',
  };
  const movedBias = fused?.bias !== undefined && !ckpt.has(spec.names.bias ?? '') && ckpt.has(fused.bias);
  const biasName = movedBias ? fused!.bias : spec.names.bias;
  if (biasName !== undefined && (spec.requiresBias === true || ckpt.has(biasName))) {
    // ([1, E] read as [E]; a squeezed [E] is taken too)
    const flat = [numExperts];
    const stored = ckpt.has(biasName) ? ckpt.info(biasName).shape : null;
    const biasShape = stored?.length === 1 ? flat : (spec.biasShape ?? flat);
    checkTensor(ckpt, spec, biasName, biasShape);
    layer.bias = ckpt.readFloat32(biasName, biasShape);
  }
  const shared = spec.names.shared;
  if (shared !== undefined) {
    const width = spec.sharedIntermediateSize;
    if (width === undefined) {
      throw new ModelLoadError(`${spec.architecture} layer ${spec.layer}: spec has shared expert names but no width`);
    }
    checkTensor(ckpt, spec, shared.w1, [width, d]);
    checkTensor(ckpt, spec, shared.w3, [width, d]);
    checkTensor(ckpt, spec, shared.w2, [d, width]);
    if (shared.gate !== undefined) checkTensor(ckpt, spec, shared.gate, [1, d]);
    layer.shared = {
      w1: ckpt.readFloat32(shared.w1, [width, d]),
      w3: ckpt.readFloat32(shared.w3, [width, d]),
      w2: ckpt.readFloat32(shared.w2, [d, width]),
      intermediateSize: width,
    };
    if (shared.gate !== undefined) layer.shared.gate = ckpt.readFloat32(shared.gate, [1, d]);
  }
  return layer;
}

/** @throws ValidationError when `e` is not an integer in [0, numExperts). */
function checkExpertIndex(e: number, numExperts: number): void {
  if (!Number.isSafeInteger(e) || e < 0 || e >= numExperts) {
    throw new ValidationError(`expert: index is ${brief(e)}, expected an integer in [0, ${numExperts - 1}]`);
  }
}

/** A gpt-oss layer: router weight and bias term, and its experts (lib/models/gpt-oss.ts). */
function loadGptOssLayer(ckpt: Checkpoint, spec: MoELayerSpec, names: GptOssNames): LoadedMoELayer {
  const { hiddenSize: d, numExperts } = spec;
  checkTensor(ckpt, spec, spec.names.gate, [numExperts, d]);
  const experts = gptOssExperts(ckpt, spec, names, checkTensor);
  const layer: LoadedMoELayer = {
    spec,
    gateWeight: ckpt.readFloat32(spec.names.gate, [numExperts, d]),
    expert(e: number): ExpertWeights {
      checkExpertIndex(e, numExperts);
      return experts.expert(e);
    },
    expertE4m3(e: number): E4m3ExpertWeights | null {
      checkExpertIndex(e, numExperts);
      return experts.expertE4m3(e);
    },
    sharedE4m3: () => null,
    expertLayout: experts.layout,
  };
  const logitBias = spec.names.logitBias!;
  checkTensor(ckpt, spec, logitBias, [numExperts]);
  layer.logitBias = ckpt.readFloat32(logitBias, [numExperts]);
  return layer;
}
