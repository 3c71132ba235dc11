/**
 * MoELayer.fromPretrained on tiny checkpoints the test writes itself in each family's HF layout and naming:
 * the layer's output must match the float64 reference built from the stored tensors and the family's own
 * routing rule (written out here independently of lib/models/router-config.ts).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ModelLoadError, MoELayer, Router, RouterConfigurationError, ValidationError } from '../lib';
import { resolveMoELayer } from '../lib/models/architectures';
import { openSafetensors, writeSafetensors } from '../lib/models/safetensors';
import { referenceLayer } from '../lib/reference/layer';
import { referenceRoute, type ReferenceRouterConfig } from '../lib/reference/routing';
import {
  layerPrefix,
  writeTinyCheckpoint,
  type TinyArch,
  type TinyCheckpoint,
  type TinyCheckpointOptions,
} from './helpers/checkpoint';
import { compareRouting, relativeError } from './helpers/compare';
import { freshSeed, randn } from './helpers/random';

const SEED = freshSeed();
console.log(`pretrained.test seed ${SEED}`);
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-pretrained-'));
test.after(() => fs.rmSync(root, { recursive: true, force: true }));
const dirFor = (name: string) => fs.mkdtempSync(path.join(root, `${name}-`));

/** Each family's HF routing, from its config fields. */
function expectedRule(
  arch: TinyArch,
  cfg: Record<string, unknown>,
  E: number,
  k: number,
  d: number,
): ReferenceRouterConfig {
  const base: ReferenceRouterConfig = {
    numExperts: E,
    hiddenSize: d,
    scoring: 'softmax',
    selection: 'topk',
    k,
    p: 1,
    tau: 0,
    minK: k,
    maxK: k,
    nGroup: 0,
    topkGroup: 0,
    groupScore: 'top2sum',
    normalize: false,
    scale: 1,
  };
  if (arch === 'mixtral') return { ...base, normalize: true };
  if (arch === 'ernie4_5_moe') return { ...base, normalize: true }; // (softmax; its bias chooses; renormalised)
  // (Qwen3VLMoeTextTopKRouter renormalises always)
  if (arch === 'qwen3_vl_moe' || arch === 'qwen3_5_moe') return { ...base, normalize: true };
  if (arch === 'qwen3_next') return { ...base, normalize: cfg.norm_topk_prob !== false && cfg.norm_topk_prob !== null };
  if (arch === 'glm4_moe') {
    // transformers' Glm4MoeTopkRouter: sigmoid, bias for choosing, groups by the sum of their top-2, renormalised
    // (k = 1 too), times routed_scaling_factor
    const nGroup = (cfg.n_group as number | undefined) ?? 1;
    const topkGroup = (cfg.topk_group as number | undefined) ?? 1;
    return {
      ...base,
      scoring: 'sigmoid',
      nGroup: nGroup > 1 ? nGroup : 0,
      topkGroup: nGroup > 1 ? topkGroup : 0,
      normalize: cfg.norm_topk_prob !== false,
      scale: (cfg.routed_scaling_factor as number | undefined) ?? 1,
    };
  }
  if (arch === 'deepseek_v3') {
    return {
      ...base,
      scoring: 'sigmoid',
      nGroup: cfg.n_group as number,
      topkGroup: cfg.topk_group as number,
      normalize: true,
      scale: cfg.routed_scaling_factor as number,
    };
  }
  if (arch === 'deepseek_v2') {
    const normalize = cfg.norm_topk_prob === true && k > 1;
    return { ...base, normalize, scale: normalize ? 1 : (cfg.routed_scaling_factor as number) };
  }
  return { ...base, normalize: cfg.norm_topk_prob === true };
}

function stored(ck: TinyCheckpoint, name: string): Float32Array {
  const t = ck.tensors[name];
  assert.ok(t, `fixture lacks ${name}`);
  return t.data;
}

const CASES: {
  arch: TinyArch;
  dtype: 'F32' | 'BF16' | 'F16';
  sharded: boolean;
  layerDtype: 'fp32' | 'bf16';
  fp8?: TinyCheckpointOptions['fp8'];
  fused?: boolean | 'transposed';
}[] = [
  { arch: 'mixtral', dtype: 'F32', sharded: false, layerDtype: 'fp32' },
  { arch: 'olmoe', dtype: 'BF16', sharded: true, layerDtype: 'fp32' },
  { arch: 'qwen2_moe', dtype: 'F16', sharded: false, layerDtype: 'fp32' },
  { arch: 'qwen3_next', dtype: 'BF16', sharded: true, layerDtype: 'fp32' },
  { arch: 'qwen3_moe', dtype: 'F32', sharded: true, layerDtype: 'bf16' },
  { arch: 'deepseek_v2', dtype: 'BF16', sharded: false, layerDtype: 'fp32' },
  { arch: 'deepseek_v3', dtype: 'F32', sharded: true, layerDtype: 'fp32' },
  { arch: 'glm4_moe', dtype: 'BF16', sharded: true, layerDtype: 'bf16' },
  { arch: 'ernie4_5_moe', dtype: 'BF16', sharded: false, layerDtype: 'fp32' },
  // vision-language models' language layers: Qwen3-VL-MoE's stacks transposed, Qwen3.5-MoE's as transformers v5's
  { arch: 'qwen3_vl_moe', dtype: 'BF16', sharded: true, layerDtype: 'fp32', fused: 'transposed' },
  {
    arch: 'qwen3_5_moe',
    dtype: 'BF16',
    sharded: false,
    layerDtype: 'bf16',
    fp8: { dtype: 'F8_E4M3', scales: 'block', block: [8, 16] },
    fused: true,
  },
  // FP8 checkpoints as published (the router in `dtype`, the expert projections FP8 with scale tensors)
  {
    arch: 'deepseek_v3',
    dtype: 'BF16',
    sharded: true,
    layerDtype: 'fp32',
    fp8: { dtype: 'F8_E4M3', scales: 'block', block: [5, 12], scaleDtype: 'BF16' },
  },
  { arch: 'qwen3_moe', dtype: 'BF16', sharded: false, layerDtype: 'bf16', fp8: { dtype: 'F8_E4M3', scales: 'block' } },
  { arch: 'mixtral', dtype: 'F32', sharded: false, layerDtype: 'fp32', fp8: { dtype: 'F8_E5M2', scales: 'row' } },
  // fused experts, as transformers v5 saves them
  { arch: 'mixtral', dtype: 'BF16', sharded: true, layerDtype: 'bf16', fused: true },
  {
    arch: 'deepseek_v3',
    dtype: 'BF16',
    sharded: false,
    layerDtype: 'fp32',
    fp8: { dtype: 'F8_E4M3', scales: 'block', block: [8, 16] },
    fused: true,
  },
];

for (const c of CASES) {
  const stores =
    `${c.dtype}${c.fp8 ? ` + ${c.fp8.dtype} ${c.fp8.scales}-scaled experts` : ''}` +
    `${c.fused ? `, ${c.fused === true ? 'fused' : 'fused transposed'} experts` : ''}${c.sharded ? ', sharded' : ''}`;
  test(`${c.arch} (${stores}) loads as ${c.layerDtype} and matches the reference`, () => {
    const d = 32;
    const f = 16;
    const E = 8;
    const k = 2;
    const ck = writeTinyCheckpoint(dirFor(`${c.arch}-${c.dtype}`), c.arch, {
      hiddenSize: d,
      intermediateSize: f,
      numExperts: E,
      topK: k,
      dtype: c.dtype,
      sharded: c.sharded,
      seed: SEED % 100000,
      fp8: c.fp8,
      fusedExperts: c.fused,
    });
    const layerIndex = ck.moeLayers[ck.moeLayers.length - 1];
    const layer = MoELayer.fromPretrained(ck.dir, { layer: layerIndex, dtype: c.layerDtype, threads: 2 });
    const T = 9;
    const x = randn(T * d, SEED + 1);
    const got = layer.forward(x);

    const prefix = `${layerPrefix(c.arch, layerIndex)}.${c.arch === 'mixtral' ? 'block_sparse_moe' : 'mlp'}`;
    const gate = stored(ck, `${prefix}.gate.weight`);
    const biasName =
      c.arch === 'ernie4_5_moe'
        ? `${prefix}.moe_statics.e_score_correction_bias`
        : c.arch === 'deepseek_v3' || c.arch === 'glm4_moe'
          ? `${prefix}.gate.e_score_correction_bias`
          : undefined;
    const bias = biasName ? stored(ck, biasName) : undefined;
    const rule = expectedRule(c.arch, ck.config, E, k, d);
    const refRouting = referenceRoute(rule, x, gate, { bias });
    compareRouting(got.routing, refRouting, `${c.arch} routing`);
    const names = c.arch === 'mixtral' ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
    const expert = (e: number) => ({
      w1: stored(ck, `${prefix}.experts.${e}.${names[0]}.weight`),
      w3: stored(ck, `${prefix}.experts.${e}.${names[1]}.weight`),
      w2: stored(ck, `${prefix}.experts.${e}.${names[2]}.weight`),
      f,
    });
    let shared: Parameters<typeof referenceLayer>[5];
    const sharedPrefix =
      c.arch === 'qwen2_moe' || c.arch === 'qwen3_next' || c.arch === 'qwen3_5_moe'
        ? `${prefix}.shared_expert`
        : c.arch.startsWith('deepseek') || c.arch === 'glm4_moe' || c.arch === 'ernie4_5_moe'
          ? `${prefix}.shared_experts`
          : '';
    if (sharedPrefix) {
      const w1 = stored(ck, `${sharedPrefix}.gate_proj.weight`);
      shared = {
        w1,
        w3: stored(ck, `${sharedPrefix}.up_proj.weight`),
        w2: stored(ck, `${sharedPrefix}.down_proj.weight`),
        f: w1.length / d,
        gate: ['qwen2_moe', 'qwen3_next', 'qwen3_5_moe'].includes(c.arch)
          ? stored(ck, `${prefix}.shared_expert_gate.weight`)
          : undefined,
      };
    }
    const ref = referenceLayer(x, T, d, expert, { ...refRouting, maxK: rule.maxK }, shared);
    const err = relativeError(got.output, ref);
    assert.ok(err < (c.layerDtype === 'fp32' ? 1e-5 : 1e-2), `${c.arch}: relative error ${err}`);
    layer.dispose();
  });
}

test('selection overrides the model rule (top-p on a top-2 model)', () => {
  const ck = writeTinyCheckpoint(dirFor('override'), 'mixtral', {
    hiddenSize: 16,
    intermediateSize: 8,
    numExperts: 8,
    topK: 2,
    seed: 3,
  });
  const layer = MoELayer.fromPretrained(ck.dir, { layer: 0, selection: { kind: 'topp', p: 0.9, maxK: 8 } });
  const { routing, stats } = layer.forward(randn(40 * 16, SEED + 2));
  assert.is(layer.router.selection, 'topp');
  assert.ok(routing.stats.meanK > 2, `top-p 0.9 over 8 experts should use more than 2, got ${routing.stats.meanK}`);
  assert.ok(stats.flopsSaved < 0);
});

test('a config that names its model by architectures[0] alone loads with that model rule', () => {
  const ck = writeTinyCheckpoint(dirFor('no-model-type'), 'deepseek_v3', {
    hiddenSize: 16,
    intermediateSize: 8,
    numExperts: 8,
    topK: 2,
    seed: 5,
  });
  const { model_type: modelType, ...config } = ck.config;
  assert.is(modelType, 'deepseek_v3');
  fs.writeFileSync(path.join(ck.dir, 'config.json'), JSON.stringify(config));
  const layer = MoELayer.fromPretrained(ck.dir, { layer: ck.moeLayers[0] });
  // DeepSeek-V3's rule (sigmoid scores, groups), not a default one
  assert.is(layer.router.config.scoring, 'sigmoid');
  assert.is(layer.router.config.nGroup, 4, 'the group limit of DeepSeek-V3');
  assert.ok(layer.forward(randn(4 * 16, SEED + 3)).output.every(Number.isFinite));
  layer.dispose();
});

test('Router.fromConfig recognises the model by architectures[0] when model_type is missing or not its own', () => {
  const base = {
    hidden_size: 8,
    n_routed_experts: 8,
    num_experts_per_tok: 2,
    n_group: 4,
    topk_group: 2,
    routed_scaling_factor: 2.5,
  };
  const gate = randn(8 * 8, SEED + 6);
  const byType = Router.fromConfig({ ...base, model_type: 'deepseek_v3' }, gate, { bias: null }).config;
  for (const config of [
    { ...base, architectures: ['DeepseekV3ForCausalLM'] },
    { ...base, architectures: ['DeepseekV3ForCausalLM'], model_type: 'kimi_k2' },
  ]) {
    const got = Router.fromConfig(config, gate, { bias: null }).config;
    assert.equal([got.scoring, got.nGroup, got.scale, got.normalize], [byType.scoring, byType.nGroup, 2.5, true]);
  }
});

test('norm_topk_prob: absent is the model default, null is false (as transformers reads None), a string is refused', () => {
  const v3 = {
    model_type: 'deepseek_v3',
    hidden_size: 8,
    n_routed_experts: 8,
    num_experts_per_tok: 2,
    n_group: 4,
    topk_group: 2,
  };
  const qwen = { model_type: 'qwen3_moe', hidden_size: 8, num_experts: 8, num_experts_per_tok: 2 };
  const gate = randn(8 * 8, SEED + 7);
  const normalize = (config: object) => Router.fromConfig(config, gate, { bias: null }).config.normalize;
  assert.is(normalize(v3), true);
  assert.is(normalize({ ...v3, norm_topk_prob: null }), false);
  assert.is(normalize({ ...v3, norm_topk_prob: false }), false);
  assert.is(normalize(qwen), false);
  assert.is(normalize({ ...qwen, norm_topk_prob: null }), false);
  assert.is(normalize({ ...qwen, norm_topk_prob: true }), true);
  assert.throws(() => normalize({ ...qwen, norm_topk_prob: 'true' }), /config\.norm_topk_prob: expected a boolean/);
  const next = { ...qwen, model_type: 'qwen3_next' }; // (Qwen3NextConfig's default is true)
  assert.is(normalize(next), true);
  assert.is(normalize({ ...next, norm_topk_prob: false }), false);
});

test('Router.fromConfig: a rule that routes with a bias needs it (or null); DeepSeek-V3 keys left out take DeepseekV3Config defaults', () => {
  const E = 16;
  const d = 8;
  const gate = randn(E * d, SEED + 8);
  const bias = randn(E, SEED + 9, 0.5);
  const v3 = { model_type: 'deepseek_v3', hidden_size: d, n_routed_experts: E, num_experts_per_tok: 4 };
  assert.throws(
    () => Router.fromConfig(v3, gate),
    (e: Error) => e instanceof RouterConfigurationError && /e_score_correction_bias.*bias: null/.test(e.message),
  );
  assert.throws(
    () =>
      Router.fromConfig({ ...v3, model_type: 'deepseek_v2', topk_method: 'noaux_tc', n_group: 4, topk_group: 2 }, gate),
    (e: Error) => e instanceof RouterConfigurationError && /bias/.test(e.message),
  );
  // the defaults of transformers' DeepseekV3Config: 8 groups, 4 kept, scale 2.5 (and shared experts, dense layers)
  const r = Router.fromConfig(v3, gate, { bias });
  assert.equal(
    [r.config.nGroup, r.config.topkGroup, r.config.scale, r.config.normalize, r.config.scoring],
    [8, 4, 2.5, true, 'sigmoid'],
  );
  const spec = resolveMoELayer({ ...v3, num_hidden_layers: 6, moe_intermediate_size: 4 }, 3);
  assert.is(spec.sharedIntermediateSize, 4, 'n_shared_experts defaults to 1');
  assert.throws(
    () => resolveMoELayer({ ...v3, num_hidden_layers: 6, moe_intermediate_size: 4 }, 2),
    /first_k_dense_replace \(3\)/,
  );
  // the bias changes the choice: without it (null) another expert set comes out for some token
  const x = randn(64 * d, SEED + 10);
  const unbiased = Router.fromConfig(v3, gate, { bias: null }).route(x);
  assert.not.equal(Array.from(r.route(x).indices), Array.from(unbiased.indices));
  // gpt-oss: its router is a linear layer with a bias
  const oss = { model_type: 'gpt_oss', hidden_size: d, num_local_experts: E, experts_per_token: 4 };
  assert.throws(
    () => Router.fromConfig(oss, gate),
    (e: Error) => e instanceof RouterConfigurationError && /logitBias: gpt_oss .*logitBias: null/.test(e.message),
  );
  assert.is(Router.fromConfig(oss, gate, { logitBias: bias }).selection, 'gptOss');
  assert.is(Router.fromConfig(oss, gate, { logitBias: null }).selection, 'gptOss');
  // models without one need none
  Router.fromConfig({ model_type: 'mixtral', hidden_size: d, num_local_experts: E, num_experts_per_tok: 2 }, gate);
});

test('GLM-4.5 (glm4_moe): transformers defaults, renormalised at k = 1, bias required, dense layers first', () => {
  const E = 16;
  const d = 8;
  const gate = randn(E * d, SEED + 11);
  const bias = randn(E, SEED + 12, 0.5);
  const glm = { model_type: 'glm4_moe', hidden_size: d, n_routed_experts: E, num_experts_per_tok: 4 };
  assert.throws(
    () => Router.fromConfig(glm, gate),
    (e: Error) => e instanceof RouterConfigurationError && /as every GLM-4\.5 router.*bias: null/.test(e.message),
  );
  // Glm4MoeConfig's defaults: one group (no group limit), scale 1, renormalised
  const r = Router.fromConfig(glm, gate, { bias });
  assert.equal(
    [r.config.nGroup, r.config.scale, r.config.normalize, r.config.scoring, r.selection],
    [0, 1, true, 'sigmoid', 'topk'],
  );
  const grouped = Router.fromConfig({ ...glm, n_group: 4, topk_group: 2, routed_scaling_factor: 2.5 }, gate, { bias });
  assert.equal([grouped.config.nGroup, grouped.config.topkGroup, grouped.config.scale], [4, 2, 2.5]);
  // k = 1: the one kept weight is renormalised to 1 (then scaled), where our DeepSeek-V3 rule keeps the raw score, as
  // DeepSeek's own modeling code does (transformers' DeepseekV3TopkRouter renormalises there too)
  const x = randn(32 * d, SEED + 13);
  const one = Router.fromConfig({ ...glm, num_experts_per_tok: 1, routed_scaling_factor: 2 }, gate, { bias }).route(x);
  assert.ok(
    Array.from(one.weights).every((w) => Math.abs(w - 2) < 1e-6),
    `weights ${Array.from(one.weights.subarray(0, 4))}`,
  );
  const v3 = Router.fromConfig(
    { ...glm, model_type: 'deepseek_v3', num_experts_per_tok: 1, n_group: 1, topk_group: 1 },
    gate,
    {
      bias,
    },
  ).route(x);
  assert.ok(Array.from(v3.weights).some((w) => Math.abs(w - 2.5) > 1e-3));
  // the first first_k_dense_replace layers (default 1) are dense; one shared expert by default
  const cfg = { ...glm, num_hidden_layers: 4, moe_intermediate_size: 4 };
  assert.throws(() => resolveMoELayer(cfg, 0), /first_k_dense_replace \(1\)/);
  const spec = resolveMoELayer(cfg, 1);
  assert.equal(
    [spec.sharedIntermediateSize, spec.requiresBias, spec.names.bias],
    [4, true, 'model.layers.1.mlp.gate.e_score_correction_bias'],
  );
  assert.is(resolveMoELayer({ ...cfg, n_shared_experts: 0 }, 1).names.shared, undefined);
  assert.is(resolveMoELayer({ ...cfg, n_shared_experts: null }, 1).names.shared, undefined);
  // more groups kept than there are: refused, as transformers' topk over the groups would
  assert.throws(
    () => Router.fromConfig({ ...glm, n_group: 2, topk_group: 3 }, gate, { bias }),
    (e: Error) => e instanceof RouterConfigurationError && /topkGroup/.test(e.message),
  );
  // Qwen3-Next's shared expert width defaults to 512, as its config class says
  const next = {
    model_type: 'qwen3_next',
    hidden_size: d,
    num_experts: E,
    num_experts_per_tok: 2,
    num_hidden_layers: 2,
  };
  assert.is(resolveMoELayer({ ...next, moe_intermediate_size: 4 }, 0).sharedIntermediateSize, 512);
});

test('a config saved by transformers v5 (num_local_experts for num_experts) loads the same layer', () => {
  const d = 16;
  const ck = writeTinyCheckpoint(dirFor('v5-config'), 'qwen3_moe', {
    hiddenSize: d,
    intermediateSize: 8,
    numExperts: 8,
    topK: 2,
    seed: 12,
    fusedExperts: true,
  });
  const x = randn(6 * d, SEED + 14);
  const before = MoELayer.fromPretrained(ck.dir, { layer: 0 });
  const { num_experts: numExperts, ...rest } = ck.config;
  fs.writeFileSync(path.join(ck.dir, 'config.json'), JSON.stringify({ ...rest, num_local_experts: numExperts }));
  const after = MoELayer.fromPretrained(ck.dir, { layer: 0 });
  assert.is(after.numExperts, 8);
  assert.equal(Array.from(after.forward(x).output), Array.from(before.forward(x).output));
  // (num_experts wins where both are present, as before)
  assert.is(Router.fromConfig({ ...ck.config, num_local_experts: 3 }, randn(8 * d, 1)).numExperts, 8);
  before.dispose();
  after.dispose();
});

test('ERNIE 4.5 (ernie4_5_moe): its key names, its [1, E] bias required, its layer range, no expert bias terms', () => {
  const E = 8;
  const d = 8;
  const gate = randn(E * d, SEED + 15);
  const bias = randn(E, SEED + 16, 0.5);
  const ernie = { model_type: 'ernie4_5_moe', hidden_size: d, moe_num_experts: E, moe_k: 3 };
  assert.throws(
    () => Router.fromConfig(ernie, gate),
    (e: Error) =>
      e instanceof RouterConfigurationError &&
      /ERNIE 4\.5's moe_statics.*mlp\.moe_statics\.e_score_correction_bias/.test(e.message),
  );
  const r = Router.fromConfig(ernie, gate, { bias });
  assert.equal(
    [r.numExperts, r.config.scoring, r.config.normalize, r.config.scale, r.config.nGroup],
    [E, 'softmax', true, 1, 0],
  );
  assert.ok(
    r.route(randn(4 * d, SEED + 17)).k.every((k) => k === 3),
    'moe_k is the top-k',
  );
  // the bias chooses: without it another expert set comes out for some token
  const x = randn(64 * d, SEED + 18);
  const unbiased = Router.fromConfig(ernie, gate, { bias: null }).route(x);
  assert.not.equal(Array.from(r.route(x).indices), Array.from(unbiased.indices));
  // sparse layers: moe_layer_start_index (default 1) to moe_layer_end_index (-1: the last), every moe_layer_interval
  const cfg = { ...ernie, num_hidden_layers: 6, moe_intermediate_size: 4 };
  assert.throws(() => resolveMoELayer(cfg, 0), /outside moe_layer_start_index\.\.moe_layer_end_index \(1\.\.5\)/);
  assert.is(resolveMoELayer(cfg, 5).sharedIntermediateSize, 8, 'two shared experts by default');
  assert.throws(() => resolveMoELayer({ ...cfg, moe_layer_end_index: 3 }, 4), /\(1\.\.3\)/);
  assert.throws(() => resolveMoELayer({ ...cfg, moe_layer_interval: 2 }, 2), /moe_layer_interval \(2\)/);
  assert.equal(resolveMoELayer({ ...cfg, moe_layer_interval: 2 }, 3).biasShape, [1, E]);
  assert.throws(() => resolveMoELayer({ ...cfg, use_bias: true }, 1), /"use_bias" is true, expected false/);
  assert.is(resolveMoELayer({ ...cfg, use_bias: 0 }, 1).numExperts, E, 'use_bias 0 is false, as Python reads it');
  assert.throws(
    () => resolveMoELayer({ ...cfg, moe_norm_min: 0.5 }, 1),
    /"moe_norm_min" is 0\.5, expected a number in \[0, 1e-6\]/,
  );
  assert.is(resolveMoELayer({ ...cfg, moe_num_shared_experts: null }, 1).names.shared, undefined);
  // trained without the aux-free bias: none is required
  assert.is(resolveMoELayer({ ...cfg, moe_use_aux_free: false }, 1).requiresBias, false);
  assert.is(Router.fromConfig({ ...ernie, moe_use_aux_free: false }, gate).numExperts, E);
});

test('Qwen3.5-MoE: the language layers under model.language_model or model.layers, nested or text-only config, load alike', () => {
  const d = 16;
  const ck = writeTinyCheckpoint(dirFor('qwen35'), 'qwen3_5_moe', {
    hiddenSize: d,
    intermediateSize: 8,
    numExperts: 8,
    topK: 2,
    seed: 17,
    fusedExperts: true,
  });
  const x = randn(5 * d, SEED + 19);
  const nested = MoELayer.fromPretrained(ck.dir, { layer: 1 });
  const expected = Array.from(nested.forward(x).output);
  nested.dispose();
  // the same tensors without the language_model level (a text-only extract)
  const st = openSafetensors(path.join(ck.dir, 'model.safetensors'));
  const renamed = Object.fromEntries(
    st.tensorNames().map((name) => {
      const { dtype, shape } = st.info(name);
      const input = { dtype: dtype as 'F32', shape, data: st.readFloat32(name) };
      return [name.replace('model.language_model.', 'model.'), input];
    }),
  );
  st.close();
  const plain = dirFor('qwen35-plain');
  writeSafetensors(path.join(plain, 'model.safetensors'), renamed);
  fs.writeFileSync(path.join(plain, 'config.json'), JSON.stringify(ck.config));
  const extracted = MoELayer.fromPretrained(plain, { layer: 1 });
  assert.equal(Array.from(extracted.forward(x).output), expected);
  extracted.dispose();
  // Qwen3_5MoeForCausalLM: its text config at the top
  const text = { ...(ck.config.text_config as object), architectures: ['Qwen3_5MoeForCausalLM'] };
  fs.writeFileSync(path.join(plain, 'config.json'), JSON.stringify({ ...text, model_type: 'qwen3_5_moe_text' }));
  const textOnly = MoELayer.fromPretrained(plain, { layer: 1 });
  assert.equal(Array.from(textOnly.forward(x).output), expected);
  textOnly.dispose();
  // a nested config without its text_config is refused clearly
  fs.writeFileSync(path.join(plain, 'config.json'), JSON.stringify({ ...ck.config, text_config: 7 }));
  assert.throws(
    () => MoELayer.fromPretrained(plain, { layer: 1 }),
    (e: Error) =>
      e instanceof ModelLoadError && /text_config: expected the language model's fields, got 7/.test(e.message),
  );
});

test('dense layers, bad indices and missing files get clear errors', () => {
  const ck = writeTinyCheckpoint(dirFor('dense'), 'deepseek_v3', {
    hiddenSize: 16,
    intermediateSize: 8,
    numExperts: 8,
    topK: 2,
    numLayers: 3,
    firstKDense: 1,
    seed: 4,
  });
  assert.throws(
    () => MoELayer.fromPretrained(ck.dir, { layer: 0 }),
    (e: Error) => e instanceof ModelLoadError && /dense|first_k_dense_replace/.test(e.message),
  );
  assert.throws(
    () => MoELayer.fromPretrained(ck.dir, { layer: 7 }),
    (e: Error) => e instanceof ValidationError || e instanceof ModelLoadError,
  );
  assert.throws(
    () => MoELayer.fromPretrained(path.join(root, 'nowhere'), { layer: 0 }),
    (e: Error) => e instanceof ModelLoadError && /not found/.test(e.message),
  );
});

test.run();
