/**
 * The CUDA backend against the float64 references and the CPU backend. Without a usable GPU (no plugin built,
 * no driver, no device) the GPU checks are skipped, and say so; the checks that need no GPU still run.
 *
 * On a GPU: MOE_CUDA_POISON=1 makes the plugin fill every output and intermediate buffer with NaN before each
 * forward, so an element no kernel wrote shows up. Routing indices must match the reference exactly (tokens
 * within 1e-5 of a decision boundary are counted and left out, as in router.test.ts); layer outputs are bf16
 * GEMMs with fp32 accumulation, checked to 1e-2 relative (‖y − ref‖/‖ref‖) against the float64 layer reference
 * (on the bf16-rounded weights and input) given the routing the GPU chose.
 */
process.env.MOE_CUDA_POISON ??= '1';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BackendError, backendInfo, cudaStatus, MoELayer, Router, ValidationError, type Selection } from '../lib';
import { native, type NativeCudaLayerHandle } from '../lib/native';
import { referenceRoute, referenceRouteLogits } from '../lib/reference/routing';
import { writeTinyCheckpoint } from './helpers/checkpoint';
import { compareRouting, relativeError } from './helpers/compare';
import { buildLayer, layerReference, type BuiltLayer } from './helpers/layer';
import { freshSeed, randn, randu } from './helpers/random';

const SEED = freshSeed();
const status = cudaStatus();

test('backend option: "cpu" never touches the GPU; "auto" and backendInfo agree with cudaStatus', () => {
  const router = new Router({ numExperts: 4, hiddenSize: 8, gateWeight: randn(32, SEED), backend: 'cpu' });
  assert.is(router.backend, 'cpu');
  const auto = new Router({ numExperts: 4, hiddenSize: 8, gateWeight: randn(32, SEED), backend: 'auto' });
  assert.is(auto.backend, status.available ? 'cuda' : 'cpu');
  const info = backendInfo();
  assert.is(info.backend, status.available ? 'cuda' : 'cpu');
  assert.is(info.cuda.available, status.available);
  assert.throws(
    () => new Router({ numExperts: 4, hiddenSize: 8, gateWeight: randn(32, SEED), backend: 'gpu' as never }),
    (e: unknown) => e instanceof ValidationError && /backend/.test((e as Error).message),
  );
});

// The child runs lib/ from source through tsx; bench/gpu/bundle.sh's single-file bundle (a GPU machine without
// node_modules) has neither, so there the test says so and passes.
const tsxHere = (() => {
  try {
    require.resolve('tsx');
    return true;
  } catch {
    return false;
  }
})();

test('MOE_CUDA_PLUGIN naming a missing file says so, instead of loading another plugin (child process)', () => {
  if (!tsxHere) {
    console.log('cuda.test: the MOE_CUDA_PLUGIN child-process check SKIPPED (no tsx here: a bundled run)');
    return;
  }
  const script = `const { cudaStatus } = require(${JSON.stringify(path.join(__dirname, '..', 'lib'))});
    console.log(JSON.stringify(cudaStatus()));`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, MOE_CUDA_PLUGIN: path.join(os.tmpdir(), 'no-such-dir', 'moe_cuda.so') },
  });
  assert.is(r.status, 0, r.stderr);
  const got = JSON.parse(r.stdout.trim().split('\n').pop()!);
  assert.is(got.available, false);
  assert.match(got.reason, /MOE_CUDA_PLUGIN is .*no-such-dir.*, which does not exist/);
});

if (!status.available) {
  console.log(`cuda.test: GPU checks SKIPPED (no usable CUDA backend here): ${status.reason}`);
  test('without a GPU, backend "cuda" is a BackendError that says why', () => {
    assert.ok(typeof backendInfo().unavailable.cuda === 'string');
    assert.throws(
      () => new Router({ numExperts: 4, hiddenSize: 8, gateWeight: randn(32, SEED), backend: 'cuda' }),
      (e: unknown) => e instanceof BackendError && /not available/.test((e as Error).message),
    );
  });
} else {
  console.log(`cuda.test seed ${SEED} on ${status.device!.name} (sm_${status.device!.computeCapability})`);
  gpuTests();
}

/** A variable a test set for layers it builds, back to what it was (an A/B run of check.sh may have set it). */
function restoreEnv(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

/** b's forward of x, and its relative error against the float64 reference on the routing the forward took. */
function forwardError(b: BuiltLayer, x: Float32Array) {
  const r = b.layer.forward(x);
  return { r, err: relativeError(r.output, layerReference(b, x, r.routing)) };
}

/** The native info of a CUDA layer: its kernels and the variables it read when it was built. */
function cudaInfo(layer: MoELayer): ReturnType<NativeCudaLayerHandle['info']> {
  return (layer as unknown as { cudaHandle: NativeCudaLayerHandle }).cudaHandle.info();
}

function gpuTests() {
  // MOE_CUDA_TEST_ONLY=<part of a title> runs only the matching GPU tests (bench/gpu/check.sh's wgmma step).
  const only = process.env.MOE_CUDA_TEST_ONLY;
  const gpuTest = (name: string, fn: () => void | Promise<void>) => {
    if (!only || name.includes(only)) test(name, fn);
  };
  const cfgOf = (r: Router) => ({ ...r.config });

  gpuTest('gating on the GPU matches the reference and the CPU for every rule, E up to 512 (60 and 384 too)', () => {
    let seed = SEED;
    let checked = 0;
    let ambiguous = 0;
    for (const E of [8, 60, 64, 128, 384, 512]) {
      for (const T of [1, 33, 257, 2048]) {
        const k = Math.min(E, [1, 2, 4, 6, 8][(E + T) % 5]);
        const maxK = Math.min(E, k + 2);
        const rules: { sel: Selection; scoring: 'softmax' | 'sigmoid'; normalize: boolean }[] = [
          { sel: { kind: 'topk', k }, scoring: 'softmax', normalize: true },
          { sel: { kind: 'topk', k }, scoring: 'sigmoid', normalize: false },
          { sel: { kind: 'topp', p: 0.6, minK: 1, maxK }, scoring: 'softmax', normalize: true },
          { sel: { kind: 'threshold', tau: 1.5 / E, minK: 1, maxK }, scoring: 'softmax', normalize: true },
          { sel: { kind: 'dynamic', minK: 1, maxK }, scoring: 'softmax', normalize: false },
          { sel: { kind: 'gptOss', k }, scoring: 'softmax', normalize: false },
        ];
        for (const { sel, scoring, normalize } of rules) {
          const common = { numExperts: E, hiddenSize: 8, gateWeight: randn(E * 8, ++seed), scoring, selection: sel };
          const gpu = new Router({ ...common, normalize, scale: 1.5, backend: 'cuda' });
          const cpu = new Router({ ...common, normalize, scale: 1.5, backend: 'cpu' });
          const logits = randn(T * E, ++seed, 2);
          const complexity = sel.kind === 'dynamic' ? randu(T, ++seed) : undefined;
          const got = gpu.routeLogits(logits, { complexity });
          const ref = referenceRouteLogits(cfgOf(gpu), logits, T, undefined, complexity);
          const label = `E=${E} T=${T} ${JSON.stringify(sel)} ${scoring} seed=${SEED}`;
          const rep = compareRouting(got, ref, label);
          checked += rep.checked;
          ambiguous += rep.ambiguous;
          const onCpu = cpu.routeLogits(logits, { complexity });
          for (let t = 0; t < T; t++) {
            if (ref.margin[t] < 1e-5) continue;
            for (let j = 0; j < got.maxK; j++)
              if (got.indices[t * got.maxK + j] !== onCpu.indices[t * got.maxK + j])
                assert.unreachable(`${label}: token ${t} CPU and CUDA disagree`);
          }
          if (rep.ambiguous === 0) {
            assert.equal(Array.from(got.stats.expertCounts), Array.from(ref.expertCounts), `${label}: counts`);
            assert.ok(Math.abs(got.stats.meanK - ref.meanK) < 1e-9, `${label}: meanK`);
            assert.ok(Math.abs(got.stats.auxLoss - ref.auxLoss) <= 1e-4 * ref.auxLoss + 1e-9, `${label}: aux`);
          }
          assert.ok(Math.abs(got.stats.zLoss - ref.zLoss) <= 1e-4 * ref.zLoss + 1e-9, `${label}: z-loss`);
        }
      }
    }
    console.log(`cuda gating: ${checked} tokens checked, ${ambiguous} near a boundary`);
    assert.ok(ambiguous <= checked * 0.01, `too many near-boundary tokens: ${ambiguous}`);
  });

  gpuTest('sigmoid scores that all underflow: the GPU takes minK under top-p as the CPU does, stats finite', () => {
    const E = 60;
    const T = 5;
    const common = {
      numExperts: E,
      hiddenSize: 8,
      gateWeight: randn(E * 8, SEED + 150),
      scoring: 'sigmoid' as const,
      selection: { kind: 'topp', p: 0.5, minK: 2, maxK: 6 } as Selection,
      normalize: true,
    };
    const logits = randn(T * E, SEED + 151, 2);
    for (let i = 0; i < E; i++) {
      logits[E + i] = -100 - ((i * 7) % E) / 10; // below float32's sigmoid range
      logits[3 * E + i] = -800 - i; // below float64's too
    }
    const got = new Router({ ...common, backend: 'cuda' }).routeLogits(logits);
    const onCpu = new Router({ ...common, backend: 'cpu' }).routeLogits(logits);
    assert.equal(Array.from(got.k), Array.from(onCpu.k), 'k');
    assert.equal(Array.from(got.indices), Array.from(onCpu.indices), 'indices');
    assert.equal([got.k[1], got.k[3]], [2, 2]);
    for (const v of [got.stats.auxLoss, got.stats.zLoss, ...got.weights]) assert.ok(Number.isFinite(v), `${v}`);
    assert.ok(Math.abs(got.stats.auxLoss - onCpu.stats.auxLoss) <= 1e-4 * onCpu.stats.auxLoss, 'aux');
  });

  gpuTest('a CUDA router disposed with routes pending: they complete, then calls are refused', async () => {
    const E = 64;
    const router = new Router({
      numExperts: E,
      hiddenSize: 8,
      gateWeight: randn(E * 8, SEED + 180),
      selection: { kind: 'topk', k: 4 },
      backend: 'cuda',
    });
    const x = randn(5 * 8, SEED + 181);
    const expected = Array.from(router.route(x).indices);
    router.drainTelemetry();
    const pending = [router.routeAsync(x), router.routeAsync(x)];
    router.dispose();
    for (const p of pending) assert.equal(Array.from((await p).indices), expected);
    assert.throws(() => router.route(x), /disposed/);
    assert.is(router.cudaHandle, undefined);
    // its counters were drained once more before it was freed: the two pending calls are there, then drains fail
    assert.is(router.drainTelemetry().calls, 2);
    assert.throws(() => router.drainTelemetry(), /disposed/);
  });

  gpuTest('concurrent async routes of different sizes share one kernel shared-memory allowance', async () => {
    // T=16 and T=1 need different dynamic shared memory of the same fused kernel (E=256): a call setting the
    // kernel's allowance lower while another launches with more failed that launch.
    const E = 256;
    const make = (seed: number) =>
      new Router({
        numExperts: E,
        hiddenSize: 8,
        gateWeight: randn(E * 8, seed),
        selection: { kind: 'topk', k: 8 },
        backend: 'cuda',
      });
    const routers = [make(SEED + 160), make(SEED + 161), make(SEED + 162)];
    const inputs = [16, 1, 9].map((T, i) => randn(T * 8, SEED + 170 + i));
    const expected = routers.map((r, i) => Array.from(r.route(inputs[i]).indices));
    for (let round = 0; round < 40; round++) {
      const got = await Promise.all(routers.map((r, i) => r.routeAsync(inputs[i])));
      got.forEach((g, i) => assert.equal(Array.from(g.indices), expected[i], `round ${round}, router ${i}`));
    }
  });

  gpuTest('DeepSeek-V3 groups on the GPU: 256 experts / 8 groups / keep 4 / top-8, sigmoid, selection bias', () => {
    let seed = SEED + 100;
    for (const score of ['top2sum', 'max'] as const) {
      const E = 256;
      const bias = randn(E, ++seed, 0.1);
      const router = new Router({
        numExperts: E,
        hiddenSize: 8,
        gateWeight: randn(E * 8, ++seed),
        scoring: 'sigmoid',
        selection: { kind: 'topk', k: 8 },
        groups: { nGroup: 8, topkGroup: 4, score },
        bias,
        normalize: true,
        scale: 2.5,
        backend: 'cuda',
      });
      const T = 300;
      const logits = randn(T * E, ++seed, 2);
      compareRouting(router.routeLogits(logits), referenceRouteLogits(cfgOf(router), logits, T, bias), score);
    }
  });

  gpuTest(
    'routing from hidden states: fp32 gate GEMM to 1e-5, same experts, device router-entropy complexity',
    async () => {
      let seed = SEED + 200;
      for (const [T, E, d] of [
        [1, 8, 4096],
        [64, 64, 2048],
        [1000, 60, 256],
      ] as const) {
        const x = randn(T * d, ++seed);
        const gate = randn(E * d, ++seed, 0.05);
        const router = new Router({
          numExperts: E,
          hiddenSize: d,
          gateWeight: gate,
          selection: { kind: 'topk', k: 4 },
          normalize: true,
          backend: 'cuda',
        });
        const got = router.route(x, { returnLogits: true, returnProbs: true });
        const ref = referenceRoute(cfgOf(router), x, gate);
        assert.ok(relativeError(got.logits!, ref.logits) < 1e-5, `logits ${relativeError(got.logits!, ref.logits)}`);
        assert.ok(relativeError(got.probs!, ref.probs) < 1e-5, 'probs');
        const rep = compareRouting(got, ref, `T=${T} E=${E} d=${d}`);
        assert.ok(rep.ambiguous <= Math.max(2, T * 0.02), `ambiguous ${rep.ambiguous}`);
        const again = await router.routeAsync(x);
        assert.equal(Array.from(again.indices), Array.from(got.indices), 'routeAsync gives the same experts');
        assert.equal(Array.from(again.weights), Array.from(got.weights), 'and the same weights');
      }
      // Dynamic k from router entropy computed on the GPU, with the estimator's frozen calibration.
      const E = 64;
      const d = 256;
      const T = 500;
      const gate = randn(E * d, ++seed, 0.05);
      const sel: Selection = { kind: 'dynamic', minK: 1, maxK: 6, estimator: 'router_entropy' };
      const gpu = new Router({ numExperts: E, hiddenSize: d, gateWeight: gate, selection: sel, backend: 'cuda' });
      const cpu = new Router({ numExperts: E, hiddenSize: d, gateWeight: gate, selection: sel });
      const calib = randn(200 * d, ++seed);
      for (const r of [gpu, cpu])
        r.estimator!.calibrate({ x: calib, tokens: 200, hiddenSize: d, logits: r.logits(calib), numExperts: E });
      const x = randn(T * d, ++seed);
      const a = gpu.route(x);
      const b = cpu.route(x);
      assert.ok(a.complexity && b.complexity, 'complexity returned');
      let kDiff = 0;
      for (let t = 0; t < T; t++) {
        assert.ok(
          Math.abs(a.complexity![t] - b.complexity![t]) < 1e-4,
          `token ${t} complexity ${a.complexity![t]} vs ${b.complexity![t]}`,
        );
        if (a.k[t] !== b.k[t]) kDiff++;
      }
      assert.ok(kDiff <= 2, `${kDiff} tokens got another k`);
    },
  );

  gpuTest('device complexity: gradient_norm (L2, L1) and router_entropy with none, quantile and running zscore', () => {
    let seed = SEED + 250;
    const E = 32;
    const d = 192;
    const T = 300;
    const gate = randn(E * d, ++seed, 0.08);
    const make = (selection: Selection, backend: 'cpu' | 'cuda') =>
      new Router({ numExperts: E, hiddenSize: d, gateWeight: gate, selection, backend });
    const calib = randn(100 * d, ++seed);
    const cases: { sel: Selection; calibrate: boolean }[] = [
      { sel: { kind: 'dynamic', minK: 1, maxK: 6, estimator: { name: 'gradient_norm', norm: 'l2' } }, calibrate: true },
      { sel: { kind: 'dynamic', minK: 1, maxK: 6, estimator: { name: 'gradient_norm', norm: 'l1' } }, calibrate: true },
      {
        sel: { kind: 'dynamic', minK: 1, maxK: 6, estimator: { name: 'router_entropy', calibration: 'none' } },
        calibrate: false,
      },
      {
        sel: { kind: 'dynamic', minK: 1, maxK: 6, estimator: { name: 'router_entropy', calibration: 'quantile' } },
        calibrate: true,
      },
      { sel: { kind: 'dynamic', minK: 1, maxK: 6, estimator: 'router_entropy' }, calibrate: false }, // running zscore
    ];
    for (const { sel, calibrate } of cases) {
      const label = JSON.stringify(sel);
      const gpu = make(sel, 'cuda');
      const cpu = make(sel, 'cpu');
      if (calibrate)
        for (const r of [gpu, cpu])
          r.estimator!.calibrate({ x: calib, tokens: 100, hiddenSize: d, logits: r.logits(calib), numExperts: E });
      for (let call = 0; call < 2; call++) {
        const x = randn(T * d, ++seed);
        const a = gpu.route(x);
        const b = cpu.route(x);
        let kDiff = 0;
        for (let t = 0; t < T; t++) {
          const diff = Math.abs(a.complexity![t] - b.complexity![t]);
          if (diff > 1e-4)
            assert.unreachable(`${label} call ${call} token ${t}: ${a.complexity![t]} vs ${b.complexity![t]}`);
          if (a.k[t] !== b.k[t]) kDiff++;
        }
        assert.ok(kDiff <= 3, `${label}: ${kDiff} tokens got another k`);
      }
      // The running statistics moved the same way on both (the device merges each batch, then hands them back);
      // the raw entropies differ by the logits' rounding (fp32 sums in another order), hence 1e-3.
      const [ga, ca] = [gpu.estimator!.calibrator.deviceState()!, cpu.estimator!.calibrator.deviceState()!];
      for (let i = 0; i < 3; i++)
        assert.ok(
          Math.abs(ga.state[i] - ca.state[i]) <= 1e-3 * Math.max(1e-3, Math.abs(ca.state[i])),
          `${label}: state ${i}`,
        );
    }
  });

  gpuTest(
    'running zscore on the GPU: concurrent async calls each fold their batch in once, as on the CPU',
    async () => {
      let seed = SEED + 280;
      const E = 16;
      const d = 64;
      const T = 50;
      const gate = randn(E * d, ++seed, 0.1);
      const sel: Selection = { kind: 'dynamic', minK: 1, maxK: 4, estimator: 'router_entropy' };
      const gpu = new Router({ numExperts: E, hiddenSize: d, gateWeight: gate, selection: sel, backend: 'cuda' });
      const cpu = new Router({ numExperts: E, hiddenSize: d, gateWeight: gate, selection: sel, backend: 'cpu' });
      const xs = [randn(T * d, ++seed), randn(T * d, ++seed), randn(T * d, ++seed)];
      await Promise.all(xs.map((x) => gpu.routeAsync(x)));
      for (const x of xs) cpu.route(x);
      const [g, c] = [gpu.estimator!.calibrator.deviceState()!, cpu.estimator!.calibrator.deviceState()!];
      assert.is(g.state[0], 3 * T, 'every batch counted once');
      for (let i = 1; i < 3; i++)
        assert.ok(Math.abs(g.state[i] - c.state[i]) <= 1e-3 * Math.max(1e-3, Math.abs(c.state[i])), `state ${i}`);
      // a layer's forward and forwardAsync too (their device argument comes after logitsOut and probsOut)
      const b = buildLayer({ E, d, f: 32, selection: sel, seed: ++seed, backend: 'cuda' });
      b.layer.forward(xs[0]);
      await Promise.all([b.layer.forwardAsync(xs[1]), b.layer.forwardAsync(xs[2])]);
      const layerState = b.layer.router.estimator!.calibrator.deviceState()!.state;
      assert.is(layerState[0], 3 * T, 'the layer folded every batch in');
      b.layer.dispose();
    },
  );

  gpuTest(
    'layer forward: bf16 tensor-core GEMMs within 1e-2 of the float64 reference (decode and prefill paths)',
    () => {
      let seed = SEED + 300;
      const cases: [string, number, number, number, Selection, { f: number; gated: boolean } | undefined, number[]][] =
        [
          ['mixtral-like', 8, 256, 512, { kind: 'topk', k: 2 }, undefined, [1, 2, 5, 8, 9, 64, 300]],
          ['E=60 padded f', 60, 128, 96, { kind: 'topk', k: 4 }, { f: 160, gated: true }, [1, 7, 130, 1100]],
          ['d not a tile multiple', 16, 200, 64, { kind: 'topk', k: 2 }, { f: 64, gated: false }, [3, 257]],
          ['top-p', 32, 128, 128, { kind: 'topp', p: 0.5, minK: 1, maxK: 4 }, undefined, [6, 100]],
        ];
      for (const [name, E, d, f, sel, shared, tokens] of cases) {
        const b = buildLayer({ E, d, f, selection: sel, seed: (seed += 1000), shared, backend: 'cuda' });
        for (const T of tokens) {
          const { r, err } = forwardError(b, randn(T * d, ++seed));
          for (let i = 0; i < r.output.length; i++)
            if (!Number.isFinite(r.output[i])) assert.unreachable(`${name} T=${T}: output ${i} not written (NaN)`);
          assert.ok(err < 1e-2, `${name} T=${T}: relative error ${err}`);
          assert.is(
            r.stats.expertCounts.reduce((a, c) => a + c, 0),
            r.routing.stats.assignments,
            'counts sum',
          );
          assert.ok(r.stats.stageSeconds.expertGemm > 0, 'device stage timing');
        }
        b.layer.dispose();
      }
      // The GEMV kernels of 5-8 rows per expert, used when MOE_CUDA_GEMV_MAX_TOKENS raises the default bound (4)
      const bound = process.env.MOE_CUDA_GEMV_MAX_TOKENS;
      process.env.MOE_CUDA_GEMV_MAX_TOKENS = '8';
      try {
        const b = buildLayer({
          E: 8,
          d: 256,
          f: 512,
          selection: { kind: 'topk', k: 2 },
          seed: ++seed,
          backend: 'cuda',
        });
        assert.is(cudaInfo(b.layer).gemvMaxTokens, 8, 'the layer read MOE_CUDA_GEMV_MAX_TOKENS');
        for (const T of [6, 8]) {
          const { err } = forwardError(b, randn(T * 256, ++seed));
          assert.ok(err < 1e-2, `GEMV of up to 8 rows, T=${T}: relative error ${err}`);
        }
        b.layer.dispose();
      } finally {
        restoreEnv('MOE_CUDA_GEMV_MAX_TOKENS', bound);
      }
    },
  );

  gpuTest(
    'every GEMM tile (32x128, 128x128, 128x256, 128x128x64, 32x64, 32x64x64, wgmma) computes the same layer',
    () => {
      let seed = SEED + 350;
      // 'hopper' (the sm_90a wgmma tile) runs as 'deep' on other GPUs.
      const tiles = ['small', 'large', 'wide', 'deep', 'narrow', 'stream', 'hopper'];
      const outer = process.env.MOE_CUDA_TILE;
      for (const tile of tiles) {
        process.env.MOE_CUDA_TILE = tile;
        try {
          const b = buildLayer({
            E: 8,
            d: 256,
            f: 128,
            selection: { kind: 'topk', k: 2 },
            seed: (seed += 100),
            shared: { f: 128, gated: false },
            backend: 'cuda',
          });
          assert.is(cudaInfo(b.layer).forcedTile, tiles.indexOf(tile), 'the layer read MOE_CUDA_TILE');
          for (const T of [1, 4, 9, 300]) {
            // (a forced tile takes the decode sizes too, where the layer's own choice is the GEMV kernels)
            const { err } = forwardError(b, randn(T * 256, ++seed));
            assert.ok(err < 1e-2, `tile ${tile} T=${T}: relative error ${err}`);
          }
          b.layer.dispose();
        } finally {
          restoreEnv('MOE_CUDA_TILE', outer);
        }
      }
    },
  );

  /** 16 experts of d = f = 128 with a gated shared expert, on the GPU. */
  const gatedLayer = (seed: number) =>
    buildLayer({
      E: 16,
      d: 128,
      f: 128,
      selection: { kind: 'topk', k: 2 },
      seed,
      shared: { f: 64, gated: true },
      backend: 'cuda',
    });

  gpuTest('a CUDA layer disposed with forwards pending: its last drain has every call, later drains fail', async () => {
    const b = gatedLayer(SEED + 390);
    const x = randn(7 * 128, SEED + 391);
    // forwardDevice counts on the device only (host calls are counted by the binding when they return)
    onDevice(x, (input, output) => b.layer.forwardDevice({ input, output, tokens: 7 }));
    assert.is(b.layer.drainTelemetry().calls, 0, 'this drain queues the copy of the device counters');
    const pending = [b.layer.forwardAsync(x), b.layer.forwardAsync(x)];
    b.layer.dispose();
    await Promise.all(pending);
    await new Promise((r) => setImmediate(r)); // the queued dispose ran after them
    const t = b.layer.drainTelemetry();
    assert.is(t.calls, 3, 'the forwardDevice call (its copy had not been read) and the two pending forwards');
    assert.is(t.tokens, 3 * 7);
    assert.throws(() => b.layer.drainTelemetry(), /disposed/);
  });

  gpuTest('deterministic: forward twice and forwardAsync give identical bits; telemetry counts the calls', async () => {
    const b = gatedLayer(SEED + 400);
    const x = randn(200 * 128, SEED + 401);
    const a = b.layer.forward(x);
    const c = b.layer.forward(x);
    const d = await b.layer.forwardAsync(x);
    assert.equal(Array.from(a.output), Array.from(c.output));
    assert.equal(Array.from(a.output), Array.from(d.output));
    assert.equal(Array.from(a.routing.indices), Array.from(d.routing.indices));
    const t = b.layer.drainTelemetry();
    assert.is(t.calls, 3);
    assert.is(t.tokens, 600);
    // the logits and probabilities a forward routed with, as the router gives them
    const opts = { returnLogits: true, returnProbs: true };
    const routed = b.layer.router.route(x, opts);
    for (const r of [b.layer.forward(x, opts), await b.layer.forwardAsync(x, opts)]) {
      for (const key of ['logits', 'probs'] as const) {
        const got = r.routing[key]!;
        assert.is(got.length, 200 * 16);
        const worst = got.reduce((m, v, i) => Math.max(m, Math.abs(v - routed[key]![i])), 0);
        assert.ok(worst <= 1e-6, `${key}: off by ${worst}`);
      }
      assert.equal(Array.from(r.routing.indices), Array.from(a.routing.indices));
    }
    b.layer.dispose();
  });

  /** x in device memory, the output NaN-poisoned, `run(input, output)`, and the output read back; freed after. */
  const onDevice = (x: Float32Array, run: (input: bigint, output: bigint) => void): Float32Array => {
    const addon = native();
    const input = addon.cudaAlloc(x.byteLength);
    const output = addon.cudaAlloc(x.byteLength);
    try {
      addon.cudaCopy(input, x, true);
      addon.cudaCopy(output, new Float32Array(x.length).fill(NaN), true);
      run(input, output);
      const got = new Float32Array(x.length);
      addon.cudaCopy(output, got, false);
      return got;
    } finally {
      addon.cudaFree(input);
      addon.cudaFree(output);
    }
  };

  gpuTest(
    'forwardDevice on device pointers: the bits of forward(), NaN-poisoned output overwritten, counters drained',
    () => {
      const b = gatedLayer(SEED + 450);
      for (const T of [3, 200]) {
        const x = randn(T * 128, SEED + 451 + T);
        const want = b.layer.forward(x).output;
        b.layer.drainTelemetry();
        const got = onDevice(x, (input, output) => b.layer.forwardDevice({ input, output, tokens: T }));
        assert.ok(got.every(Number.isFinite), `T=${T}: forwardDevice left unwritten (NaN) outputs`);
        assert.equal(Array.from(got), Array.from(want), `T=${T}: forwardDevice differs from forward`);
        b.layer.drainTelemetry(); // queues the copy of the device counters (a drain never waits for it)
        b.layer.forward(x); // synchronises the layer's stream, so the copy has landed
        const t = b.layer.drainTelemetry();
        assert.is(t.calls, 2, `T=${T}: the forwardDevice call and the forward`);
        assert.is(t.tokens, 2 * T);
      }
      b.layer.dispose();
    },
  );

  gpuTest(
    'forwardDevice captured in a CUDA graph: its replays write the bits of forward(); the layer works after',
    () => {
      const b = gatedLayer(SEED + 470);
      const handle = (b.layer as unknown as { cudaHandle: NativeCudaLayerHandle }).cudaHandle;
      for (const T of [5, 200]) {
        const x = randn(T * 128, SEED + 471 + T);
        const want = b.layer.forward(x).output;
        b.layer.drainTelemetry();
        const got = onDevice(x, (input, output) => handle.captureForward(input, output, T, 3));
        assert.equal(Array.from(got), Array.from(want), `T=${T}: the graph's output differs from forward`);
        b.layer.drainTelemetry(); // queues the copy of the device counters
        assert.equal(Array.from(b.layer.forward(x).output), Array.from(want), `T=${T}: a forward after the replays`);
        const t = b.layer.drainTelemetry();
        assert.is(t.calls, 5, `T=${T}: the uncaptured warm-up, three replays and the forward`);
      }
      b.layer.dispose();
    },
  );

  gpuTest(
    'fromPretrained with backend cuda: Qwen2-MoE (gated shared expert) and DeepSeek-V3 (groups, bias) layers',
    () => {
      for (const arch of ['qwen2_moe', 'deepseek_v3'] as const) {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-cuda-ck-'));
        try {
          const ck = writeTinyCheckpoint(dir, arch, {
            hiddenSize: 128,
            intermediateSize: 64,
            numExperts: 16,
            topK: 4,
            seed: 3,
          });
          const layer = ck.moeLayers[0];
          const gpu = MoELayer.fromPretrained(dir, { layer, backend: 'cuda' });
          const cpu = MoELayer.fromPretrained(dir, { layer });
          assert.is(gpu.backend, 'cuda');
          assert.is(gpu.dtype, 'bf16');
          const T = 40;
          const x = randn(T * 128, SEED + 600);
          const a = gpu.forward(x);
          const b = cpu.forward(x);
          // Tokens routed alike (a logit within rounding of a tie may go either way) must agree to bf16 precision.
          const K = a.routing.maxK;
          const same: number[] = [];
          for (let t = 0; t < T; t++) {
            const row = (r: typeof a) => Array.from(r.routing.indices.subarray(t * K, t * K + K)).join();
            if (row(a) === row(b)) same.push(t);
          }
          assert.ok(same.length >= T * 0.9, `${arch}: only ${same.length} of ${T} tokens routed alike`);
          const pick = (y: Float32Array) =>
            Float32Array.from(same.flatMap((t) => Array.from(y.subarray(t * 128, t * 128 + 128))));
          const err = relativeError(pick(a.output), pick(b.output));
          assert.ok(err < 1e-2, `${arch}: CUDA against CPU fp32, relative error ${err}`);
          gpu.dispose();
          cpu.dispose();
        } finally {
          fs.rmSync(dir, { recursive: true, force: true });
        }
      }
    },
  );

  gpuTest('bad input on the CUDA backend: clear errors, nothing crashes', () => {
    const b = buildLayer({ E: 8, d: 64, f: 64, selection: { kind: 'topk', k: 2 }, seed: SEED + 500, backend: 'cuda' });
    const x = randn(4 * 64, SEED + 501);
    x[70] = NaN;
    assert.throws(
      () => b.layer.forward(x),
      (e: unknown) => e instanceof ValidationError && /not finite/.test((e as Error).message),
    );
    assert.throws(
      () => b.layer.forward(new Float32Array(65)),
      (e: unknown) => e instanceof ValidationError,
    );
    assert.throws(
      () => b.layer.forwardDevice({ input: 0n, output: 16n, tokens: 1 }),
      (e: unknown) => e instanceof ValidationError && /device pointer/.test((e as Error).message),
    );
    assert.throws(
      () => new MoELayer({ router: b.layer.router, experts: b.experts, dtype: 'fp32' }),
      (e: unknown) => e instanceof ValidationError && /bf16/.test((e as Error).message),
    );
    // Pointers CUDA does not know as device memory are refused before any kernel could fault on them.
    assert.throws(
      () => b.layer.forwardDevice({ input: 4096n, output: 4096n, tokens: 1 }),
      (e: unknown) => e instanceof BackendError && /device memory|CUDA knows/.test((e as Error).message),
    );
    const addon = native();
    const small = addon.cudaAlloc(64);
    try {
      assert.throws(
        () => b.layer.forwardDevice({ input: small, output: small, tokens: 16 }),
        (e: unknown) =>
          e instanceof BackendError &&
          /allocation ends \d+ bytes after the pointer, 4096 are needed/.test((e as Error).message),
      );
    } finally {
      addon.cudaFree(small);
    }
    b.layer.dispose();
    assert.throws(
      () => b.layer.forward(randn(64, 1)),
      (e: unknown) => (e as Error).message.includes('disposed'),
    );
  });
}

test.run();
