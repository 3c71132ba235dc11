/**
 * Every SIMD path (AMX, AVX-512, AVX2, scalar — forced with MOE_ISA in a child process each) against the float64
 * reference: the same experts, fp32 outputs to 1e-5, bf16 to 1e-2 and fp8 (against the same quantized weights) to 1e-5
 * (1e-2 where the experts of 8 or more rows run on bf16 pairs with bf16 activations: AMX, and AVX-512 with
 * MOE_FP8_PAIRS=1). Paths the CPU lacks are skipped, and said so.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { backendInfo } from '../lib';
import { referenceLayer } from '../lib/reference/layer';
import { relativeError } from './helpers/compare';
import { GPT_OSS } from './helpers/isa-probe-config';
import { quantizeFp8 } from './helpers/layer';
import { freshSeed, randn } from './helpers/random';

const SEED = freshSeed() % 100000;
const probe = path.join(__dirname, 'helpers', 'isa-probe.ts');
const features = backendInfo().cpuFeatures;
const available: Record<string, boolean> = {
  // (AMX also needs a compiler that built its kernel, g++ 11+: then this process picked it)
  amx: features.amxBf16 && backendInfo().isa === 'amx',
  avx512: features.avx512bf16 && features.avx512f,
  avx2: features.avx2,
  scalar: true,
};

interface ProbeRun {
  output: number[];
  indices: number[];
  weights: number[];
}

/** The fp8 layers' weights in the reference, quantized once for all paths. */
let quantizedExperts: { w1: Float64Array; w3: Float64Array; w2: Float64Array; f: number }[] | undefined;

// AVX-512 twice: its fp8 experts of 8 or more rows on bf16 pairs (AMD's default) and with fp32 activations (Intel's),
// whichever this CPU is; on AMX MOE_FP8_PAIRS=0 leaves every fp8 expert on the fp32 kernel.
const runs: { isa: string; pairs?: '0' | '1' }[] = [
  { isa: 'amx' },
  { isa: 'amx', pairs: '0' },
  { isa: 'avx512', pairs: '1' },
  { isa: 'avx512', pairs: '0' },
  { isa: 'avx2' },
  { isa: 'scalar' },
];
for (const { isa, pairs } of runs) {
  const name = pairs === undefined ? isa : `${isa} with MOE_FP8_PAIRS=${pairs}`;
  test(`${name} kernels match the reference`, () => {
    if (!available[isa]) {
      console.log(`  skipped: ${isa} is not available here (the CPU, the OS, the build or MOE_ISA)`);
      return;
    }
    // f = 4200: the down projection's K spans several slices of the panel product (2048 floats or 2048 bf16
    // pairs), so the kernels' accumulate path is checked too; d = 40 (20 pairs) leaves K pairs beyond AMX's
    // 16-pair steps. Top-2 of 90 tokens spreads rows unevenly; with k = E every expert gets exactly T rows: 3 (AMX
    // hands them to AVX-512), 12 (one row tile), 20 (two tiles), 40 (AMX: blocks of 32 and 8; AVX-512: 4 x 10),
    // 34 (AMX: a rest of 2 is too short for the tiles, so 17 and 17), 70 (AMX: 32, 32 and 6).
    const [E, d, f] = [8, 40, 4200];
    const cases = '90:2,3:8,12:8,20:8,40:8,34:8,70:8';
    const env: NodeJS.ProcessEnv = { ...process.env, MOE_ISA: isa };
    if (pairs === undefined) delete env.MOE_FP8_PAIRS;
    else env.MOE_FP8_PAIRS = pairs;
    // gpt-oss's epilogue (biases, the clamped activation, then the ISA's fp32 or bf16 store) and Llama 4's weighted
    // inputs (the gather's bf16 rounding per ISA) on AVX-512's rows (T=3) and AMX's (T=40: tiles of 32 and 8)
    const gptOssCases = [1, 4];
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', probe, ...[SEED, E, d, f].map(String), cases, gptOssCases.join(',')],
      {
        encoding: 'utf8',
        timeout: 120_000,
        maxBuffer: 64 << 20, // (every output element of 6 layers x 7 cases, as JSON: a few MB)
        env,
      },
    );
    assert.is(r.status, 0, r.stderr || String(r.error));
    const got = JSON.parse(r.stdout);
    assert.is(got.isa, isa);
    // bf16 pairs for fp8 where a kernel exists (AMX, AVX-512) and MOE_FP8_PAIRS asked, or AMX by default
    const fp8Pairs = pairs === undefined ? (isa === 'amx' ? 8 : 0) : pairs === '1' ? 8 : 0;
    assert.is(got.fp8Bf16Rows, fp8Pairs, 'fp8Bf16Rows');
    const experts = Array.from({ length: E }, (_, e) => ({
      w1: randn(f * d, SEED + 10 + 3 * e, 0.2),
      w3: randn(f * d, SEED + 11 + 3 * e, 0.2),
      w2: randn(d * f, SEED + 12 + 3 * e, 0.2),
      f,
    }));
    // the probe's gpt-oss experts: the same weights with biases (its GPT_OSS)
    const biases = experts.map((_, e) => ({
      b1: randn(f, SEED + 500 + 3 * e, GPT_OSS.biasScale),
      b3: randn(f, SEED + 501 + 3 * e, GPT_OSS.biasScale),
      b2: randn(d, SEED + 502 + 3 * e, GPT_OSS.biasScale),
    }));
    assert.is(got.cases.length, 7);
    // an fp8 layer's weights as it quantizes them (E4M3, a scale per row and 128 columns: f = 4200 and d = 40 leave
    // short last blocks)
    const quantized = (quantizedExperts ??= experts.map((w) => ({
      w1: quantizeFp8(w.w1, f, d),
      w3: quantizeFp8(w.w3, f, d),
      w2: quantizeFp8(w.w2, d, f),
      f,
    })));
    got.cases.forEach((c: { T: number; k: number } & Record<string, ProbeRun>, i: number) => {
      const x = randn(c.T * d, SEED + 99 + i);
      for (const [dtype, tol] of [
        ['fp32', 1e-5],
        ['bf16', 1e-2],
        // (experts of 8 or more rows on bf16 pairs take bf16 activations)
        ['fp8', got.fp8Bf16Rows > 0 ? 1e-2 : 1e-5],
      ] as const) {
        for (const form of ['swiglu', 'gptOss', 'llama4'] as const) {
          if (form !== 'swiglu' && (dtype === 'fp8' || !gptOssCases.includes(i))) continue;
          const run = c[form === 'swiglu' ? dtype : `${form} ${dtype}`];
          const weights = (e: number) => {
            const w = (dtype === 'fp8' ? quantized : experts)[e];
            return form === 'gptOss' ? { ...w, ...biases[e] } : w;
          };
          const routing = { indices: run.indices, weights: run.weights, k: new Int32Array(c.T).fill(c.k), maxK: c.k };
          const opts = { act: form === 'gptOss' ? GPT_OSS : undefined, weightInputs: form === 'llama4' };
          // (a bf16 layer rounds the weighted input w·x to bf16; the reference takes it in float32 here)
          const err = relativeError(run.output, referenceLayer(x, c.T, d, weights, routing, undefined, opts));
          const what = `${name} ${form === 'swiglu' ? '' : `${form} `}${dtype} T=${c.T} k=${c.k}`;
          assert.ok(err < tol, `${what}: relative error ${err} (seed ${SEED})`);
        }
      }
      assert.equal(c.fp32.indices, c.bf16.indices, 'routing does not depend on the weight dtype');
      assert.equal(c.fp32.indices, c.fp8.indices, 'routing does not depend on the weight dtype');
    });
  });
}

test('MOE_ISA, MOE_THREADS and MOE_FP8_PAIRS: blanks accepted; a value that cannot apply is named in a warning', () => {
  const info = (vars: Record<string, string>) => {
    const code =
      "const { backendInfo } = require('./lib'); const i = backendInfo(); console.log(JSON.stringify([i.isa, i.threads, i.fp8Bf16Rows]));";
    const env = { ...process.env, ...vars };
    for (const key of ['MOE_ISA', 'MOE_THREADS', 'MOE_FP8_PAIRS']) if (!(key in vars)) delete env[key];
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', code], {
      cwd: path.join(__dirname, '..'),
      encoding: 'utf8',
      timeout: 60_000,
      env,
    });
    assert.is(r.status, 0, r.stderr);
    const [isa, threads, fp8Bf16Rows] = JSON.parse(r.stdout) as [string, number, number];
    return { isa, threads, fp8Bf16Rows, warning: /MOE_ENV/.test(r.stderr) ? r.stderr : '' };
  };
  const plain = info({});
  assert.is(plain.warning, '');
  for (const value of ['Scalar', ' scalar\t']) {
    const got = info({ MOE_ISA: value });
    assert.equal([got.isa, got.warning], ['scalar', ''], JSON.stringify(value));
  }
  if (available.avx2) assert.is(info({ MOE_ISA: 'AVX2' }).isa, 'avx2');
  if (available.amx) assert.is(info({ MOE_ISA: 'avx512' }).isa, 'avx512');
  const bogus = info({ MOE_ISA: 'sse4' });
  assert.is(bogus.isa, plain.isa, 'an unknown value caps nothing');
  assert.match(bogus.warning, /MOE_ISA="sse4" is not amx, avx512, avx2 or scalar/);
  const one = info({ MOE_THREADS: ' 1 ' });
  assert.equal([one.threads, one.warning], [1, '']);
  for (const value of ['1abc', '0', '2000', 'two']) {
    const got = info({ MOE_THREADS: value });
    assert.is(got.threads, plain.threads, `MOE_THREADS=${value}`);
    assert.match(got.warning, /MOE_THREADS=.* is not an integer in \[1, 1024\]/);
  }
  // fp8 on bf16 pairs: by default on AMX and on AVX-512 CPUs other than Intel's (gemm.cc); MOE_FP8_PAIRS=0 never
  const off = info({ MOE_FP8_PAIRS: ' 0 ' });
  assert.equal([off.fp8Bf16Rows, off.warning], [0, '']);
  if (available.avx512) {
    const intel = /GenuineIntel/.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    assert.is(info({ MOE_ISA: 'avx512' }).fp8Bf16Rows, intel ? 0 : 8, 'the AVX-512 default follows the vendor');
    assert.is(info({ MOE_ISA: 'avx512', MOE_FP8_PAIRS: '1' }).fp8Bf16Rows, 8);
  }
  const bogusPairs = info({ MOE_FP8_PAIRS: 'yes' });
  assert.is(bogusPairs.fp8Bf16Rows, plain.fp8Bf16Rows, 'an unknown value changes nothing');
  assert.match(bogusPairs.warning, /MOE_FP8_PAIRS="yes" is not 1 or 0; it is ignored/);
});

// GCC 12 once deleted every prefetch of the AMX kernel without a word: the helper that issued them was not inlined,
// and prefetches being hints, calls to it looked free of side effects (bench/RESULTS.md, step 19). The build
// folders' kernel objects (node-gyp's and cmake-js's) must hold prefetch instructions, wherever they hold a kernel.
test('the built kernel objects keep their software prefetches', () => {
  const root = path.join(__dirname, '..');
  const objects: string[] = [];
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (/^gemm_(amx|avx512|avx2)\.(cc\.)?o$/.test(entry.name)) objects.push(full);
    }
  };
  for (const dir of ['build', 'build-cmake']) if (fs.existsSync(path.join(root, dir))) walk(path.join(root, dir));
  const probe = spawnSync('objdump', ['--version'], { encoding: 'utf8' });
  if (objects.length === 0 || probe.status !== 0) {
    console.log('  skipped: no kernel objects in build/ or build-cmake/, or no objdump');
    return;
  }
  // An object older than its source (or the header every kernel includes) is what a build before the last edit
  // left behind: it says nothing about the code as it is, so it is named and passed over.
  const sourceTime = (kernel: string) =>
    Math.max(
      fs.statSync(path.join(root, 'native', 'cpu', `gemm_${kernel}.cc`)).mtimeMs,
      fs.statSync(path.join(root, 'native', 'cpu', 'gemm_isa.h')).mtimeMs,
    );
  for (const object of objects) {
    const kernel = /gemm_(amx|avx512|avx2)/.exec(path.basename(object))![1];
    if (fs.statSync(object).mtimeMs < sourceTime(kernel)) {
      console.log(`  ${path.relative(root, object)}: older than its source (a stale build), not checked`);
      continue;
    }
    const r = spawnSync('objdump', ['-d', object], { encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.is(r.status, 0, r.stderr);
    // (an AMX translation unit built by g++ < 11 holds no kernel, only its AVX-512 fallback's call)
    if (/gemm_amx/.test(object) && !/tdpbf16ps/.test(r.stdout)) {
      console.log(`  ${path.relative(root, object)}: no AMX kernel in it (an older compiler or objdump), not checked`);
      continue;
    }
    const prefetches = (r.stdout.match(/\bprefetcht[012]\b/g) ?? []).length;
    assert.ok(prefetches > 0, `${path.relative(root, object)}: no prefetch instruction`);
  }
});

test.run();
