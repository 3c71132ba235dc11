/**
 * Complexity estimators: native raw signals against the float64 reference, calibration that spreads scores over
 * [0,1] instead of saturating, the position schedule, custom scores, and the DynamicRouter port.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  AttentionEntropyEstimator,
  Calibrator,
  createEstimator,
  DynamicRouter,
  GradientNormEstimator,
  PerplexityProxyEstimator,
  RouterEntropyEstimator,
  ThresholdScheduleEstimator,
  ValidationError,
} from '../lib';
import { referenceAttentionEntropy, referenceLogitEntropy, referenceRowNorms } from '../lib/reference/routing';
import { freshSeed, randn, randu } from './helpers/random';

const SEED = freshSeed();
console.log(`estimators.test seed ${SEED}`);

function close(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string) {
  assert.is(a.length, b.length);
  for (let i = 0; i < a.length; i++)
    assert.ok(Math.abs(a[i] - b[i]) <= tol * Math.max(1, Math.abs(b[i])), `${what}[${i}]: ${a[i]} vs ${b[i]}`);
}

test('raw signals match the reference: norms, router entropy, attention entropy, perplexity proxy', () => {
  const T = 37;
  const d = 96;
  const x = randn(T * d, SEED);
  for (const norm of ['l2', 'l1'] as const) {
    close(
      new GradientNormEstimator(norm).raw({ x, tokens: T, hiddenSize: d }),
      referenceRowNorms(x, T, d, norm === 'l1' ? 1 : 2),
      1e-5,
      norm,
    );
  }
  const E = 60;
  const logits = randn(T * E, SEED + 1, 2);
  close(
    new RouterEntropyEstimator('none').raw({ x, tokens: T, hiddenSize: d, logits, numExperts: E }),
    referenceLogitEntropy(logits, T, E),
    1e-5,
    'router entropy',
  );
  const V = 1000;
  const lm = randn(T * V, SEED + 2, 3);
  close(
    new PerplexityProxyEstimator(0.7).raw({ x, tokens: T, hiddenSize: d, lmLogits: lm }),
    referenceLogitEntropy(lm, T, V, 0.7),
    1e-5,
    'perplexity',
  );
  const H = 4;
  const S = 50;
  const attention = randu(H * T * S, SEED + 3, 0.01, 1);
  for (const reduce of ['mean', 'max'] as const) {
    close(
      new AttentionEntropyEstimator(reduce).raw({ x, tokens: T, hiddenSize: d, attention, heads: H }),
      referenceAttentionEntropy(attention, H, T, S, reduce),
      1e-5,
      `attention ${reduce}`,
    );
  }
});

test('NaN, Inf and negative weights in an estimator input are a ValidationError naming the token, as the reference has no value there', () => {
  const T = 9;
  const d = 16;
  const x = randn(T * d, SEED + 20);
  const bad = (n: number, seed: number) => 1 + Math.floor(randu(1, seed)[0] * (n - 2));
  for (const [value, where] of [
    [NaN, 'first'],
    [NaN, 'inside'],
    [Infinity, 'inside'],
    [-Infinity, 'inside'],
  ] as const) {
    const t = Math.floor(randu(1, SEED + 21)[0] * T);
    const pos = (n: number) => (where === 'first' ? 0 : bad(n, SEED + 22));
    // perplexity proxy: -Inf is a masked logit (allowed), NaN and +Inf are not
    const V = 40;
    const lm = randn(T * V, SEED + 23, 2);
    lm[t * V + pos(V)] = value;
    const lmRef = referenceLogitEntropy(lm, T, V);
    const perplexity = new PerplexityProxyEstimator(1);
    const ctx = { x, tokens: T, hiddenSize: d, lmLogits: lm };
    if (value === -Infinity) {
      assert.ok(Number.isFinite(lmRef[t]));
      close(perplexity.raw(ctx), lmRef, 1e-5, 'masked perplexity');
    } else {
      assert.ok(Number.isNaN(lmRef[t]) && Number.isNaN(perplexity.raw(ctx)[t]), `${value} at ${where}`);
      assert.throws(
        () => perplexity.estimate(ctx),
        (e: Error) => e instanceof ValidationError && new RegExp(`signal of token ${t} is NaN`).test(e.message),
      );
    }
    // attention: any non-finite weight
    const S = 12;
    const H = 2;
    const attention = randu(H * T * S, SEED + 24, 0.01, 1);
    attention[(1 * T + t) * S + pos(S)] = value;
    for (const reduce of ['mean', 'max'] as const) {
      const est = new AttentionEntropyEstimator(reduce);
      const actx = { x, tokens: T, hiddenSize: d, attention, heads: H };
      assert.ok(Number.isNaN(referenceAttentionEntropy(attention, H, T, S, reduce)[t]));
      assert.ok(Number.isNaN(est.raw(actx)[t]), `attention ${reduce} ${value} at ${where}`);
      assert.throws(
        () => est.estimate(actx),
        (e: Error) => e instanceof ValidationError && /attention_entropy/.test(e.message),
      );
    }
    // norms: NaN and Inf in the row
    const xs = Float32Array.from(x);
    xs[t * d + pos(d)] = value;
    const norms = new GradientNormEstimator('l2');
    assert.ok(
      !Number.isFinite(referenceRowNorms(xs, T, d, 2)[t]) &&
        !Number.isFinite(norms.raw({ x: xs, tokens: T, hiddenSize: d })[t]),
    );
    assert.throws(
      () => norms.estimate({ x: xs, tokens: T, hiddenSize: d }),
      (e: Error) => e instanceof ValidationError,
    );
  }
  // a negative attention weight is no distribution either
  const attention = randu(T * 6, SEED + 25, 0.01, 1);
  attention[6 * 2 + 1] = -0.5;
  assert.ok(Number.isNaN(referenceAttentionEntropy(attention, 1, T, 6, 'mean')[2]));
  assert.throws(
    () => new AttentionEntropyEstimator('mean').estimate({ x, tokens: T, hiddenSize: d, attention }),
    (e: Error) => e instanceof ValidationError && /token 2 .*negative attention weight/.test(e.message),
  );
  // a row of zeros and a fully masked row are defined: entropy 0
  attention.fill(0, 0, 6);
  const lm = randn(T * 5, SEED + 26);
  lm.fill(-Infinity, 5, 10);
  assert.is(
    new AttentionEntropyEstimator('mean').raw({
      x,
      tokens: T,
      hiddenSize: d,
      attention: attention.fill(0.5, 12, 18),
    })[0],
    0,
  );
  assert.is(new PerplexityProxyEstimator(1).raw({ x, tokens: T, hiddenSize: d, lmLogits: lm })[1], 0);
  assert.is(referenceLogitEntropy(lm, T, 5)[1], 0);
});

test('zscore calibration spreads entropies over [0,1] (no saturation), quantile follows the samples', () => {
  const T = 2000;
  const E = 64;
  const logits = randn(T * E, SEED + 4, 0.3);
  const est = new RouterEntropyEstimator('zscore');
  const ctx = { x: new Float32Array(0), tokens: T, hiddenSize: 1, logits, numExperts: E };
  const raw = est.raw(ctx);
  const rawMin = Math.min(...raw);
  assert.ok(rawMin > 0.9, `near-uniform routers have entropies near 1 (min ${rawMin}): a fixed map would pin k`);
  const c = est.calibrate(raw).estimate(ctx);
  const below = c.filter((v) => v < 0.25).length / T;
  const above = c.filter((v) => v > 0.75).length / T;
  assert.ok(below > 0.1 && above > 0.1, `calibrated scores should spread: ${below} below 0.25, ${above} above 0.75`);
  const q = new Calibrator('quantile');
  q.fit(raw);
  const qc = q.apply(raw);
  const median = [...qc].sort((a, b) => a - b)[T >> 1];
  assert.ok(Math.abs(median - 0.5) < 0.01, `quantile median ${median}`);
});

test('running statistics are used before calibrate(), then frozen', () => {
  const est = new GradientNormEstimator('l2');
  const x1 = randn(64 * 8, SEED + 5);
  const ctx = { x: x1, tokens: 64, hiddenSize: 8 };
  const first = est.estimate(ctx);
  assert.ok(Math.min(...first) < 0.2 && Math.max(...first) > 0.8);
  est.calibrate(ctx);
  assert.ok(est.calibrator.calibrated);
  assert.equal(Array.from(est.estimate(ctx)), Array.from(est.estimate(ctx)), 'frozen calibration is reproducible');
});

test('the calibration handed to the CUDA kernel, and the running statistics it hands back', () => {
  const raw = randu(50, SEED + 6);
  const none = new Calibrator('none').deviceState()!;
  assert.is(none.calibration, 0);
  const quantile = new Calibrator('quantile');
  assert.is(quantile.deviceState(), undefined, 'quantile needs calibrate() first (the host path says so)');
  quantile.fit(raw);
  const q = quantile.deviceState()!;
  assert.is(q.calibration, 3);
  assert.ok(q.knots && q.knots.length === 50 && q.knots[0] <= q.knots[49]);
  // Running zscore: the state is (count, mean, M2); absorbing a merged state continues the same statistics.
  const running = new Calibrator('zscore');
  running.apply(raw.subarray(0, 20));
  const s = running.deviceState()!;
  assert.is(s.calibration, 1);
  assert.is(s.state[0], 20);
  const all = new Calibrator('zscore');
  all.apply(raw.subarray(0, 30));
  // What the device would return after a batch of the next 10 values (Chan's merge, as cuda/gating.cu).
  const batch = Array.from(raw.subarray(20, 30));
  const bMean = batch.reduce((a, v) => a + v, 0) / batch.length;
  const bM2 = batch.reduce((a, v) => a + (v - bMean) ** 2, 0);
  const n = s.state[0] + 10;
  const delta = bMean - s.state[1];
  running.absorbDeviceState(
    Float64Array.of(n, s.state[1] + (delta * 10) / n, s.state[2] + bM2 + (delta * delta * s.state[0] * 10) / n),
  );
  const [a, b] = [running.deviceState()!.state, all.deviceState()!.state];
  for (let i = 0; i < 3; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-12 * Math.max(1, Math.abs(b[i])), `state ${i}`);
  // Two calls of one estimator overlap: both start from `sent`; the other finishes first and folds its 15 values
  // in; then this call's device state (sent + its own 10) arrives. Its batch is merged in, not lost.
  const shared = new Calibrator('zscore');
  shared.apply(raw.subarray(0, 20));
  const sent = Float64Array.from(shared.deviceState()!.state);
  const device = new Calibrator('zscore');
  device.apply(raw.subarray(0, 20));
  device.apply(raw.subarray(20, 30)); // what the device makes of sent and this call's batch
  shared.apply(raw.subarray(30, 45)); // the other call, absorbed first
  shared.absorbDeviceState(Float64Array.from(device.deviceState()!.state), sent);
  const every = new Calibrator('zscore');
  every.apply(raw.subarray(0, 45));
  const [merged, want] = [shared.deviceState()!.state, every.deviceState()!.state];
  assert.is(merged[0], 45, 'every value counted once');
  for (let i = 1; i < 3; i++)
    assert.ok(Math.abs(merged[i] - want[i]) <= 1e-12 * Math.max(1, Math.abs(want[i])), `merged state ${i}`);
  const probe = Float32Array.of(0.1, 0.5, 0.9);
  assert.equal(Array.from(running.apply(probe.slice())), Array.from(all.apply(probe.slice())));
  // A frozen zscore is passed as such, and absorbing never changes it.
  running.fit(raw);
  const frozen = running.deviceState()!;
  assert.is(frozen.calibration, 2);
  running.absorbDeviceState(Float64Array.of(1, 2, 3));
  assert.equal(Array.from(running.deviceState()!.state), Array.from(frozen.state));
});

test('threshold schedule and custom scores', () => {
  const sched = new ThresholdScheduleEstimator([4, 2]);
  const out = sched.estimate({ x: new Float32Array(6), tokens: 6, hiddenSize: 1 });
  assert.equal(Array.from(out), [0, 0, 0.5, 0.5, 1, 1]);
  const custom = createEstimator({ name: 'custom', fn: (ctx) => new Float32Array(ctx.tokens).fill(0.25) });
  assert.equal(Array.from(custom.estimate({ x: new Float32Array(3), tokens: 3, hiddenSize: 1 })), [0.25, 0.25, 0.25]);
  assert.throws(
    () =>
      createEstimator({ name: 'custom', scores: new Float32Array(2) }).estimate({
        x: new Float32Array(3),
        tokens: 3,
        hiddenSize: 1,
      }),
    (e: Error) => e instanceof ValidationError,
  );
  assert.throws(
    () => new AttentionEntropyEstimator().raw({ x: new Float32Array(2), tokens: 2, hiddenSize: 1 }),
    /context\.attention/,
  );
});

test('DynamicRouter routes between minExperts and maxExperts and reports usage', () => {
  const router = new DynamicRouter({ inputDim: 32, numExperts: 8, minExperts: 1, maxExperts: 4, seed: 7 });
  const x = randn(200 * 32, SEED + 6);
  const r = router.route(x);
  assert.ok(r.numExpertsPerToken.every((k) => k >= 1 && k <= 4));
  assert.ok(new Set(r.numExpertsPerToken).size > 1, 'k varies with complexity');
  assert.is(
    r.routingInfo.totalExpertCalls,
    r.numExpertsPerToken.reduce((a, b) => a + b, 0),
  );
  assert.ok(Math.abs(r.routingInfo.flopReduction - (1 - r.routingInfo.avgExpertsPerToken / 4)) < 1e-12);
  const stats = router.getExpertUsageStats();
  assert.is(stats.totalTokens, 200);
  assert.ok(stats.loadBalanceScore > 0 && stats.loadBalanceScore <= 1);
  const noisy = new DynamicRouter({
    inputDim: 32,
    numExperts: 8,
    maxExperts: 2,
    routingStrategy: 'threshold',
    noiseFactor: 0.5,
    seed: 7,
  });
  const n = noisy.route(x);
  assert.ok(n.numExpertsPerToken.every((k) => k >= 1 && k <= 2));
});

test.run();
