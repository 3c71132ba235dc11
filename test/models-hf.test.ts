/**
 * Tests of Hugging Face checkpoint loading: checkpoint folders (single file, sharded, malformed index), the MoE
 * layer adapters of all six supported families, dense-layer rules and shape checks against config.json.
 */
import * as fs from 'fs';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MoELayer } from '../lib';
import { ModelLoadError, ValidationError } from '../lib/errors';
import { f8BitsToNumber } from '../lib/models/float8';
import { referenceLayer } from '../lib/reference/layer';
import { relativeError } from './helpers/compare';
import { randn } from './helpers/random';
import { loadMoELayerWeights, resolveMoELayer } from '../lib/models/architectures';
import { openCheckpoint } from '../lib/models/checkpoint';
import { applyFp8Scaling, fp8BlockSize, fp8ScalingOf } from '../lib/models/fp8-scales';
import { openSafetensors, writeSafetensors, type SafetensorsTensorInput } from '../lib/models/safetensors';
import { layerPrefix, writeTinyCheckpoint, type TinyArch, type TinyCheckpointOptions } from './helpers/checkpoint';
import { throwsWith } from './helpers/errors';
import { tempDirs } from './helpers/tmp';

const tmpDir = tempDirs('moe-hf-');

const SMALL: TinyCheckpointOptions = { hiddenSize: 8, intermediateSize: 6, numExperts: 4, topK: 2 };

// ------------------------------------------------------------------------------------------------ checkpoint

test('checkpoint: single file and sharded give the same tensors', () => {
  const single = writeTinyCheckpoint(tmpDir(), 'olmoe', { ...SMALL, seed: 3 });
  const sharded = writeTinyCheckpoint(tmpDir(), 'olmoe', { ...SMALL, seed: 3, sharded: true });
  assert.ok(fs.existsSync(path.join(sharded.dir, 'model-00002-of-00002.safetensors')));
  for (const tiny of [single, sharded]) {
    const ckpt = openCheckpoint(tiny.dir);
    try {
      assert.is(ckpt.config.model_type, 'olmoe');
      assert.equal(ckpt.tensorNames().sort(), Object.keys(tiny.tensors).sort());
      for (const [name, stored] of Object.entries(tiny.tensors)) {
        assert.ok(ckpt.has(name));
        assert.equal(ckpt.info(name).shape, stored.shape);
        assert.equal(Array.from(ckpt.readFloat32(name, stored.shape)), Array.from(stored.data), name);
      }
      assert.not.ok(ckpt.has('model.layers.0.mlp.nothing'));
    } finally {
      ckpt.close();
    }
  }
});

test('checkpoint: missing tensor and wrong expected shape name the tensor, dir and shapes', () => {
  const tiny = writeTinyCheckpoint(tmpDir(), 'mixtral', SMALL);
  const ckpt = openCheckpoint(tiny.dir);
  const gate = 'model.layers.0.block_sparse_moe.gate.weight';
  throwsWith(() => ckpt.readFloat32('model.layers.9.x'), ModelLoadError, /no tensor named/, [
    'model.layers.9.x',
    tiny.dir,
  ]);
  throwsWith(() => ckpt.readFloat32(gate, [8, 4]), ModelLoadError, /has shape \[4, 8\], expected \[8, 4\]/, [gate]);
  ckpt.close();
  throwsWith(() => ckpt.readFloat32(gate), ModelLoadError, /closed/);
});

test('checkpoint: missing or invalid config and weights', () => {
  const empty = tmpDir();
  throwsWith(() => openCheckpoint(empty), ModelLoadError, /cannot read config\.json \(file not found\)/, [empty]);
  fs.writeFileSync(path.join(empty, 'config.json'), '{"model_type": ');
  throwsWith(() => openCheckpoint(empty), ModelLoadError, /config\.json is not valid JSON/);
  fs.writeFileSync(path.join(empty, 'config.json'), '[1, 2]');
  throwsWith(() => openCheckpoint(empty), ModelLoadError, /must be a JSON object, got \[1,2\]/);
  fs.writeFileSync(path.join(empty, 'config.json'), '{}');
  throwsWith(() => openCheckpoint(empty), ModelLoadError, /no weights found.*model\.safetensors\.index\.json/);
  throwsWith(() => openCheckpoint(path.join(empty, 'nope')), ModelLoadError, /checkpoint folder not found/);
  throwsWith(() => openCheckpoint(path.join(empty, 'config.json')), ModelLoadError, /not a folder/);
  throwsWith(() => openCheckpoint(''), ValidationError, /non-empty string/);
});

test('checkpoint: index shard names cannot leave the folder', () => {
  const parent = tmpDir();
  const dir = path.join(parent, 'ckpt');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'config.json'), '{}');
  writeSafetensors(path.join(parent, 'outside.safetensors'), {
    w: { dtype: 'F32', shape: [1], data: new Float32Array(1) },
  });
  const index = path.join(dir, 'model.safetensors.index.json');
  const bad = [
    '../outside.safetensors',
    path.join(parent, 'outside.safetensors'),
    'sub/x.safetensors',
    'a\\b',
    '..',
    '',
    7,
  ];
  for (const shard of bad) {
    fs.writeFileSync(index, JSON.stringify({ weight_map: { w: shard } }));
    throwsWith(() => openCheckpoint(dir), ModelLoadError, /names shard .* expected a plain file name/, ['"w"']);
  }
  fs.writeFileSync(index, JSON.stringify({ metadata: {} }));
  throwsWith(() => openCheckpoint(dir), ModelLoadError, /"weight_map" is undefined, expected an object/);
  writeSafetensors(path.join(dir, 'a.safetensors'), { w: { dtype: 'F32', shape: [1], data: new Float32Array(1) } });
  fs.writeFileSync(
    index,
    JSON.stringify({ weight_map: { w: 'a.safetensors', v: 'a.safetensors', u: 'b.safetensors' } }),
  );
  const ckpt = openCheckpoint(dir);
  assert.is(ckpt.readFloat32('w').length, 1);
  throwsWith(
    () => ckpt.readFloat32('v'),
    ModelLoadError,
    /places tensor "v" in a\.safetensors, but that shard does not/,
  );
  throwsWith(() => ckpt.readFloat32('u'), ModelLoadError, /cannot open safetensors file/, ['b.safetensors']);
  ckpt.close();
});

// ------------------------------------------------------------------------------------------------ architectures

const EXPECTED: Record<TinyArch, { architecture: string; gate: string; w1: string; shared?: string; bias?: boolean }> =
  {
    mixtral: {
      architecture: 'MixtralForCausalLM',
      gate: 'model.layers.1.block_sparse_moe.gate.weight',
      w1: 'model.layers.1.block_sparse_moe.experts.3.w1.weight',
    },
    olmoe: {
      architecture: 'OlmoeForCausalLM',
      gate: 'model.layers.1.mlp.gate.weight',
      w1: 'model.layers.1.mlp.experts.3.gate_proj.weight',
    },
    qwen2_moe: {
      architecture: 'Qwen2MoeForCausalLM',
      gate: 'model.layers.1.mlp.gate.weight',
      w1: 'model.layers.1.mlp.experts.3.gate_proj.weight',
      shared: 'model.layers.1.mlp.shared_expert.gate_proj.weight',
    },
    qwen3_moe: {
      architecture: 'Qwen3MoeForCausalLM',
      gate: 'model.layers.1.mlp.gate.weight',
      w1: 'model.layers.1.mlp.experts.3.gate_proj.weight',
    },
    qwen3_vl_moe: {
      architecture: 'Qwen3VLMoeForConditionalGeneration',
      gate: 'model.language_model.layers.1.mlp.gate.weight',
      w1: 'model.language_model.layers.1.mlp.experts.3.gate_proj.weight',
    },
    qwen3_5_moe: {
      architecture: 'Qwen3_5MoeForConditionalGeneration',
      gate: 'model.language_model.layers.1.mlp.gate.weight',
      w1: 'model.language_model.layers.1.mlp.experts.3.gate_proj.weight',
      shared: 'model.language_model.layers.1.mlp.shared_expert.gate_proj.weight',
    },
    qwen3_next: {
      architecture: 'Qwen3NextForCausalLM',
      gate: 'model.layers.1.mlp.gate.weight',
      w1: 'model.layers.1.mlp.experts.3.gate_proj.weight',
      shared: 'model.layers.1.mlp.shared_expert.gate_proj.weight',
    },
    deepseek_v2: {
      architecture: 'DeepseekV2ForCausalLM',
      gate: 'model.layers.1.mlp.gate.weight',
      w1: 'model.layers.1.mlp.experts.3.gate_proj.weight',
      shared: 'model.layers.1.mlp.shared_experts.gate_proj.weight',
    },
    deepseek_v3: {
      architecture: 'DeepseekV3ForCausalLM',
      gate: 'model.layers.1.mlp.gate.weight',
      w1: 'model.layers.1.mlp.experts.3.gate_proj.weight',
      shared: 'model.layers.1.mlp.shared_experts.gate_proj.weight',
      bias: true,
    },
    ernie4_5_moe: {
      architecture: 'Ernie4_5_MoeForCausalLM',
      gate: 'model.layers.1.mlp.gate.weight',
      w1: 'model.layers.1.mlp.experts.3.gate_proj.weight',
      shared: 'model.layers.1.mlp.shared_experts.gate_proj.weight',
      bias: true,
    },
    glm4_moe: {
      architecture: 'Glm4MoeForCausalLM',
      gate: 'model.layers.1.mlp.gate.weight',
      w1: 'model.layers.1.mlp.experts.3.gate_proj.weight',
      shared: 'model.layers.1.mlp.shared_experts.gate_proj.weight',
      bias: true,
    },
  };

const DTYPES = ['F32', 'BF16', 'F16'] as const;

(Object.keys(EXPECTED) as TinyArch[]).forEach((arch, i) => {
  const dtype = DTYPES[i % 3];
  const sharded = i % 2 === 1;
  test(`${arch}: resolve and load layer 1 (${dtype}${sharded ? ', sharded' : ''})`, () => {
    const opts = { ...SMALL, numExperts: 8, dtype, sharded, seed: i + 1, sharedExperts: 2, sharedIntermediateSize: 10 };
    const tiny = writeTinyCheckpoint(tmpDir(), arch, opts);
    const expected = EXPECTED[arch];
    const ckpt = openCheckpoint(tiny.dir);
    try {
      const spec = resolveMoELayer(ckpt.config, 1);
      assert.is(spec.architecture, expected.architecture);
      assert.is(spec.modelType, arch);
      assert.equal([spec.hiddenSize, spec.intermediateSize, spec.numExperts, spec.topK], [8, 6, 8, 2]);
      assert.is(spec.names.gate, expected.gate);
      assert.is(spec.names.expert(3).w1, expected.w1);
      assert.is(spec.names.shared?.w1, expected.shared);
      const layer = loadMoELayerWeights(ckpt, spec);
      const stored = tiny.tensors;
      assert.equal(Array.from(layer.gateWeight), Array.from(stored[spec.names.gate].data));
      for (let e = 0; e < spec.numExperts; e++) {
        const names = spec.names.expert(e);
        const weights = layer.expert(e);
        assert.equal(Array.from(weights.w1), Array.from(stored[names.w1].data), names.w1);
        assert.equal(Array.from(weights.w3), Array.from(stored[names.w3].data), names.w3);
        assert.equal(Array.from(weights.w2), Array.from(stored[names.w2].data), names.w2);
      }
      assert.is(layer.bias !== undefined, expected.bias === true, 'score-correction bias');
      if (layer.bias) assert.equal(Array.from(layer.bias), Array.from(stored[spec.names.bias!].data));
      if (expected.shared) {
        const gated = ['qwen2_moe', 'qwen3_next', 'qwen3_5_moe'].includes(arch); // (a sigmoid-gated shared_expert)
        const width = gated ? 10 : 2 * 6;
        assert.is(spec.sharedIntermediateSize, width);
        assert.is(layer.shared?.intermediateSize, width);
        assert.equal(Array.from(layer.shared!.w2), Array.from(stored[spec.names.shared!.w2].data));
        assert.is(layer.shared!.gate?.length, gated ? 8 : undefined);
      } else {
        assert.is(layer.shared, undefined);
      }
      throwsWith(() => layer.expert(8), ValidationError, /expected an integer in \[0, 7\]/);
    } finally {
      ckpt.close();
    }
  });
});

test('model_type alone identifies the model; DeepSeek bias requirement follows topk_method', () => {
  const mixtral = resolveMoELayer(
    {
      model_type: 'mixtral',
      num_hidden_layers: 1,
      hidden_size: 4,
      intermediate_size: 2,
      num_local_experts: 2,
      num_experts_per_tok: 1,
    },
    0,
  );
  assert.is(mixtral.architecture, 'MixtralForCausalLM');
  assert.is(mixtral.requiresBias, undefined);
  const v3 = writeTinyCheckpoint(tmpDir(), 'deepseek_v3', SMALL).config;
  assert.is(resolveMoELayer(v3, 0).requiresBias, true);
  assert.is(resolveMoELayer({ ...v3, topk_method: undefined }, 0).requiresBias, true, 'noaux_tc is the V3 default');
  assert.is(resolveMoELayer({ ...v3, topk_method: 'greedy' }, 0).requiresBias, false);
  const v2 = writeTinyCheckpoint(tmpDir(), 'deepseek_v2', SMALL).config;
  assert.is(resolveMoELayer(v2, 0).requiresBias, false);
  throwsWith(
    () => resolveMoELayer({ ...v2, topk_method: 'random' }, 0),
    ModelLoadError,
    /"topk_method" is "random", expected greedy \| group_limited_greedy \| noaux_tc/,
  );
});

test('dense layers are rejected with the layer and the reason', () => {
  const deepseek = writeTinyCheckpoint(tmpDir(), 'deepseek_v3', {
    ...SMALL,
    numLayers: 4,
    firstKDense: 1,
    extraConfig: { moe_layer_freq: 2 },
  });
  assert.equal(deepseek.moeLayers, [2]);
  throwsWith(
    () => resolveMoELayer(deepseek.config, 0),
    ModelLoadError,
    /layer 0 is a dense MLP layer.*first_k_dense_replace \(1\)/,
  );
  throwsWith(() => resolveMoELayer(deepseek.config, 3), ModelLoadError, /layer 3 is a dense.*moe_layer_freq \(2\)/);
  assert.is(resolveMoELayer(deepseek.config, 2).layer, 2);
  const qwen2 = writeTinyCheckpoint(tmpDir(), 'qwen2_moe', {
    ...SMALL,
    numLayers: 3,
    extraConfig: { mlp_only_layers: [1] },
  });
  assert.equal(qwen2.moeLayers, [0, 2]);
  throwsWith(() => resolveMoELayer(qwen2.config, 1), ModelLoadError, /Qwen2MoeForCausalLM layer 1 .*mlp_only_layers/);
  const qwen3 = writeTinyCheckpoint(tmpDir(), 'qwen3_moe', {
    ...SMALL,
    numLayers: 4,
    extraConfig: { decoder_sparse_step: 2 },
  });
  assert.equal(qwen3.moeLayers, [1, 3]);
  throwsWith(() => resolveMoELayer(qwen3.config, 2), ModelLoadError, /layer 2 .*decoder_sparse_step \(2\)/);
  const ckpt = openCheckpoint(qwen3.dir);
  assert.is(loadMoELayerWeights(ckpt, resolveMoELayer(qwen3.config, 3)).gateWeight.length, 4 * 8);
  ckpt.close();
});

test('layer index, unknown architectures and bad config fields', () => {
  const { config } = writeTinyCheckpoint(tmpDir(), 'mixtral', SMALL);
  for (const layer of [-1, 2, 1.5, NaN]) {
    throwsWith(
      () => resolveMoELayer(config, layer),
      ValidationError,
      /expected an integer in \[0, 1\] \(num_hidden_layers 2\)/,
    );
  }
  throwsWith(
    () => resolveMoELayer({ ...config, architectures: ['LlamaForCausalLM'], model_type: 'llama' }, 0),
    ModelLoadError,
    /unsupported model.*"LlamaForCausalLM"/,
    [
      'MixtralForCausalLM',
      'OlmoeForCausalLM',
      'Qwen2MoeForCausalLM',
      'Qwen3MoeForCausalLM',
      'DeepseekV2ForCausalLM',
      'DeepseekV3ForCausalLM',
    ],
  );
  throwsWith(() => resolveMoELayer({ model_type: 'constructor' }, 0), ModelLoadError, /unsupported model/);
  throwsWith(
    () => resolveMoELayer({ ...config, model_type: 'olmoe' }, 0),
    ModelLoadError,
    /architectures\[0\] is "MixtralForCausalLM" but model_type is "olmoe"/,
  );
  throwsWith(
    () => resolveMoELayer({ ...config, num_local_experts: undefined }, 0),
    ModelLoadError,
    /"num_local_experts" is undefined, expected an integer >= 1/,
  );
  throwsWith(() => resolveMoELayer({ ...config, hidden_size: '8' }, 0), ModelLoadError, /"hidden_size" is "8"/);
  throwsWith(
    () => resolveMoELayer({ ...config, num_experts_per_tok: 5 }, 0),
    ModelLoadError,
    /"num_experts_per_tok" is 5, expected at most the number of experts \(4\)/,
  );
  throwsWith(() => resolveMoELayer({ ...config, num_hidden_layers: 0 }, 0), ModelLoadError, /"num_hidden_layers" is 0/);
});

test('tensor shapes are checked against the config before reading', () => {
  const tiny = writeTinyCheckpoint(tmpDir(), 'qwen2_moe', SMALL);
  const ckpt = openCheckpoint(tiny.dir);
  const wrongWidth = resolveMoELayer({ ...tiny.config, moe_intermediate_size: 7 }, 0);
  throwsWith(
    () => loadMoELayerWeights(ckpt, wrongWidth),
    ModelLoadError,
    /tensor "model\.layers\.0\.mlp\.experts\.0\.gate_proj\.weight" has shape \[6, 8\], expected \[7, 8\] from config/,
    [tiny.dir, 'layer 0'],
  );
  const wrongShared = resolveMoELayer({ ...tiny.config, shared_expert_intermediate_size: 5 }, 0);
  throwsWith(
    () => loadMoELayerWeights(ckpt, wrongShared),
    ModelLoadError,
    /shared_expert\.gate_proj\.weight" has shape \[12, 8\], expected \[5, 8\]/,
  );
  const moreExperts = resolveMoELayer({ ...tiny.config, num_experts: 5 }, 0);
  throwsWith(() => loadMoELayerWeights(ckpt, moreExperts), ModelLoadError, /has shape \[4, 8\], expected \[5, 8\]/);
  ckpt.close();
});

test('DeepSeek-V3 requires the score-correction bias; unsupported dtypes are reported up front', () => {
  const dir = tmpDir();
  const tiny = writeTinyCheckpoint(dir, 'deepseek_v3', SMALL);
  const bias = 'model.layers.0.mlp.gate.e_score_correction_bias';
  const withoutBias = Object.fromEntries(
    Object.entries(tiny.tensors)
      .filter(([name]) => name !== bias)
      .map(([name, t]) => [name, { dtype: 'F32' as const, shape: t.shape, data: t.data }]),
  );
  writeSafetensors(path.join(dir, 'model.safetensors'), withoutBias);
  let ckpt = openCheckpoint(dir);
  throwsWith(
    () => loadMoELayerWeights(ckpt, resolveMoELayer(tiny.config, 0)),
    ModelLoadError,
    /e_score_correction_bias" is missing/,
  );
  ckpt.close();
  // The same layer under greedy routing does not need the bias.
  ckpt = openCheckpoint(dir);
  assert.is(loadMoELayerWeights(ckpt, resolveMoELayer({ ...tiny.config, topk_method: 'greedy' }, 0)).bias, undefined);
  ckpt.close();
  const gate = 'model.layers.0.mlp.gate.weight';
  const headerText = Buffer.from(JSON.stringify({ [gate]: { dtype: 'I8', shape: [4, 8], data_offsets: [0, 32] } }));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerText.length));
  const quantised = tmpDir();
  fs.writeFileSync(path.join(quantised, 'config.json'), JSON.stringify(tiny.config));
  fs.writeFileSync(path.join(quantised, 'model.safetensors'), Buffer.concat([prefix, headerText, Buffer.alloc(32)]));
  ckpt = openCheckpoint(quantised);
  assert.is(ckpt.info(gate).dtype, 'I8');
  throwsWith(
    () => loadMoELayerWeights(ckpt, resolveMoELayer(tiny.config, 0)),
    ModelLoadError,
    /layer 0: .*gate\.weight" has dtype I8, expected F32, BF16, F16, or F8_E4M3 \/ F8_E5M2 with a scale tensor/,
  );
  ckpt.close();
});

// ------------------------------------------------------------------------------------------------ FP8

const FP8_CASES: { arch: TinyArch; fp8: NonNullable<TinyCheckpointOptions['fp8']>; sharded: boolean }[] = [
  // blocks of 4 x 3 over [6, 8] and [8, 6] weights: partial blocks at the ends of both dimensions
  { arch: 'deepseek_v3', fp8: { dtype: 'F8_E4M3', scales: 'block', block: [4, 3] }, sharded: true },
  { arch: 'qwen3_moe', fp8: { dtype: 'F8_E4M3', scales: 'row' }, sharded: false },
  { arch: 'mixtral', fp8: { dtype: 'F8_E5M2', scales: 'tensor' }, sharded: false },
];

for (const c of FP8_CASES) {
  test(`FP8 ${c.arch} (${c.fp8.dtype}, ${c.fp8.scales} scales): weights read dequantised, exactly`, () => {
    const tiny = writeTinyCheckpoint(tmpDir(), c.arch, { ...SMALL, fp8: c.fp8, sharded: c.sharded, seed: 5 });
    const ckpt = openCheckpoint(tiny.dir);
    try {
      const spec = resolveMoELayer(ckpt.config, 1);
      const layer = loadMoELayerWeights(ckpt, spec);
      assert.equal(Array.from(layer.gateWeight), Array.from(tiny.tensors[spec.names.gate].data), 'gate stays F32');
      assert.is(ckpt.scalingOf(spec.names.gate), null);
      for (let e = 0; e < spec.numExperts; e++) {
        const names = spec.names.expert(e);
        const weights = layer.expert(e);
        for (const key of ['w1', 'w3', 'w2'] as const) {
          const name = names[key];
          assert.is(ckpt.info(name).dtype, c.fp8.dtype);
          assert.is(ckpt.scalingOf(name)?.kind, c.fp8.scales);
          assert.equal(Array.from(weights[key]), Array.from(tiny.tensors[name].data), name);
          // the stored numbers span the format (the group's largest is its largest value); the weights do not
          const raw = Math.max(...Array.from(ckpt.readFloat32(name), Math.abs));
          assert.ok(raw < 0.5, `${name}: largest dequantised weight ${raw}`);
        }
      }
      if (spec.names.shared) {
        assert.equal(Array.from(layer.shared!.w2), Array.from(tiny.tensors[spec.names.shared.w2].data));
      }
    } finally {
      ckpt.close();
    }
  });
}

// An 'fp8' layer from an E4M3 checkpoint packs the stored bytes with their scales spread per row and 128 columns:
// its weights are then exactly those read as float32, so it matches the float64 reference on them to fp32 rounding
// (quantizing those floats again would not: a row without its block's largest value gets another scale). Blocks
// narrower than 128 columns, and E5M2, cannot be kept so: those layers quantize at load.
const FP8_LAYER_CASES: { arch: TinyArch; fp8: NonNullable<TinyCheckpointOptions['fp8']>; kept: boolean }[] = [
  { arch: 'deepseek_v3', fp8: { dtype: 'F8_E4M3', scales: 'block', block: [128, 128] }, kept: true },
  { arch: 'qwen3_moe', fp8: { dtype: 'F8_E4M3', scales: 'row' }, kept: true },
  { arch: 'qwen3_moe', fp8: { dtype: 'F8_E4M3', scales: 'block', block: [64, 64] }, kept: false },
  { arch: 'mixtral', fp8: { dtype: 'F8_E5M2', scales: 'tensor' }, kept: false },
];

for (const c of FP8_LAYER_CASES) {
  const label = `${c.arch} ${c.fp8.dtype} ${c.fp8.scales}${c.fp8.block ? ` ${c.fp8.block.join('x')}` : ''}`;
  test(`fp8 layer from an FP8 checkpoint (${label}): ${c.kept ? 'its own bytes and scales' : 'quantized at load'}`, () => {
    // d = 300 and f = 200: scale groups of 128 columns with a short last one, and 128-row blocks with a short last
    const opts = { hiddenSize: 300, intermediateSize: 200, numExperts: 4, topK: 2, fp8: c.fp8, seed: 9 };
    const tiny = writeTinyCheckpoint(tmpDir(), c.arch, opts);
    const layerIndex = c.arch === 'deepseek_v3' ? 1 : 0;
    const ckpt = openCheckpoint(tiny.dir);
    const floats = loadMoELayerWeights(ckpt, resolveMoELayer(ckpt.config, layerIndex));
    const kept = floats.expertE4m3(0);
    assert.is(kept !== null, c.kept, 'whether the E4M3 bytes are kept');
    if (kept) {
      const name = resolveMoELayer(ckpt.config, layerIndex).names.expert(0).w1;
      const f = 200,
        d = 300;
      // (each kept weight is its byte times its spread scale: the float32 weight read the ordinary way)
      const w1 = floats.expert(0).w1;
      for (let i = 0; i < f * d; i += 97) {
        const scale = kept.e4m3.w1.scales[Math.floor(i / d) * 3 + Math.floor((i % d) / 128)];
        assert.is(Math.fround(f8BitsToNumber(kept.e4m3.w1.data[i], 'F8_E4M3') * scale), w1[i], `${name} element ${i}`);
      }
      assert.is(floats.sharedE4m3() !== null, floats.shared !== undefined);
    }
    const layer = MoELayer.fromPretrained(tiny.dir, { layer: layerIndex, dtype: 'fp8' });
    assert.is(layer.dtype, 'fp8');
    const T = 6; // (at most 6 rows per expert: fp32 activations on every CPU, AMX included)
    const x = randn(T * 300, 91);
    const { output, routing } = layer.forward(x);
    const experts = Array.from({ length: 4 }, (_, e) => ({ ...floats.expert(e), f: 200 }));
    const shared = floats.shared && { ...floats.shared, f: floats.shared.intermediateSize };
    const err = relativeError(
      output,
      referenceLayer(x, T, 300, (e) => experts[e], routing, shared),
    );
    if (c.kept) assert.ok(err < 1e-5, `${label}: relative error ${err} against the checkpoint's weights`);
    else assert.ok(err < 5e-2, `${label}: relative error ${err} (quantized again at load)`);
    layer.dispose();
    ckpt.close();
  });
}

test('FP8 scale layouts: per tensor, per row and per block, by name and config, applied element by element', () => {
  const lookup = (tensors: Record<string, number[]>) => ({
    dir: '/ckpt',
    has: (n: string) => Object.hasOwn(tensors, n),
    info: (n: string) => ({ dtype: n.includes('_scale') ? 'BF16' : 'F8_E4M3', shape: tensors[n], byteLength: 0 }),
  });
  const unstated = fp8BlockSize({}, 'config.json');
  assert.equal(unstated, { block: [128, 128], stated: false });
  const groups = (...blocks: unknown[]) => ({
    quantization_config: {
      config_groups: Object.fromEntries(blocks.map((b, i) => [`group_${i}`, { weights: { block_structure: b } }])),
    },
  });
  const stated = fp8BlockSize(groups(null, [2, 3], [2, 3]), 'config.json');
  assert.equal(stated, { block: [2, 3], stated: true });
  throwsWith(
    () => fp8BlockSize(groups([2, 3], [4, 3]), 'config.json'),
    ModelLoadError,
    /group_1.* is \[4,3\] but .*group_0.* is \[2,3\]/,
  );
  throwsWith(
    () => fp8BlockSize({ quantization_config: { weight_block_size: '128x128' } }, 'config.json'),
    ModelLoadError,
    /config\.json: quantization_config\.weight_block_size is "128x128", expected two integers/,
  );
  const w = 'w.weight';
  const kindOf = (scaleName: string, scaleShape: number[], shape = [5, 7], blocks = unstated) =>
    fp8ScalingOf(lookup({ [w]: shape, [scaleName]: scaleShape }), w, shape, blocks).kind;
  assert.is(kindOf('w.weight_scale', []), 'tensor');
  assert.is(kindOf('w.weight_scale', [1]), 'tensor');
  assert.is(kindOf('w.weight_scale', [1], [2, 3, 4]), 'tensor');
  // a fused [experts, rows, cols] tensor: scales stacked the same way
  const stackedOf = (scaleName: string, scaleShape: number[]) => {
    const shape = [2, 3, 4];
    const scaling = fp8ScalingOf(lookup({ [w]: shape, [scaleName]: scaleShape }), w, shape, unstated);
    return `${scaling.kind}${scaling.stacked ? ', stacked' : ''}`;
  };
  assert.is(stackedOf('w.weight_scale', [2]), 'tensor, stacked');
  assert.is(stackedOf('w.weight_scale', [2, 3]), 'row, stacked');
  assert.is(stackedOf('w.weight_scale', [2, 3, 1]), 'row, stacked');
  assert.is(stackedOf('w.weight_scale_inv', [2, 1, 1]), 'block, stacked');
  assert.is(stackedOf('w.weight_scale', []), 'tensor');
  assert.is(kindOf('w.weight_scale', [5]), 'row');
  assert.is(kindOf('w.weight_scale', [5, 1]), 'row');
  assert.is(kindOf('w.weight_scale', [3, 3], [5, 7], stated), 'block');
  assert.is(kindOf('w.weight_scale_inv', [1, 1]), 'block');
  assert.is(kindOf('w.weight_scale_inv', [3, 3], [5, 7], stated), 'block');
  const perTensorOrRow = /expected \[\] or \[1\] \(per tensor\), \[5\] or \[5, 1\] \(per row\)$/;
  const refused: [string, number[], number[], typeof unstated, RegExp][] = [
    ['w.weight_scale', [3, 3], [5, 7], unstated, perTensorOrRow],
    ['w.weight_scale_inv', [], [5, 7], unstated, /shape \[\], expected \[1, 1\] \(blocks of 128 x 128/],
    ['w.weight_scale_inv', [5, 1], [5, 7], stated, /shape \[5, 1\], expected \[3, 3\] \(blocks of 2 x 3/],
    [
      'w.weight_scale_inv',
      [1],
      [7],
      unstated,
      /shape \[1\], expected a 2-D weight, or a 3-D one of stacked experts \(block-wise scales\)/,
    ],
    [
      'w.weight_scale',
      [3],
      [2, 3, 4],
      unstated,
      /shape \[3\], expected \[\] or \[1\] \(per tensor\), \[2\] \(per expert\), \[2, 3\] or \[2, 3, 1\] \(per row\)$/,
    ],
    [
      'w.weight_scale_inv',
      [2, 2, 1],
      [2, 3, 4],
      unstated,
      /shape \[2, 2, 1\], expected \[2, 1, 1\] \(blocks of 128 x 128/,
    ],
  ];
  for (const [scaleName, scaleShape, shape, blocks, message] of refused)
    throwsWith(() => kindOf(scaleName, scaleShape, shape, blocks), ModelLoadError, message, ['/ckpt', '"w.weight"']);

  // applied: each element times the scale of its tensor, row or block, written out with explicit indices
  const rows = 5;
  const cols = 7;
  const q = Float32Array.from({ length: rows * cols }, (_, i) => ((i * 37) % 29) - 14);
  const cases = [
    { kind: 'tensor' as const, scales: [0.5], scaleOf: () => 0 },
    { kind: 'row' as const, scales: [1, 2, 3, 4, 5], scaleOf: (r: number) => r },
    {
      kind: 'block' as const,
      scales: [1, 2, 3, 4, 5, 6, 7, 8, 9],
      scaleOf: (r: number, c: number) => Math.floor(r / 2) * 3 + Math.floor(c / 3),
    },
  ];
  for (const c of cases) {
    const values = q.slice();
    const scaling = { scaleName: 's', kind: c.kind, block: [2, 3] as [number, number], stacked: false };
    applyFp8Scaling(values, [rows, cols], Float32Array.from(c.scales), scaling, 'here');
    for (let r = 0; r < rows; r++)
      for (let col = 0; col < cols; col++)
        assert.is(values[r * cols + col], q[r * cols + col] * c.scales[c.scaleOf(r, col)], `${c.kind} [${r}, ${col}]`);
  }
  const perTensor = { scaleName: 's', kind: 'tensor' as const, block: [128, 128] as [number, number], stacked: false };
  const cube = Float32Array.from({ length: 24 }, (_, i) => i - 12);
  applyFp8Scaling(cube, [2, 3, 4], Float32Array.of(0.25), perTensor, 'here');
  assert.equal(
    Array.from(cube),
    Array.from({ length: 24 }, (_, i) => (i - 12) * 0.25),
  );
  throwsWith(
    () => applyFp8Scaling(q.slice(), [rows, cols], Float32Array.of(Infinity), perTensor, 'here'),
    ModelLoadError,
    /here: scale "s" holds Infinity at element 0/,
  );
  const infCode = q.slice();
  infCode[3] = -Infinity; // (an E5M2 infinity code)
  throwsWith(
    () => applyFp8Scaling(infCode, [rows, cols], Float32Array.of(1), perTensor, 'here'),
    ModelLoadError,
    /here: element 3 is -Infinity once scaled/,
  );
});

// ------------------------------------------------------------------------------------------------ fused experts

const FUSED_CASES: {
  arch: TinyArch;
  fp8?: TinyCheckpointOptions['fp8'];
  sharded: boolean;
  transposed?: boolean;
}[] = [
  { arch: 'mixtral', sharded: false },
  { arch: 'qwen3_moe', sharded: true },
  { arch: 'deepseek_v3', fp8: { dtype: 'F8_E4M3', scales: 'block', block: [3, 5] }, sharded: true },
  { arch: 'glm4_moe', fp8: { dtype: 'F8_E5M2', scales: 'tensor' }, sharded: false },
  { arch: 'qwen3_next', fp8: { dtype: 'F8_E4M3', scales: 'row', scaleDtype: 'BF16' }, sharded: false },
  { arch: 'ernie4_5_moe', sharded: true },
  // transposed stacks ([E, d, 2f] gate columns first, [E, f, d]), as Qwen3-VL-MoE stores them
  { arch: 'qwen3_vl_moe', sharded: false, transposed: true },
  { arch: 'mixtral', fp8: { dtype: 'F8_E4M3', scales: 'block', block: [4, 3] }, sharded: false, transposed: true },
  { arch: 'qwen3_5_moe', fp8: { dtype: 'F8_E5M2', scales: 'tensor' }, sharded: true, transposed: true },
];

for (const c of FUSED_CASES) {
  const stores = c.fp8 ? `, ${c.fp8.dtype} with ${c.fp8.scales} scales stacked per expert` : '';
  const layout = c.transposed ? 'transposed stacks' : 'transformers v5 layout';
  test(`fused experts (${layout}) ${c.arch}${stores}: each expert read as its own tensors were`, () => {
    const fusedExperts = c.transposed ? ('transposed' as const) : true;
    const opts = { ...SMALL, numExperts: 5, fp8: c.fp8, sharded: c.sharded, seed: 9, fusedExperts };
    const tiny = writeTinyCheckpoint(tmpDir(), c.arch, opts);
    const ckpt = openCheckpoint(tiny.dir);
    try {
      const spec = resolveMoELayer(ckpt.config, 1, ckpt);
      const names = ckpt.tensorNames();
      assert.ok(names.includes(`${layerPrefix(c.arch, 1)}.mlp.experts.gate_up_proj`), names.join(' '));
      assert.not.ok(names.includes(spec.names.expert(0).w1));
      const layer = loadMoELayerWeights(ckpt, spec);
      assert.is(layer.expertLayout, c.transposed ? 'fused, transposed' : 'fused');
      assert.equal(ckpt.info(spec.names.fused.gateUp).shape, c.transposed ? [5, 8, 12] : [5, 12, 8]);
      assert.equal(Array.from(layer.gateWeight), Array.from(tiny.tensors[spec.names.gate].data));
      if (spec.requiresBias) assert.equal(Array.from(layer.bias!), Array.from(tiny.tensors[spec.names.bias!].data));
      for (const e of [4, 0, 2]) {
        const expert = layer.expert(e);
        const own = spec.names.expert(e);
        assert.equal(Array.from(expert.w1), Array.from(tiny.tensors[own.w1].data), own.w1);
        assert.equal(Array.from(expert.w3), Array.from(tiny.tensors[own.w3].data), own.w3);
        assert.equal(Array.from(expert.w2), Array.from(tiny.tensors[own.w2].data), own.w2);
      }
      // the whole stack reads the same as its slices
      const all = ckpt.readFloat32(spec.names.fused.down);
      assert.equal(Array.from(all.subarray(3 * 48, 4 * 48)), Array.from(ckpt.readSlice(spec.names.fused.down, 3)));
      throwsWith(
        () => ckpt.readSlice(spec.names.fused.down, 5),
        ModelLoadError,
        c.transposed
          ? /slice of tensor .*down_proj" \(shape \[5,6,8\]\): got 5, expected an integer in \[0, 4\]/
          : /slice of tensor .*down_proj" \(shape \[5,8,6\]\): got 5, expected an integer in \[0, 4\]/,
      );
    } finally {
      ckpt.close();
    }
  });
}

test('transposed stacks, written out by hand: gate columns then up columns, down [f, d], for d != f and d == f', () => {
  for (const [d, f] of [
    [2, 1],
    [2, 2],
  ]) {
    const dir = tmpDir();
    const config = {
      architectures: ['Qwen3VLMoeForConditionalGeneration'],
      model_type: 'qwen3_vl_moe',
      text_config: {
        hidden_size: d,
        moe_intermediate_size: f,
        num_experts: 1,
        num_experts_per_tok: 1,
        num_hidden_layers: 1,
      },
    };
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    // gate_up[0][k][j]: value 10 k + j (j < f gate, j >= f up); down[0][j][k]: 100 + 10 j + k
    const gateUp = Float32Array.from({ length: d * 2 * f }, (_, i) => 10 * Math.floor(i / (2 * f)) + (i % (2 * f)));
    const down = Float32Array.from({ length: f * d }, (_, i) => 100 + 10 * Math.floor(i / d) + (i % d));
    const p = 'model.language_model.layers.0.mlp';
    writeSafetensors(path.join(dir, 'model.safetensors'), {
      [`${p}.gate.weight`]: { dtype: 'F32', shape: [1, d], data: new Float32Array(d).fill(1) },
      [`${p}.experts.gate_up_proj`]: { dtype: 'F32', shape: [1, d, 2 * f], data: gateUp },
      [`${p}.experts.down_proj`]: { dtype: 'F32', shape: [1, f, d], data: down },
    });
    const ckpt = openCheckpoint(dir);
    const layer = loadMoELayerWeights(ckpt, resolveMoELayer(ckpt.config, 0, ckpt));
    assert.is(layer.expertLayout, 'fused, transposed', `d = ${d}, f = ${f}`);
    const { w1, w3, w2 } = layer.expert(0);
    // w1[j][k] = gate_up[k][j], w3[j][k] = gate_up[k][f + j], w2[k][j] = down[j][k]
    const expect = (at: (j: number, k: number) => number) =>
      Array.from({ length: f * d }, (_, i) => at(Math.floor(i / d), i % d));
    assert.equal(
      Array.from(w1),
      expect((j, k) => 10 * k + j),
      `w1, d = ${d}, f = ${f}`,
    );
    assert.equal(
      Array.from(w3),
      expect((j, k) => 10 * k + f + j),
      `w3, d = ${d}, f = ${f}`,
    );
    assert.equal(
      Array.from(w2),
      Array.from({ length: d * f }, (_, i) => 100 + 10 * (i % f) + Math.floor(i / f)),
      `w2, d = ${d}, f = ${f}`,
    );
    ckpt.close();
  }
});

test('ERNIE 4.5: a squeezed [E] bias is read as the [1, E] one', () => {
  const tiny = writeTinyCheckpoint(tmpDir(), 'ernie4_5_moe', SMALL);
  const name = 'model.layers.0.mlp.moe_statics.e_score_correction_bias';
  const dir = tmpDir();
  const tensors = storedTensors(tiny.dir);
  tensors[name] = { ...tensors[name], shape: [4] };
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(tiny.config));
  const ckpt = openCheckpoint(dir);
  const layer = loadMoELayerWeights(ckpt, resolveMoELayer(ckpt.config, 0));
  assert.equal(Array.from(layer.bias!), Array.from(tiny.tensors[name].data));
  tensors[name] = { ...tensors[name], shape: [2, 2] };
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  const again = openCheckpoint(dir);
  throwsWith(
    () => loadMoELayerWeights(again, resolveMoELayer(again.config, 0)),
    ModelLoadError,
    /has shape \[2, 2\], expected \[1, 4\]/,
  );
  again.close();
  ckpt.close();
});

test('fused experts: a stack whose shape disagrees with the config is refused before reading', () => {
  const tiny = writeTinyCheckpoint(tmpDir(), 'olmoe', { ...SMALL, fusedExperts: true });
  const ckpt = openCheckpoint(tiny.dir);
  throwsWith(
    () => loadMoELayerWeights(ckpt, resolveMoELayer({ ...tiny.config, intermediate_size: 5 }, 0)),
    ModelLoadError,
    /experts\.gate_up_proj" has shape \[4, 12, 8\], expected \[4, 10, 8\] from config/,
  );
  throwsWith(
    () => loadMoELayerWeights(ckpt, resolveMoELayer({ ...tiny.config, num_experts: 3 }, 0)),
    ModelLoadError,
    /has shape \[4, 8\], expected \[3, 8\]/,
  );
  ckpt.close();
  // a pair of stacks in different orientations is refused by shape (the down stack decides which is expected)
  const transposed = (edit: (t: Record<string, SafetensorsTensorInput>) => void, arch: TinyArch = 'olmoe') => {
    const from = writeTinyCheckpoint(tmpDir(), arch, { ...SMALL, fusedExperts: true, seed: 3 });
    const dir = tmpDir();
    const tensors = storedTensors(from.dir);
    edit(tensors);
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(from.config));
    return openCheckpoint(dir);
  };
  const refuse = (c: ReturnType<typeof openCheckpoint>, message: RegExp) => {
    throwsWith(() => loadMoELayerWeights(c, resolveMoELayer(c.config, 0)), ModelLoadError, message, [c.dir]);
    c.close();
  };
  const up = 'model.layers.0.mlp.experts.gate_up_proj';
  const down = 'model.layers.0.mlp.experts.down_proj';
  refuse(
    transposed((t) => (t[up] = { ...t[up], shape: [4, 8, 12] })),
    /gate_up_proj" has shape \[4, 8, 12\], expected \[4, 12, 8\]/,
  );
  refuse(
    transposed((t) => (t[down] = { ...t[down], shape: [4, 6, 8] })),
    /gate_up_proj" has shape \[4, 12, 8\], expected \[4, 8, 12\]/,
  );
  // a fused Mixtral's router moved to mlp with its experts; one left under block_sparse_moe is not found
  refuse(
    transposed((t) => {
      t['model.layers.0.block_sparse_moe.gate.weight'] = t['model.layers.0.mlp.gate.weight'];
      delete t['model.layers.0.mlp.gate.weight'];
    }, 'mixtral'),
    /tensor "model\.layers\.0\.mlp\.gate\.weight" is missing/,
  );
});

test('fused FP8 experts: block scales that could straddle the gate and up rows are refused; 2-D block scales are not sliced', () => {
  const tiny = writeTinyCheckpoint(tmpDir(), 'deepseek_v3', {
    ...SMALL,
    fusedExperts: true,
    fp8: { dtype: 'F8_E4M3', scales: 'block', block: [4, 3] }, // (f = 6)
  });
  const ckpt = openCheckpoint(tiny.dir);
  throwsWith(
    () => loadMoELayerWeights(ckpt, resolveMoELayer(ckpt.config, 0)),
    ModelLoadError,
    /block-scaled "model\.layers\.0\.mlp\.experts\.gate_up_proj" with f = 6, not a multiple of the block's 4 rows/,
    ['layer 0'],
  );
  // transposed stacks: per-row scales would scale input rows; block scales must not straddle gate and up columns
  for (const [scales, block, message] of [
    ['row', undefined, /stored transposed with per-row scales; expected per-tensor or block scales/],
    ['block', [3, 4], /with f = 6, not a multiple of the block's 4 columns/],
  ] as const) {
    const t = writeTinyCheckpoint(tmpDir(), 'qwen3_vl_moe', {
      ...SMALL,
      fusedExperts: 'transposed',
      fp8: { dtype: 'F8_E4M3', scales, block: block && [...block] },
    });
    const c = openCheckpoint(t.dir);
    throwsWith(() => loadMoELayerWeights(c, resolveMoELayer(c.config, 1, c)), ModelLoadError, message, ['layer 1']);
    c.close();
  }
  const shared = 'model.layers.0.mlp.shared_experts.gate_proj.weight';
  assert.is(ckpt.scalingOf(shared)?.kind, 'block');
  throwsWith(() => ckpt.readSlice(shared, 1), ModelLoadError, /has block scales; read it whole/);
  ckpt.close();
});

/** The tensors of a single-file checkpoint as stored (FP8 numbers unscaled), for rewriting. */
function storedTensors(dir: string): Record<string, SafetensorsTensorInput> {
  const st = openSafetensors(path.join(dir, 'model.safetensors'));
  try {
    return Object.fromEntries(
      st.tensorNames().map((name) => {
        const { dtype, shape } = st.info(name);
        return [name, { dtype: dtype as SafetensorsTensorInput['dtype'], shape, data: st.readFloat32(name) }];
      }),
    );
  } finally {
    st.close();
  }
}

test('FP8: missing, doubled, misshapen or non-float scales, non-finite values and bad block sizes are refused', () => {
  const tiny = writeTinyCheckpoint(tmpDir(), 'deepseek_v3', {
    ...SMALL,
    fp8: { dtype: 'F8_E4M3', scales: 'block', block: [4, 3] },
  });
  const w1 = 'model.layers.0.mlp.experts.1.gate_proj.weight';
  const w2 = 'model.layers.0.mlp.experts.1.down_proj.weight';
  const variant = (edit: (t: Record<string, SafetensorsTensorInput>) => void, config = tiny.config) => {
    const dir = tmpDir();
    const tensors = storedTensors(tiny.dir);
    edit(tensors);
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    return openCheckpoint(dir);
  };
  const upFront = (ckpt: ReturnType<typeof openCheckpoint>, message: RegExp) => {
    throwsWith(() => loadMoELayerWeights(ckpt, resolveMoELayer(ckpt.config, 0)), ModelLoadError, message, [
      ckpt.dir,
      'layer 0',
    ]);
    ckpt.close();
  };
  upFront(
    variant((t) => delete t[`${w1}_scale_inv`]),
    /FP8 tensor ".*experts\.1\.gate_proj\.weight" \(shape \[6, 8\]\) has no scale tensor/,
  );
  upFront(
    variant((t) => (t[`${w1}_scale`] = t[`${w1}_scale_inv`])),
    /gate_proj\.weight" \(shape \[6, 8\]\) has two scale tensors/,
  );
  upFront(
    variant((t) => (t[`${w1}_scale_inv`] = { dtype: 'F32', shape: [1, 3], data: new Float32Array(3).fill(1) })),
    /scale ".*gate_proj\.weight_scale_inv" has shape \[1, 3\], expected \[2, 3\] \(blocks of 4 x 3/,
  );
  upFront(
    variant((t) => (t[`${w1}_scale_inv`] = { ...t[`${w1}_scale_inv`], dtype: 'F8_E4M3' })),
    /weight_scale_inv" has dtype F8_E4M3, expected F32, BF16 or F16/,
  );
  upFront(
    variant(() => {}, { ...tiny.config, quantization_config: { quant_method: 'fp8', weight_block_size: [0, 128] } }),
    /quantization_config\.weight_block_size is \[0,128\], expected two integers in \[1, 2\^20\]/,
  );
  // the default block of 128 x 128 does not fit scales written for 4 x 3: the message says what to set
  upFront(
    variant(() => {}, { ...tiny.config, quantization_config: { quant_method: 'fp8' } }),
    /has shape \[2, 3\], expected \[1, 1\] \(blocks of 128 x 128; set quantization_config\.weight_block_size/,
  );
  // values are checked as each expert is read
  const whenRead = (ckpt: ReturnType<typeof openCheckpoint>, message: RegExp) => {
    const layer = loadMoELayerWeights(ckpt, resolveMoELayer(ckpt.config, 0));
    layer.expert(0);
    throwsWith(() => layer.expert(1), ModelLoadError, message, [ckpt.dir, w2]);
    ckpt.close();
  };
  whenRead(
    variant((t) => t[`${w2}_scale_inv`].data.fill(NaN, 1, 2)),
    /scale ".*down_proj\.weight_scale_inv" holds NaN at element 1/,
  );
  whenRead(
    variant((t) => (t[w2].data[7] = NaN)),
    /element 7 is NaN once scaled \(a NaN or infinity code, or an overflow\); expected finite weights/,
  );
  whenRead(
    variant((t) => t[`${w2}_scale_inv`].data.fill(1e38)),
    /element \d+ is -?Infinity once scaled/,
  );
});

test.run();
