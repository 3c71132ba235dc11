/**
 * Maps a Hugging Face `config.json` to the router rule that model was trained with. This is the single place
 * that knows each `model_type`'s routing; `Router.fromConfig` and `MoELayer.fromPretrained` both use it.
 */
import { describe, RouterConfigurationError } from '../errors';
import type { RouterOptions } from '../router-options';
import type { GroupLimit, Scoring, Selection } from '../types';

/**
 * What `Router.fromConfig` accepts to override the model's own rule. Each override replaces that one option and
 * nothing else: the others keep the values the model's rule gave them (e.g. `normalize: true` on DeepSeek-V2,
 * whose rule scales by `routed_scaling_factor` only when it does not renormalise, keeps that scale; pass `scale`
 * too).
 */
export interface FromConfigOverrides {
  /**
   * DeepSeek's `e_score_correction_bias` [E] (choosing only). Required when the model routes with it
   * (`topk_method: 'noaux_tc'`, DeepSeek-V3's default); `null` routes without it, knowingly.
   */
  bias?: Float32Array | null;
  /** The gate's bias term [E] (gpt-oss `router.bias`). Required for gpt_oss; `null` routes without it. */
  logitBias?: Float32Array | null;
  selection?: Selection;
  normalize?: boolean;
  scale?: number;
  scoring?: Scoring;
  groups?: GroupLimit | null;
  threads?: number;
  /** 'cpu' (default), 'cuda' or 'auto': see RouterOptions.backend. */
  backend?: import('../cuda').BackendName;
}

/** The class `architectures[0]` names for each supported `model_type`. */
export const ARCHITECTURE_OF_MODEL_TYPE = {
  mixtral: 'MixtralForCausalLM',
  olmoe: 'OlmoeForCausalLM',
  qwen2_moe: 'Qwen2MoeForCausalLM',
  qwen3_moe: 'Qwen3MoeForCausalLM',
  qwen3_next: 'Qwen3NextForCausalLM',
  qwen3_vl_moe: 'Qwen3VLMoeForConditionalGeneration',
  qwen3_5_moe: 'Qwen3_5MoeForConditionalGeneration',
  qwen3_5_moe_text: 'Qwen3_5MoeForCausalLM',
  deepseek_v2: 'DeepseekV2ForCausalLM',
  deepseek_v3: 'DeepseekV3ForCausalLM',
  glm4_moe: 'Glm4MoeForCausalLM',
  ernie4_5_moe: 'Ernie4_5_MoeForCausalLM',
  gpt_oss: 'GptOssForCausalLM',
  llama4: 'Llama4ForConditionalGeneration',
  llama4_text: 'Llama4ForCausalLM',
} as const;

export const SUPPORTED_MODEL_TYPES = Object.keys(
  ARCHITECTURE_OF_MODEL_TYPE,
) as (keyof typeof ARCHITECTURE_OF_MODEL_TYPE)[];

/**
 * `model_type` when it is a supported one, else the model type of the class in `architectures[0]` (a config may
 * name its model only there, or under a model_type of its own, e.g. a fine-tune keeping the DeepSeek-V3 class),
 * else `model_type` as it is (an error names it).
 */
function modelTypeOf(cfg: Record<string, unknown>): unknown {
  const type = cfg.model_type;
  if (typeof type === 'string' && Object.hasOwn(ARCHITECTURE_OF_MODEL_TYPE, type)) return type;
  const named = Array.isArray(cfg.architectures) ? cfg.architectures[0] : undefined;
  const byName = SUPPORTED_MODEL_TYPES.find((t) => ARCHITECTURE_OF_MODEL_TYPE[t] === named);
  return byName ?? type;
}

/** Model types whose config.json nests the language model's fields under `text_config` (vision-language models). */
const NESTED_TEXT_CONFIG = new Set(['qwen3_vl_moe', 'qwen3_5_moe', 'llama4']);

/**
 * The config a vision-language model's language layers are described by: its `text_config`, under the outer
 * model_type, architectures and quantization_config. Other configs as they are.
 */
export function textConfigOf(cfg: Record<string, unknown>): Record<string, unknown> {
  const type = modelTypeOf(cfg);
  const text = cfg.text_config;
  if (typeof type !== 'string' || !NESTED_TEXT_CONFIG.has(type)) return cfg;
  if (typeof text !== 'object' || text === null || Array.isArray(text)) {
    throw new RouterConfigurationError(
      `config.text_config: expected the language model's fields, got ${describe(text)}`,
    );
  }
  const quantization = cfg.quantization_config ?? (text as Record<string, unknown>).quantization_config;
  return { ...text, model_type: type, architectures: cfg.architectures, quantization_config: quantization };
}

function num(cfg: Record<string, unknown>, key: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new RouterConfigurationError(`config.${key}: expected a number, got ${describe(cfg[key])}`);
  }
  return v;
}

/** A flag: absent means the model's default; null means false, as transformers reads it (None, tested by truth). */
function bool(cfg: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const v = cfg[key];
  if (v === undefined) return fallback;
  if (v === null) return false;
  if (typeof v !== 'boolean')
    throw new RouterConfigurationError(`config.${key}: expected a boolean, got ${describe(v)}`);
  return v;
}

/**
 * Where a Qwen-style or OLMoE config keeps its expert count: `num_experts`, or `num_local_experts` where only that
 * is present (transformers v5 maps Qwen3MoeConfig's num_experts to that attribute, so configs it saves name it so).
 */
export function expertCountKey(cfg: Record<string, unknown>): 'num_experts' | 'num_local_experts' {
  return cfg.num_experts === undefined && cfg.num_local_experts !== undefined ? 'num_local_experts' : 'num_experts';
}

/** The model's expert count and static top-k, as its config names them. */
export function expertShape(cfg: Record<string, unknown>): { numExperts: number; topK: number; hiddenSize: number } {
  const type = cfg.model_type;
  const hiddenSize = num(cfg, 'hidden_size');
  switch (type) {
    case 'mixtral':
      return { numExperts: num(cfg, 'num_local_experts'), topK: num(cfg, 'num_experts_per_tok'), hiddenSize };
    case 'llama4':
    case 'llama4_text':
      // (Llama4TextConfig's defaults: 16 experts, top-1)
      return { numExperts: num(cfg, 'num_local_experts', 16), topK: num(cfg, 'num_experts_per_tok', 1), hiddenSize };
    case 'olmoe':
    case 'qwen2_moe':
    case 'qwen3_moe':
    case 'qwen3_next':
    case 'qwen3_vl_moe':
    case 'qwen3_5_moe':
    case 'qwen3_5_moe_text':
      return { numExperts: num(cfg, expertCountKey(cfg)), topK: num(cfg, 'num_experts_per_tok'), hiddenSize };
    case 'deepseek_v2':
    case 'deepseek_v3':
    case 'glm4_moe':
      return { numExperts: num(cfg, 'n_routed_experts'), topK: num(cfg, 'num_experts_per_tok'), hiddenSize };
    case 'ernie4_5_moe':
      // (Ernie4_5_MoeConfig maps num_experts and num_experts_per_tok to these)
      return {
        numExperts: num(cfg, cfg.moe_num_experts === undefined ? 'num_experts' : 'moe_num_experts'),
        topK: num(cfg, cfg.moe_k === undefined ? 'num_experts_per_tok' : 'moe_k'),
        hiddenSize,
      };
    case 'gpt_oss':
      return {
        numExperts: num(cfg, 'num_local_experts'),
        // (transformers reads num_experts_per_tok; OpenAI's config names it experts_per_token)
        topK: num(cfg, 'num_experts_per_tok', cfg.experts_per_token as number | undefined),
        hiddenSize,
      };
    default:
      throw new RouterConfigurationError(
        `config.model_type: unknown ${describe(type)}; supported: ${SUPPORTED_MODEL_TYPES.join(', ')}`,
      );
  }
}

/** Router options reproducing the model's own routing, with `overrides` applied on top. */
export function routerOptionsFromConfig(
  hfConfig: unknown,
  gateWeight: Float32Array,
  overrides: FromConfigOverrides = {},
): RouterOptions {
  if (typeof hfConfig !== 'object' || hfConfig === null || Array.isArray(hfConfig)) {
    throw new RouterConfigurationError(`hfConfig: expected the parsed config.json object, got ${describe(hfConfig)}`);
  }
  const cfg = { ...textConfigOf(hfConfig as Record<string, unknown>) };
  cfg.model_type = modelTypeOf(cfg);
  const { numExperts, topK, hiddenSize } = expertShape(cfg);
  const base: RouterOptions = {
    numExperts,
    hiddenSize,
    gateWeight,
    scoring: 'softmax',
    selection: { kind: 'topk', k: topK },
    normalize: false,
    scale: 1,
  };
  // the bias the model's rule cannot do without, if any
  let required: 'bias' | 'logitBias' | undefined;
  switch (cfg.model_type) {
    case 'mixtral':
      base.normalize = true;
      break;
    case 'olmoe':
    case 'qwen2_moe':
    case 'qwen3_moe':
      base.normalize = bool(cfg, 'norm_topk_prob', false);
      break;
    case 'qwen3_next':
    case 'qwen3_vl_moe':
    case 'qwen3_5_moe':
    case 'qwen3_5_moe_text':
      // (Qwen3-Next: Qwen2-MoE's block, renormalised by default; Qwen3-VL-MoE and Qwen3.5-MoE route with
      // Qwen3VLMoeTextTopKRouter, which renormalises always, whatever a config says)
      base.normalize = cfg.model_type === 'qwen3_next' ? bool(cfg, 'norm_topk_prob', true) : true;
      break;
    case 'deepseek_v2':
    case 'deepseek_v3': {
      const v3 = cfg.model_type === 'deepseek_v3';
      const scoring = (cfg.scoring_func ?? (v3 ? 'sigmoid' : 'softmax')) as string;
      if (scoring !== 'softmax' && scoring !== 'sigmoid') {
        throw new RouterConfigurationError(
          `config.scoring_func: expected 'softmax' or 'sigmoid', got ${describe(scoring)}`,
        );
      }
      base.scoring = scoring;
      const method = (cfg.topk_method ?? (v3 ? 'noaux_tc' : 'greedy')) as string;
      if (method === 'group_limited_greedy' || method === 'noaux_tc') {
        // (a key left out takes transformers' config-class default: DeepseekV3Config has 8 groups, 4 kept)
        base.groups = {
          nGroup: num(cfg, 'n_group', v3 ? 8 : undefined),
          topkGroup: num(cfg, 'topk_group', v3 ? 4 : undefined),
          score: method === 'noaux_tc' ? 'top2sum' : 'max',
        };
      } else if (method !== 'greedy') {
        throw new RouterConfigurationError(
          `config.topk_method: unsupported ${describe(method)}; supported: greedy, group_limited_greedy, noaux_tc`,
        );
      }
      const normalize = bool(cfg, 'norm_topk_prob', v3);
      const factor = num(cfg, 'routed_scaling_factor', v3 ? 2.5 : 1);
      if (method === 'noaux_tc') required = 'bias';
      base.normalize = normalize && topK > 1;
      // DeepSeek-V2 scales only when it does not renormalise; V3 always scales.
      base.scale = v3 || !base.normalize ? factor : 1;
      break;
    }
    case 'glm4_moe': {
      // GLM-4.5/4.6 (transformers' Glm4MoeTopkRouter): DeepSeek-V3's noaux_tc rule with GLM's config defaults (one
      // group, scale 1), and the kept weights renormalised whenever norm_topk_prob says so, k = 1 included
      base.scoring = 'sigmoid';
      const nGroup = num(cfg, 'n_group', 1);
      const topkGroup = num(cfg, 'topk_group', 1);
      // (one group restricts nothing; the router checks the rest, topk_group > n_group included)
      if (nGroup > 1) base.groups = { nGroup, topkGroup, score: 'top2sum' };
      base.normalize = bool(cfg, 'norm_topk_prob', true);
      base.scale = num(cfg, 'routed_scaling_factor', 1);
      required = 'bias';
      break;
    }
    case 'ernie4_5_moe':
      // transformers' Ernie4_5_MoeSparseMoeBlock: softmax, the top-k of the scores plus moe_statics'
      // e_score_correction_bias, the unbiased scores of those renormalised (by a sum clamped at moe_norm_min)
      base.normalize = true;
      if (cfg.moe_use_aux_free !== false) required = 'bias';
      break;
    case 'gpt_oss':
      base.selection = { kind: 'gptOss', k: topK };
      required = 'logitBias';
      break;
    case 'llama4':
    case 'llama4_text':
      // transformers' Llama4Router: the top-k of the logits, each weighted by its sigmoid, not renormalised (the
      // weight then scales the expert's input: MoELayer weightInputs). The top-k of the sigmoids is the same set,
      // except where float32 sigmoids of distinct logits round to the same value (logits a few float32 steps apart,
      // above ~17 or below ~-103), where the lower index wins here
      base.scoring = 'sigmoid';
      break;
  }
  if (required && overrides[required] === undefined) {
    const why =
      cfg.model_type === 'glm4_moe'
        ? 'as every GLM-4.5 router'
        : cfg.model_type === 'ernie4_5_moe'
          ? "ERNIE 4.5's moe_statics"
          : "topk_method 'noaux_tc'";
    const biasTensor =
      cfg.model_type === 'ernie4_5_moe'
        ? 'mlp.moe_statics.e_score_correction_bias'
        : 'mlp.gate.e_score_correction_bias';
    throw new RouterConfigurationError(
      required === 'bias'
        ? `bias: this ${String(cfg.model_type)} config routes with e_score_correction_bias (${why}): ` +
            `pass the layer's ${biasTensor} as bias, or bias: null to route without it`
        : `logitBias: gpt_oss routers have a bias term: pass the layer's mlp.router.bias as logitBias, or ` +
            `logitBias: null to route without it`,
    );
  }
  const out: RouterOptions = { ...base };
  if (overrides.bias) out.bias = overrides.bias;
  if (overrides.logitBias) out.logitBias = overrides.logitBias;
  if (overrides.selection !== undefined) out.selection = overrides.selection;
  if (overrides.normalize !== undefined) out.normalize = overrides.normalize;
  if (overrides.scale !== undefined) out.scale = overrides.scale;
  if (overrides.scoring !== undefined) out.scoring = overrides.scoring;
  if (overrides.groups !== undefined) out.groups = overrides.groups ?? undefined;
  if (overrides.threads !== undefined) out.threads = overrides.threads;
  if (overrides.backend !== undefined) out.backend = overrides.backend;
  return out;
}
