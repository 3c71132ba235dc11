/**
 * Every SIMD path (AVX-512, AVX2, scalar — forced with MOE_ISA in a child process each) against the float64
 * reference: the same experts, fp32 outputs to 1e-5 and bf16 to 1e-2. Paths the CPU lacks are skipped, and said so.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { backendInfo } from '../lib';
import { referenceLayer } from '../lib/reference/layer';
import { relativeError } from './helpers/compare';
import { freshSeed, randn } from './helpers/random';

const SEED = freshSeed() % 100000;
const probe = path.join(__dirname, 'helpers', 'isa-probe.ts');
const features = backendInfo().cpuFeatures;
const available: Record<string, boolean> = {
  avx512: features.avx512bf16 && features.avx512f,
  avx2: features.avx2,
  scalar: true,
};

for (const isa of ['avx512', 'avx2', 'scalar']) {
  test(`${isa} kernels match the reference`, () => {
    if (!available[isa]) {
      console.log(`  skipped: this CPU has no ${isa}`);
      return;
    }
    // f = 4200: the down projection's K spans several slices of the panel product (2048 floats or 2048 bf16
    // pairs), so the kernels' accumulate path is checked too.
    const [E, d, f, T] = [8, 40, 4200, 37];
    const r = spawnSync(process.execPath, ['--import', 'tsx', probe, ...[SEED, E, d, f, T].map(String)], {
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, MOE_ISA: isa },
    });
    assert.is(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout);
    assert.is(got.isa, isa);
    const experts = Array.from({ length: E }, (_, e) => ({
      w1: randn(f * d, SEED + 10 + 3 * e, 0.2),
      w3: randn(f * d, SEED + 11 + 3 * e, 0.2),
      w2: randn(d * f, SEED + 12 + 3 * e, 0.2),
      f,
    }));
    const x = randn(T * d, SEED + 99);
    for (const [dtype, tol] of [
      ['fp32', 1e-5],
      ['bf16', 1e-2],
    ] as const) {
      const run = got[dtype];
      const ref = referenceLayer(x, T, d, (e) => experts[e], {
        indices: run.indices,
        weights: run.weights,
        k: new Int32Array(T).fill(2),
        maxK: 2,
      });
      const err = relativeError(run.output, ref);
      assert.ok(err < tol, `${isa} ${dtype}: relative error ${err} (seed ${SEED})`);
    }
    assert.equal(got.fp32.indices, got.bf16.indices, 'routing does not depend on the weight dtype');
  });
}

test.run();
