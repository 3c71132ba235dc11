/**
 * gpt-oss layers from Hugging Face checkpoints written here in both of its layouts — bf16 stacks multiplied from the
 * right (gate_up_proj [E, d, 2f] with gate and up outputs interleaved, down_proj [E, f, d]) and OpenAI's MXFP4
 * release (U8 `_blocks` [E, out, in/32, 16] and E8M0 `_scales` [E, out, in/32]) — against a float64 forward written
 * here from transformers' GptOssMLP (router Linear with bias, top-k of the logits, softmax over them, each expert's
 * gate_up = x·W + b, gate = even and up = odd columns, the clamped SwiGLU, (h·W_down + b)·weight). It decodes
 * E2M1 from its bit fields, not from the loader's table. fp32 layers to 1e-5, bf16 to 1e-2; indices exactly.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ModelLoadError, MoELayer } from '../lib';
import { writeSafetensors, type SafetensorsBytesInput, type SafetensorsTensorInput } from '../lib/models/safetensors';
import { dequantizeMxfp4, mxfp4ToE4m3 } from '../lib/models/gpt-oss';
import { f8BitsToNumber } from '../lib/models/float8';
import { backendInfo } from '../lib';
import { roundToDtype } from './helpers/checkpoint';
import { relativeError } from './helpers/compare';
import { throwsWith } from './helpers/errors';
import { freshSeed, randn } from './helpers/random';
import { tempDirs } from './helpers/tmp';

const SEED = freshSeed();
console.log(`gpt-oss.test seed ${SEED}`);
const tmpDir = tempDirs('moe-gpt-oss-');

/** E2M1 from its fields: sign, exponent (2 bits, bias 1), mantissa (1 bit); exponent 0 is subnormal. */
function e2m1(nibble: number): number {
  const sign = nibble & 8 ? -1 : 1;
  const exp = (nibble >> 1) & 3;
  const man = nibble & 1;
  return sign * (exp === 0 ? man * 0.5 : (1 + man / 2) * 2 ** (exp - 1));
}

/** A deterministic byte stream (xorshift32), for the MXFP4 codes. */
function bytes(n: number, seed: number, lo = 0, hi = 255): Uint8Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  return Uint8Array.from({ length: n }, () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return lo + (s % (hi - lo + 1));
  });
}

interface GptOssModel {
  dir: string;
  d: number;
  f: number;
  E: number;
  k: number;
  limit: number;
  /** Per layer: router [E, d] and bias [E]; per expert W_gu[i][c] [d, 2f], b_gu [2f], W_down[j][o] [f, d], b_down [d]. */
  layers: {
    router: Float32Array;
    routerBias: Float32Array;
    gateUp: Float64Array[];
    gateUpBias: Float32Array[];
    down: Float64Array[];
    downBias: Float32Array[];
  }[];
}

function writeGptOss(opts: {
  mxfp4: boolean;
  d: number;
  f: number;
  E: number;
  k: number;
  limit?: number;
  seed: number;
  /** Changes the tensors before they are written (the error tests). */
  edit?: (tensors: Record<string, SafetensorsTensorInput | SafetensorsBytesInput>) => void;
}) {
  const { d, f, E, k, mxfp4 } = opts;
  let seed = opts.seed;
  const dir = tmpDir();
  const config: Record<string, unknown> = {
    architectures: ['GptOssForCausalLM'],
    model_type: 'gpt_oss',
    hidden_size: d,
    intermediate_size: f,
    num_local_experts: E,
    num_experts_per_tok: k,
    experts_per_token: k,
    num_hidden_layers: 2,
    torch_dtype: 'bfloat16',
  };
  if (opts.limit !== undefined) config.swiglu_limit = opts.limit;
  if (mxfp4)
    config.quantization_config = { quant_method: 'mxfp4', modules_to_not_convert: ['model.layers.*.mlp.router'] };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const tensors: Record<string, SafetensorsTensorInput | SafetensorsBytesInput> = {};
  const model: GptOssModel = { dir, d, f, E, k, limit: opts.limit ?? 7, layers: [] };
  for (let layer = 0; layer < 2; layer++) {
    const p = `model.layers.${layer}.mlp`;
    const bf16 = (n: number, scale: number) => roundToDtype(randn(n, ++seed, scale), 'BF16');
    const router = bf16(E * d, 0.3);
    const routerBias = bf16(E, 0.3);
    const gateUpBias = Array.from({ length: E }, () => bf16(2 * f, 0.3));
    const downBias = Array.from({ length: E }, () => bf16(d, 0.3));
    tensors[`${p}.router.weight`] = { dtype: 'BF16', shape: [E, d], data: router };
    tensors[`${p}.router.bias`] = { dtype: 'BF16', shape: [E], data: routerBias };
    tensors[`${p}.experts.gate_up_proj_bias`] = { dtype: 'BF16', shape: [E, 2 * f], data: concat(gateUpBias) };
    tensors[`${p}.experts.down_proj_bias`] = { dtype: 'BF16', shape: [E, d], data: concat(downBias) };
    let gateUp: Float64Array[];
    let down: Float64Array[];
    if (!mxfp4) {
      // [d, 2f] and [f, d] per expert, as multiplied from the right
      const gu = Array.from({ length: E }, () => bf16(d * 2 * f, 1 / Math.sqrt(d)));
      const dn = Array.from({ length: E }, () => bf16(f * d, 1 / Math.sqrt(f)));
      tensors[`${p}.experts.gate_up_proj`] = { dtype: 'BF16', shape: [E, d, 2 * f], data: concat(gu) };
      tensors[`${p}.experts.down_proj`] = { dtype: 'BF16', shape: [E, f, d], data: concat(dn) };
      gateUp = gu.map((a) => Float64Array.from(a));
      down = dn.map((a) => Float64Array.from(a));
    } else {
      // out-major codes: gate_up [2f rows of d inputs], down [d rows of f inputs]; scales 2^-6 .. 2^-1
      const stack = (name: string, rows: number, inputs: number) => {
        const blocks = bytes(E * rows * (inputs / 2), ++seed);
        const scales = bytes(E * rows * (inputs / 32), ++seed, 121, 126);
        tensors[`${name}_blocks`] = { dtype: 'U8', shape: [E, rows, inputs / 32, 16], data: blocks };
        tensors[`${name}_scales`] = { dtype: 'U8', shape: [E, rows, inputs / 32], data: scales };
        // expert e's [inputs, rows] as multiplied from the right: value (r, i) at [i][r]
        return Array.from({ length: E }, (_, e) => {
          const m = new Float64Array(inputs * rows);
          for (let r = 0; r < rows; r++)
            for (let i = 0; i < inputs; i++) {
              const at = (e * rows + r) * inputs + i;
              const byte = blocks[at >> 1];
              m[i * rows + r] = e2m1(i % 2 === 0 ? byte & 15 : byte >> 4) * 2 ** (scales[at >> 5] - 127);
            }
          return m;
        });
      };
      gateUp = stack(`${p}.experts.gate_up_proj`, 2 * f, d);
      down = stack(`${p}.experts.down_proj`, d, f);
    }
    model.layers.push({ router, routerBias, gateUp, gateUpBias, down, downBias });
  }
  opts.edit?.(tensors);
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return model;
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** transformers' GptOssMLP in float64: y [T, d] and each token's experts. */
function gptOssForward(m: GptOssModel, layer: number, x: ArrayLike<number>, T: number) {
  const { d, f, E, k, limit } = m;
  const L = m.layers[layer];
  const y = new Float64Array(T * d);
  const indices: number[] = [];
  for (let t = 0; t < T; t++) {
    const logits = Array.from({ length: E }, (_, e) => {
      let s = L.routerBias[e];
      for (let i = 0; i < d; i++) s += x[t * d + i] * L.router[e * d + i];
      return s;
    });
    // (float32 logits, as the layer computes them; ties to the lower index)
    const order = logits
      .map((v, e) => [Math.fround(v), e])
      .sort((a, b) => b[0] - a[0] || a[1] - b[1])
      .slice(0, k);
    const top = order[0][0];
    const sum = order.reduce((s, [v]) => s + Math.exp(v - top), 0);
    for (const [v, e] of order) {
      indices.push(e);
      const weight = Math.exp(v - top) / sum;
      const h = new Float64Array(f);
      for (let j = 0; j < f; j++) {
        let g = L.gateUpBias[e][2 * j];
        let u = L.gateUpBias[e][2 * j + 1];
        for (let i = 0; i < d; i++) {
          g += x[t * d + i] * L.gateUp[e][i * 2 * f + 2 * j];
          u += x[t * d + i] * L.gateUp[e][i * 2 * f + 2 * j + 1];
        }
        g = Math.min(g, limit);
        u = Math.min(Math.max(u, -limit), limit);
        h[j] = (u + 1) * (g / (1 + Math.exp(-1.702 * g)));
      }
      for (let o = 0; o < d; o++) {
        let s = L.downBias[e][o];
        for (let j = 0; j < f; j++) s += h[j] * L.down[e][j * d + o];
        y[t * d + o] += weight * s;
      }
    }
  }
  return { y, indices };
}

for (const mxfp4 of [false, true]) {
  const layout = mxfp4 ? 'MXFP4 experts' : 'bf16 stacks';
  test(`gpt-oss ${layout}: fromPretrained matches transformers' forward (fp32 1e-5, bf16 1e-2; indices exactly)`, () => {
    // limit 1.5 (config swiglu_limit, which transformers' MXFP4 experts and OpenAI's code read; its eager experts
    // hard-code the released 7): a good share of the pre-activations is clamped, so both sides of each clamp count
    const m = writeGptOss({ mxfp4, d: 64, f: 32, E: 6, k: 3, limit: 1.5, seed: SEED });
    const T = 9;
    const x = randn(T * m.d, SEED + 1);
    const ref = gptOssForward(m, 1, x, T);
    for (const [dtype, tol] of [
      ['fp32', 1e-5],
      ['bf16', 1e-2],
    ] as const) {
      const layer = MoELayer.fromPretrained(m.dir, { layer: 1, dtype });
      try {
        assert.equal(layer.activation, { kind: 'gptOss', alpha: 1.702, limit: 1.5 });
        const { output, routing } = layer.forward(x);
        assert.equal(Array.from(routing.indices), ref.indices, `${dtype} indices`);
        const err = relativeError(output, ref.y);
        assert.ok(err < tol, `${layout} ${dtype}: relative error ${err} (seed ${SEED})`);
      } finally {
        layer.dispose();
      }
    }
    // the other layer is another layer's weights, and swiglu_limit defaults to 7
    const m7 = writeGptOss({ mxfp4, d: 32, f: 32, E: 4, k: 2, seed: SEED + 2 });
    const layer0 = MoELayer.fromPretrained(m7.dir, { layer: 0 });
    const x0 = randn(5 * 32, SEED + 3);
    assert.equal(layer0.activation, { kind: 'gptOss', alpha: 1.702, limit: 7 });
    const err0 = relativeError(layer0.forward(x0).output, gptOssForward(m7, 0, x0, 5).y);
    assert.ok(err0 < 1e-5, `${layout} layer 0: relative error ${err0}`);
    layer0.dispose();
  });
}

test('MXFP4 decoding: every code and the scale range, against the bit fields; NaN scales and overflow refused', () => {
  // one row of 32 inputs holding all 16 codes twice (low nibble first), scale 2^(e - 127) for several e
  const blocks = Uint8Array.from({ length: 16 }, (_, b) => (((2 * b + 1) % 16) << 4) | ((2 * b) % 16));
  for (const e of [0, 1, 100, 127, 130, 252]) {
    const out = dequantizeMxfp4(blocks, Uint8Array.of(e), 1, 32, 'here');
    out.forEach((v, i) => {
      const code = i % 2 === 0 ? blocks[i >> 1] & 15 : blocks[i >> 1] >> 4;
      assert.ok(Object.is(v, Math.fround(e2m1(code) * 2 ** (e - 127))), `code ${code} scale ${e}: ${v}`);
    });
  }
  throwsWith(
    () => dequantizeMxfp4(blocks, Uint8Array.of(255), 1, 32, 'here'),
    ModelLoadError,
    /here: scale 0 is the E8M0 NaN/,
  );
  // 4 x 2^126 = 2^128 does not fit float32
  throwsWith(
    () => dequantizeMxfp4(blocks, Uint8Array.of(253), 1, 32, 'here'),
    ModelLoadError,
    /here: element \d+ is (-)?Infinity in float32/,
  );
  throwsWith(
    () => dequantizeMxfp4(blocks, Uint8Array.of(1, 2), 1, 32, 'here'),
    ModelLoadError,
    /needs 16 block bytes and 1 scales/,
  );
});

test("MXFP4 as an 'fp8' layer's E4M3: the same values exactly, a power-of-two scale per 128 columns", () => {
  // 3 rows of 288 inputs (9 groups: two whole blocks of 128 and a last one of 32), group scales spread over 14
  // binades within each block, a group of zeros with a large scale (it must not set the block's scale), and -0
  const [rows, cols] = [3, 288];
  const groups = cols / 32;
  const blocks = bytes((rows * cols) / 2, SEED + 40);
  const scales = bytes(rows * groups, SEED + 41, 110, 124);
  scales[0] = 110;
  scales[1] = 124; // 14 binades above group 0, in the same block
  blocks.fill(0, 16 * 2, 16 * 3); // group 2 all zeros...
  scales[2] = 200; // ...with a scale that would otherwise make the block's
  blocks[16 * 3] = 0x88; // -0, -0
  const q = mxfp4ToE4m3(blocks, scales, rows, cols, 'here');
  assert.ok(q, 'representable: a spread of 14 binades');
  assert.is(q.scales.length, rows * 3);
  const floats = dequantizeMxfp4(blocks, scales, rows, cols, 'here');
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      const v = f8BitsToNumber(q.data[r * cols + c], 'F8_E4M3') * q.scales[r * 3 + (c >> 7)];
      assert.ok(Object.is(v, floats[r * cols + c]), `row ${r} column ${c}: ${v} against ${floats[r * cols + c]}`);
    }
  q.scales.forEach((s) => assert.ok(Math.log2(s) === Math.round(Math.log2(s)), `scale ${s} is a power of two`));
  // 15 binades: the smaller group's values fall below E4M3's subnormals
  const wide = scales.slice();
  wide[0] = 109;
  blocks[0] = 0x11; // (0.5, 0.5: non-zero values in group 0)
  assert.is(mxfp4ToE4m3(blocks, wide, rows, cols, 'here'), null);
  throwsWith(
    () =>
      mxfp4ToE4m3(
        blocks,
        scales.map((v, i) => (i === 4 ? 255 : v)),
        rows,
        cols,
        'here',
      ),
    ModelLoadError,
    /here: scale 4 is the E8M0 NaN/,
  );
});

test("an 'fp8' layer of MXFP4 experts computes with the checkpoint's own values (E4M3, exact)", () => {
  const m = writeGptOss({ mxfp4: true, d: 64, f: 32, E: 6, k: 3, limit: 1.5, seed: SEED + 50 });
  const fp32 = MoELayer.fromPretrained(m.dir, { layer: 1 });
  const fp8 = MoELayer.fromPretrained(m.dir, { layer: 1, dtype: 'fp8' });
  // one token: one row per expert, fp32 activations on every CPU, so only accumulation order differs
  const x1 = randn(m.d, SEED + 51);
  const same = relativeError(fp8.forward(x1).output, fp32.forward(x1).output);
  assert.ok(same < 1e-6, `fp8 against fp32: relative error ${same} (quantized again: a few 1e-2)`);
  // a batch (experts of 8 or more rows run on bf16 pairs where backendInfo().fp8Bf16Rows says so)
  const T = 24;
  const x = randn(T * m.d, SEED + 52);
  const ref = gptOssForward(m, 1, x, T);
  const { output, routing } = fp8.forward(x);
  assert.equal(Array.from(routing.indices), ref.indices);
  const tol = backendInfo().fp8Bf16Rows > 0 ? 1e-2 : 1e-5;
  const err = relativeError(output, ref.y);
  assert.ok(err < tol, `fp8 T=${T}: relative error ${err} (seed ${SEED})`);
  fp32.dispose();
  fp8.dispose();
});

test('gpt-oss checkpoints: missing, misshapen and undecodable tensors are named', () => {
  const base = { d: 32, f: 32, E: 4, k: 2, seed: SEED + 10 };
  const p = 'model.layers.1.mlp';
  const fails = (
    mxfp4: boolean,
    edit: (t: Record<string, SafetensorsTensorInput | SafetensorsBytesInput>) => void,
    pattern: RegExp,
    limit?: number,
  ) => {
    const m = writeGptOss({ ...base, mxfp4, edit, limit });
    throwsWith(() => MoELayer.fromPretrained(m.dir, { layer: 1 }), ModelLoadError, pattern);
  };
  for (const mxfp4 of [false, true]) {
    fails(mxfp4, (t) => delete t[`${p}.experts.down_proj_bias`], /down_proj_bias.*is missing/);
    fails(mxfp4, (t) => delete t[`${p}.router.bias`], /router\.bias.*is missing/);
  }
  fails(
    true,
    (t) => ((t[`${p}.experts.down_proj_scales`].data as Uint8Array)[7] = 255),
    /expert 0 of .*down_proj.*: scale 7 is the E8M0 NaN/,
  );
  fails(
    true,
    (t) =>
      (t[`${p}.experts.gate_up_proj_scales`] = { dtype: 'U8', shape: [4, 64, 2], data: new Uint8Array(4 * 64 * 2) }),
    /gate_up_proj_scales" is U8 \[4, 64, 2\], expected U8 \[4, 64, 1\]/,
  );
  fails(true, (t) => delete t[`${p}.experts.down_proj_blocks`], /down_proj_blocks" is missing/);
  fails(
    false,
    (t) => (t[`${p}.experts.down_proj`] = { dtype: 'BF16', shape: [4, 32, 31], data: new Float32Array(4 * 32 * 31) }),
    /down_proj" has shape \[4, 32, 31\], expected \[4, 32, 32\]/,
  );
  fails(false, () => {}, /"swiglu_limit" is -1, expected a number > 0/, -1);
  fails(false, () => {}, /"swiglu_limit" is 1e\+39, expected a number > 0 \(a finite float32\)/, 1e39);
});

test("top-k from num_experts_per_tok, as transformers reads it; OpenAI's experts_per_token where it is alone", () => {
  const m = writeGptOss({ mxfp4: false, d: 32, f: 32, E: 4, k: 2, seed: SEED + 30 });
  const file = path.join(m.dir, 'config.json');
  const config = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.writeFileSync(file, JSON.stringify({ ...config, experts_per_token: 3 }));
  const two = MoELayer.fromPretrained(m.dir, { layer: 0 });
  assert.is(two.router.config.maxK, 2);
  assert.is(two.staticK, 2);
  two.dispose();
  delete config.num_experts_per_tok;
  fs.writeFileSync(file, JSON.stringify({ ...config, experts_per_token: 3 }));
  const three = MoELayer.fromPretrained(m.dir, { layer: 0 });
  assert.is(three.router.config.maxK, 3);
  assert.is(three.staticK, 3);
  three.dispose();
});

test('moe-router validate describes a gpt-oss checkpoint in either layout and runs a forward', () => {
  const main = path.join(__dirname, '..', 'lib', 'cli', 'main.ts');
  for (const mxfp4 of [false, true]) {
    const m = writeGptOss({ mxfp4, d: 32, f: 32, E: 4, k: 2, seed: SEED + 20 });
    const r = spawnSync(process.execPath, ['--import', 'tsx', main, 'validate', '--model', m.dir, '--forward'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.is(r.status, 0, r.stderr);
    assert.match(r.stdout, /routing +softmax gptOss k=2, .*router bias term/);
    assert.match(r.stdout, /experts +4 x clamped SwiGLU \(alpha 1\.702, limit 7\) with biases d=32 f=32, top-2/);
    assert.match(
      r.stdout,
      mxfp4
        ? /, MXFP4 experts .*; --dtype fp8 keeps their values exactly/
        : /dtype BF16 \(fused, transposed, interleaved experts\)/,
    );
    assert.match(r.stdout, /layers +2 MoE, 0 dense of 2/);
    assert.match(r.stdout, /forward .* output finite/);
  }
});

test.run();
