/**
 * Bad input gets a clear error and no crash: wrong lengths or types, detached buffers, NaN/Inf, k > E, p outside
 * (0,1], groups that don't divide E, absurd sizes, unknown model types.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  cudaStatus,
  DynamicMoEError,
  ExpertDispatchError,
  MoELayer,
  Router,
  RouterConfigurationError,
  ThresholdScheduleEstimator,
  ValidationError,
} from '../lib';
import { requireFinite } from '../lib/validate';
import { randn } from './helpers/random';

const E = 8;
const d = 16;
const gateWeight = randn(E * d, 1);
const make = (extra: object) => new Router({ numExperts: E, hiddenSize: d, gateWeight, ...extra });

function throwsWith(fn: () => unknown, cls: new (...a: never[]) => Error, pattern: RegExp) {
  assert.throws(fn, (e: Error) => {
    assert.instance(e, cls);
    assert.instance(e, DynamicMoEError);
    assert.match(e.message, pattern);
    return true;
  });
}

test('configuration errors name the option, the value and the expectation', () => {
  throwsWith(
    () => make({ selection: { kind: 'topk', k: 9 } }),
    RouterConfigurationError,
    /selection\.k: expected an integer in \[1, 8\], got 9/,
  );
  throwsWith(
    () => make({ selection: { kind: 'topp', p: 0 } }),
    RouterConfigurationError,
    /selection\.p: expected a number in \(0, 1\], got 0/,
  );
  throwsWith(() => make({ selection: { kind: 'topp', p: 1.5 } }), RouterConfigurationError, /selection\.p/);
  throwsWith(() => make({ selection: { kind: 'threshold', tau: -1 } }), RouterConfigurationError, /selection\.tau/);
  throwsWith(
    () => make({ selection: { kind: 'dynamic', minK: 3, maxK: 2 } }),
    RouterConfigurationError,
    /selection\.minK/,
  );
  throwsWith(
    () => make({ selection: { kind: 'nearest' } }),
    RouterConfigurationError,
    /selection\.kind: expected one of/,
  );
  throwsWith(
    () => make({ groups: { nGroup: 3, topkGroup: 1 } }),
    RouterConfigurationError,
    /nGroup: 3 does not divide numExperts=8/,
  );
  throwsWith(
    () => make({ groups: { nGroup: 4, topkGroup: 1 }, selection: { kind: 'topk', k: 3 } }),
    RouterConfigurationError,
    /selection\.k: expected an integer in \[1, 2\]/,
  );
  throwsWith(
    () => make({ scoring: 'relu' }),
    RouterConfigurationError,
    /scoring: expected one of 'softmax', 'sigmoid', got "relu"/,
  );
  throwsWith(() => make({ scale: 0 }), RouterConfigurationError, /scale/);
  throwsWith(
    () => new Router({ numExperts: 1e9, hiddenSize: d, gateWeight }),
    RouterConfigurationError,
    /numExperts: expected an integer in \[1, 65536\], got 1000000000/,
  );
  throwsWith(
    () => new Router({ numExperts: E, hiddenSize: 2 ** 40, gateWeight }),
    RouterConfigurationError,
    /hiddenSize/,
  );
  throwsWith(
    () => new Router({ numExperts: E, hiddenSize: d, gateWeight: new Float32Array(5) }),
    RouterConfigurationError,
    /gateWeight: expected 128 elements, got 5/,
  );
  throwsWith(
    () => new Router({ numExperts: E, hiddenSize: d, gateWeight: new Float64Array(E * d) as unknown as Float32Array }),
    RouterConfigurationError,
    /gateWeight: expected a Float32Array, got Float64Array/,
  );
  const nanGate = randn(E * d, 2);
  nanGate[7] = NaN;
  throwsWith(
    () => new Router({ numExperts: E, hiddenSize: d, gateWeight: nanGate }),
    RouterConfigurationError,
    /gateWeight: element 7 is NaN/,
  );
  throwsWith(() => make({ bias: new Float32Array(3) }), RouterConfigurationError, /bias: expected 8 elements/);
  throwsWith(
    () => Router.fromConfig({ model_type: 'llama', hidden_size: d }, gateWeight),
    RouterConfigurationError,
    /unknown "llama"/,
  );
  throwsWith(() => Router.fromConfig('mixtral', gateWeight), RouterConfigurationError, /hfConfig/);
});

test('input errors: types, lengths, detached buffers, NaN and Inf', () => {
  const router = make({ selection: { kind: 'topk', k: 2 } });
  throwsWith(() => router.route(new Float32Array(15)), ValidationError, /x: expected a non-empty \[T, 16\]/);
  throwsWith(() => router.route(new Float32Array(0)), ValidationError, /x: expected a non-empty/);
  throwsWith(
    () => router.route(Array.from(randn(16, 3)) as unknown as Float32Array),
    ValidationError,
    /x: expected a Float32Array, got array\(16\)/,
  );
  const detached = randn(32, 4);
  structuredClone(detached.buffer, { transfer: [detached.buffer as ArrayBuffer] });
  throwsWith(() => router.route(detached), ValidationError, /detached/);
  for (const bad of [NaN, Infinity, -Infinity]) {
    const x = randn(3 * d, 5);
    x[d + 4] = bad;
    throwsWith(() => router.route(x), ValidationError, /token 1 are not finite/);
  }
  const logits = randn(2 * E, 6);
  logits[3] = NaN;
  throwsWith(() => router.routeLogits(logits), ValidationError, /token 0 are not finite/);
  const dynamic = make({ selection: { kind: 'dynamic', minK: 1, maxK: 3 } });
  throwsWith(
    () => dynamic.route(randn(2 * d, 7), { complexity: Float32Array.from([0.5, 1.5]) }),
    ValidationError,
    /complexity: element 1 is 1\.5/,
  );
  throwsWith(
    () => dynamic.route(randn(2 * d, 7), { complexity: new Float32Array(3) }),
    ValidationError,
    /complexity: expected 2 elements/,
  );
  const norms = make({ selection: { kind: 'dynamic', minK: 1, maxK: 3, estimator: 'gradient_norm' } });
  throwsWith(() => norms.routeLogits(randn(2 * E, 8)), ValidationError, /gradient_norm: needs the hidden states x/);
  assert.is(norms.routeLogits(randn(2 * E, 8), { complexity: Float32Array.from([0.2, 0.9]) }).tokens, 2);
  const t = router.drainTelemetry();
  assert.is(t.errors.validation, 4);
  assert.is(t.errors.non_finite, 4);
});

test('weights: a NaN or infinity anywhere is named by its element, finite extremes pass', () => {
  for (let n = 1; n <= 9; n++) {
    for (let at = 0; at < n; at++) {
      for (const bad of [NaN, Infinity, -Infinity]) {
        const arr = Float32Array.from({ length: n }, (_, i) => (i % 2 ? -3.4e38 : 1e-45));
        arr[at] = bad;
        throwsWith(() => requireFinite('w', arr), ValidationError, new RegExp(`^w: element ${at} is ${bad}, expected`));
      }
    }
    requireFinite(
      'w',
      Float32Array.from({ length: n }, (_, i) => [-0, 3.4e38, -3.4e38, 1e-45][i % 4]),
    );
  }
});

test('rejections are async too, and the router keeps working afterwards', async () => {
  const router = make({ selection: { kind: 'topk', k: 2 } });
  const x = randn(2 * d, 8);
  x[0] = NaN;
  let rejected: unknown;
  await router.routeAsync(x).catch((e) => (rejected = e));
  assert.instance(rejected, ValidationError);
  const ok = await router.routeAsync(randn(4 * d, 9));
  assert.is(ok.k.length, 4);
});

test('null and misspelled options are package errors, never TypeErrors or silent defaults', async () => {
  throwsWith(() => make({ groups: null }), RouterConfigurationError, /groups: expected \{ nGroup, topkGroup/);
  throwsWith(
    () => make({ selection: { kind: 'dynamic', minK: 1, maxK: 4, estimator: null } }),
    RouterConfigurationError,
    /estimator: expected a name/,
  );
  for (const [estimator, pattern] of [
    [
      { name: 'router_entropy', calibration: 'quantle' },
      /calibration: expected one of 'zscore', 'quantile', 'none', got "quantle"/,
    ],
    [{ name: 'gradient_norm', norm: 'l3' }, /gradient_norm\.norm: expected one of 'l2', 'l1'/],
    [{ name: 'attention_entropy', reduce: 'maximum' }, /attention_entropy\.reduce: expected one of 'mean', 'max'/],
  ] as const)
    throwsWith(
      () => make({ selection: { kind: 'dynamic', minK: 1, maxK: 4, estimator } }),
      RouterConfigurationError,
      pattern,
    );
  const router = make({});
  const x = randn(2 * d, 3);
  throwsWith(() => router.route(x, null as never), ValidationError, /options: expected an object/);
  throwsWith(() => router.routeLogits(randn(2 * E, 4), 7 as never), ValidationError, /options: expected an object/);
  await router.routeAsync(x, null as never).then(
    () => assert.unreachable('resolved'),
    (e: Error) => assert.instance(e, ValidationError),
  );
  throwsWith(
    () => new MoELayer({ router, experts: () => undefined as never }),
    ValidationError,
    /experts\[0\]: expected \{ w1, w3, w2 \}, got undefined/,
  );
  const expert = { w1: randn(4 * d, 5), w3: randn(4 * d, 6), w2: randn(d * 4, 7) };
  throwsWith(
    () => new MoELayer({ router, experts: () => expert, dtype: 'fp16' as never }),
    ValidationError,
    /dtype: expected one of 'fp32', 'bf16'/,
  );
});

test('a context cannot replace what the router knows; estimator state handed out cannot be corrupted', () => {
  const router = make({ selection: { kind: 'dynamic', minK: 1, maxK: 4, estimator: 'gradient_norm' } });
  router.estimator!.calibrate(Array.from({ length: 50 }, (_, i) => 2 + i / 10)); // frozen: calls do not move it
  const x = randn(3 * d, 8);
  const plain = router.route(x);
  // tokens: 1 from a context once made the estimator score one token of three
  const withContext = router.route(x, { context: { tokens: 1 } as never });
  assert.equal(Array.from(withContext.k), Array.from(plain.k));
  const schedule = new ThresholdScheduleEstimator([256, 64]);
  assert.equal([...schedule.boundaries], [64, 256]);
  assert.throws(() => (schedule.boundaries as number[]).push(1));
  const status = cudaStatus();
  (status as { available: boolean }).available = !status.available;
  assert.is.not(cudaStatus().available, status.available, 'cudaStatus() hands out a copy');
});

test('calibrating on a long context (300,000 tokens) works', () => {
  const router = make({ selection: { kind: 'dynamic', minK: 1, maxK: 4, estimator: 'gradient_norm' } });
  const T = 300_000;
  const x = new Float32Array(T * d);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37) * (1 + (i % 7));
  router.estimator!.calibrate({ x, tokens: T, hiddenSize: d });
  assert.ok(router.estimator!.calibrator.calibrated);
});

test('dispose(): pending async calls complete, new calls are refused, layers built on the router keep working', async () => {
  const router = make({});
  const x = randn(4 * d, 9);
  const expected = Array.from(router.route(x).indices);
  const expert = { w1: randn(4 * d, 10), w3: randn(4 * d, 11), w2: randn(d * 4, 12) };
  const layer = new MoELayer({ router, experts: () => expert });
  const pending = router.routeAsync(x);
  router.dispose();
  assert.equal(Array.from((await pending).indices), expected);
  throwsWith(() => router.route(x), ExpertDispatchError, /disposed/);
  throwsWith(() => router.routeLogits(randn(4 * E, 13)), ExpertDispatchError, /disposed/);
  await router.routeAsync(x).then(
    () => assert.unreachable('resolved'),
    (e: Error) => assert.instance(e, ExpertDispatchError),
  );
  assert.equal(Array.from(layer.forward(x).routing.indices), expected);
  router.dispose(); // twice is fine
  layer.dispose();
  // a dynamic rule whose estimator reads the router logits: the layer still computes them through the router
  const dynamic = make({ selection: { kind: 'dynamic', minK: 1, maxK: 4 } });
  dynamic.estimator!.calibrate(Array.from({ length: 20 }, (_, i) => i / 20));
  const dynamicLayer = new MoELayer({ router: dynamic, experts: () => expert });
  const before = Array.from(dynamicLayer.forward(x).routing.k);
  dynamic.dispose();
  assert.equal(Array.from(dynamicLayer.forward(x).routing.k), before);
  throwsWith(() => dynamic.logits(x), ExpertDispatchError, /disposed/);
  dynamicLayer.dispose();
});

test.run();
