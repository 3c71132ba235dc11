/**
 * Llama 4 layers from Hugging Face checkpoints written here (Llama4ForConditionalGeneration with its text_config,
 * under `language_model.model.layers` as on the Hub, and under `model.language_model.layers`, which the loader takes
 * too, and Llama4ForCausalLM under `model.layers`), against a float64 forward written here from transformers' Llama4TextMoe: the router's top-k
 * logits each weighted by its sigmoid, the token times that weight fed to the expert (gate_up_proj [E, d, 2f]
 * multiplied from the right, gate then up halves, down_proj [E, f, d]), plus the shared expert on the token as it is.
 * fp32 layers to 1e-5, bf16 to 1e-2; indices exactly.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ModelLoadError, MoELayer } from '../lib';
import { writeSafetensors, type SafetensorsTensorInput } from '../lib/models/safetensors';
import { roundToDtype } from './helpers/checkpoint';
import { relativeError } from './helpers/compare';
import { throwsWith } from './helpers/errors';
import { freshSeed, randn } from './helpers/random';
import { tempDirs } from './helpers/tmp';

const SEED = freshSeed();
console.log(`llama4.test seed ${SEED}`);
const tmpDir = tempDirs('moe-llama4-');

interface Llama4Layer {
  router: Float32Array; // [E, d]
  gateUp: Float32Array[]; // per expert [d, 2f]
  down: Float32Array[]; // per expert [f, d]
  shared: { gate: Float32Array; up: Float32Array; down: Float32Array }; // [f, d], [f, d], [d, f]
}

interface Llama4Model {
  dir: string;
  d: number;
  f: number;
  E: number;
  k: number;
  layers: Map<number, Llama4Layer>;
}

/** A checkpoint of `layers` decoder layers whose MoE ones (`moe`) have weights; `prefix(layer)` places them. */
function writeLlama4(opts: {
  config: Record<string, unknown>;
  nested: boolean;
  prefix: (layer: number) => string;
  moe: number[];
  d: number;
  f: number;
  E: number;
  k: number;
  seed: number;
}): Llama4Model {
  const { d, f, E, k } = opts;
  let seed = opts.seed;
  const dir = tmpDir();
  const text = { hidden_size: d, intermediate_size: f, num_local_experts: E, num_experts_per_tok: k, ...opts.config };
  const config = opts.nested
    ? { architectures: ['Llama4ForConditionalGeneration'], model_type: 'llama4', text_config: text }
    : { architectures: ['Llama4ForCausalLM'], model_type: 'llama4_text', ...text };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const tensors: Record<string, SafetensorsTensorInput> = {};
  const layers = new Map<number, Llama4Layer>();
  const bf16 = (n: number, scale: number) => roundToDtype(randn(n, ++seed, scale), 'BF16');
  for (const layer of opts.moe) {
    const p = `${opts.prefix(layer)}.feed_forward`;
    const L: Llama4Layer = {
      router: bf16(E * d, 0.5),
      gateUp: Array.from({ length: E }, () => bf16(d * 2 * f, 1 / Math.sqrt(d))),
      down: Array.from({ length: E }, () => bf16(f * d, 1 / Math.sqrt(f))),
      shared: {
        gate: bf16(f * d, 1 / Math.sqrt(d)),
        up: bf16(f * d, 1 / Math.sqrt(d)),
        down: bf16(d * f, 1 / Math.sqrt(f)),
      },
    };
    const stack = (parts: Float32Array[]) => {
      const out = new Float32Array(parts.reduce((n, a) => n + a.length, 0));
      parts.forEach((a, i) => out.set(a, i * a.length));
      return out;
    };
    tensors[`${p}.router.weight`] = { dtype: 'BF16', shape: [E, d], data: L.router };
    tensors[`${p}.experts.gate_up_proj`] = { dtype: 'BF16', shape: [E, d, 2 * f], data: stack(L.gateUp) };
    tensors[`${p}.experts.down_proj`] = { dtype: 'BF16', shape: [E, f, d], data: stack(L.down) };
    tensors[`${p}.shared_expert.gate_proj.weight`] = { dtype: 'BF16', shape: [f, d], data: L.shared.gate };
    tensors[`${p}.shared_expert.up_proj.weight`] = { dtype: 'BF16', shape: [f, d], data: L.shared.up };
    tensors[`${p}.shared_expert.down_proj.weight`] = { dtype: 'BF16', shape: [d, f], data: L.shared.down };
    layers.set(layer, L);
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return { dir, d, f, E, k, layers };
}

const silu = (v: number) => v / (1 + Math.exp(-v));

/** transformers' Llama4TextMoe in float64: y [T, d] and each token's experts. */
function llama4Forward(m: Llama4Model, layer: number, x: ArrayLike<number>, T: number) {
  const { d, f, E, k } = m;
  const L = m.layers.get(layer)!;
  const y = new Float64Array(T * d);
  const indices: number[] = [];
  for (let t = 0; t < T; t++) {
    const row = Array.from({ length: d }, (_, i) => x[t * d + i]);
    const logits = Array.from({ length: E }, (_, e) => row.reduce((s, v, i) => s + v * L.router[e * d + i], 0));
    // (float32 logits, as the layer computes them; ties to the lower index)
    const top = logits
      .map((v, e) => [Math.fround(v), e])
      .sort((a, b) => b[0] - a[0] || a[1] - b[1])
      .slice(0, k);
    for (const [logit, e] of top) {
      indices.push(e);
      // the weight on the input, rounded to float32 as the layer's rows are
      const routedIn = row.map((v) => Math.fround(v * Math.fround(1 / (1 + Math.exp(-logit)))));
      const h = new Float64Array(f);
      for (let j = 0; j < f; j++) {
        let g = 0;
        let u = 0;
        for (let i = 0; i < d; i++) {
          g += routedIn[i] * L.gateUp[e][i * 2 * f + j];
          u += routedIn[i] * L.gateUp[e][i * 2 * f + f + j];
        }
        h[j] = u * silu(g);
      }
      for (let o = 0; o < d; o++) for (let j = 0; j < f; j++) y[t * d + o] += h[j] * L.down[e][j * d + o];
    }
    const h = new Float64Array(f);
    for (let j = 0; j < f; j++) {
      let g = 0;
      let u = 0;
      for (let i = 0; i < d; i++) {
        g += row[i] * L.shared.gate[j * d + i];
        u += row[i] * L.shared.up[j * d + i];
      }
      h[j] = silu(g) * u;
    }
    for (let o = 0; o < d; o++) for (let j = 0; j < f; j++) y[t * d + o] += h[j] * L.shared.down[o * f + j];
  }
  return { y, indices };
}

const LAYOUTS = [
  {
    name: 'Llama4ForConditionalGeneration, as on the Hub (language_model.model.layers)',
    nested: true,
    prefix: (l: number) => `language_model.model.layers.${l}`,
    config: { num_hidden_layers: 4, interleave_moe_layer_step: 2 },
    moe: [1, 3],
    dense: 2,
    k: 1,
  },
  {
    name: 'Llama4ForConditionalGeneration under model.language_model.layers, moe_layers over the step',
    nested: true,
    prefix: (l: number) => `model.language_model.layers.${l}`,
    // (a listed layer that the step would call dense, and the other way round: the list wins)
    config: { num_hidden_layers: 3, moe_layers: [0, 2], interleave_moe_layer_step: 2 },
    moe: [0, 2],
    dense: 1,
    k: 1,
  },
  {
    name: 'Llama4ForCausalLM (model.layers), moe_layers listed, top-2',
    nested: false,
    prefix: (l: number) => `model.layers.${l}`,
    config: { num_hidden_layers: 3, moe_layers: [0, 2] },
    moe: [0, 2],
    dense: 1,
    k: 2,
  },
];

for (const c of LAYOUTS) {
  test(`Llama 4 ${c.name}: fromPretrained matches transformers' forward (fp32 1e-5, bf16 1e-2)`, () => {
    const m = writeLlama4({ ...c, d: 48, f: 40, E: 5, seed: SEED });
    const layer = c.moe[c.moe.length - 1];
    const T = 11;
    const x = randn(T * m.d, SEED + 1);
    const ref = llama4Forward(m, layer, x, T);
    for (const [dtype, tol] of [
      ['fp32', 1e-5],
      ['bf16', 1e-2],
    ] as const) {
      const moe = MoELayer.fromPretrained(m.dir, { layer, dtype });
      try {
        assert.is(moe.weightInputs, true);
        assert.is(moe.hasSharedExpert, true);
        const { output, routing } = moe.forward(x);
        assert.equal(Array.from(routing.indices), ref.indices, `${dtype} indices`);
        const err = relativeError(output, ref.y);
        assert.ok(err < tol, `${c.name} ${dtype}: relative error ${err} (seed ${SEED})`);
      } finally {
        moe.dispose();
      }
    }
    if (c.dense !== undefined)
      throwsWith(
        () => MoELayer.fromPretrained(m.dir, { layer: c.dense! }),
        ModelLoadError,
        c.config.moe_layers === undefined
          ? /layer 2 is a dense MLP layer.*interleave_moe_layer_step \(2\)/
          : /layer 1 is a dense .*moe_layers/,
      );
  });
}

test('a dense Llama 4 conversion (moe_layers [], interleave_moe_layer_step 0) has dense layers, not a config error', () => {
  const m = writeLlama4({
    nested: true,
    prefix: (l) => `language_model.model.layers.${l}`,
    config: { num_hidden_layers: 2, moe_layers: [], interleave_moe_layer_step: 0 },
    moe: [],
    d: 16,
    f: 8,
    E: 2,
    k: 1,
    seed: SEED + 6,
  });
  throwsWith(
    () => MoELayer.fromPretrained(m.dir, { layer: 1 }),
    ModelLoadError,
    /layer 1 is a dense MLP layer, not an MoE layer: it is not listed in moe_layers/,
  );
});

test('moe-router validate describes a Llama 4 checkpoint and runs a forward', () => {
  const c = LAYOUTS[0];
  const m = writeLlama4({ ...c, d: 32, f: 16, E: 4, seed: SEED + 5 });
  const main = path.join(__dirname, '..', 'lib', 'cli', 'main.ts');
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, 'validate', '--model', m.dir, '--forward'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /routing +sigmoid topk k=1, normalize false, scale 1/);
  assert.match(
    r.stdout,
    /experts +4 x SwiGLU \(the routing weight on its input\) d=32 f=16, top-1, shared expert f=16; dtype BF16 \(fused, transposed experts\)/,
  );
  assert.match(r.stdout, /layers +2 MoE, 2 dense of 4/);
  assert.match(r.stdout, /forward .* output finite/);
});

test.run();
