/**
 * The public API against random, often malformed arguments: Router options (odd sizes, every selection rule with
 * odd parameters, groups, biases), inputs (wrong lengths, Float64Array, offset subarrays, SharedArrayBuffer,
 * detached buffers, NaN/Inf, non-arrays), route options, MoELayer weights and dtypes, sync and async calls, a
 * buffer detached while a forward runs. Every call either returns a well-formed result or throws one of the
 * package's errors — never a raw TypeError/RangeError or a crash (`bash scripts/test-sanitized.sh` runs this
 * under ASan/UBSan and TSan too). Fresh seed per run; a failure prints the call.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MoELayer, Router } from '../lib';
import { assertCleanRefusal } from './helpers/errors';
import { freshSeed, randn, rng } from './helpers/random';

const SEED = freshSeed();
console.log(`fuzz-api.test seed ${SEED}`);
const next = rng(SEED);
const pick = <T>(values: readonly T[]): T => values[Math.floor(next() * values.length)];
const ODD = [0, -1, 1, 2, 3, 7, 64, 1.5, NaN, Infinity, -Infinity, 1e9, 2 ** 31, null, undefined, '2', true, [], {}];
/** How often a value is made wrong: chosen per iteration, so some calls are clean and reach the kernels. */
let chaos = 0.1;
/** `good`, or an odd value at the chaos rate. */
const num = (good: number): unknown => (next() < chaos ? pick(ODD) : good);

/** A Float32Array of n values most of the time, else something close to it that is wrong. */
function values(n: number): unknown {
  if (next() >= chaos) {
    const a = randn(n, Math.floor(next() * 2 ** 30));
    if (n > 0 && next() < 0.05) a[Math.floor(next() * n)] = pick([NaN, Infinity, -Infinity, 3e38]);
    return a;
  }
  const kind = 0.75 + 0.25 * next();
  if (kind < 0.8) return randn(Math.max(0, n + pick([-1, 1, -n, 7])), 1);
  if (kind < 0.83) return new Float64Array(n);
  if (kind < 0.86) return randn(n + 3, 2).subarray(1, 1 + n);
  if (kind < 0.89) return new Float32Array(new SharedArrayBuffer(4 * n)).fill(0.25);
  if (kind < 0.92) return detached(randn(n, 3));
  if (kind < 0.95) return new Uint8Array(4 * n);
  return pick(ODD);
}

/** E4M3 bytes of an [rows, cols] matrix most of the time (now and then a NaN code), else something wrong. */
function e4m3Bytes(n: number): unknown {
  if (next() >= chaos) {
    const a = Uint8Array.from({ length: n }, () => Math.floor(next() * 256) & 0x7e);
    if (n > 0 && next() < 0.05) a[Math.floor(next() * n)] = pick([0x7f, 0xff]);
    return a;
  }
  return pick([new Uint8Array(Math.max(0, n - 1)), new Float32Array(n), detachedBytes(n), ...ODD]);
}

function detachedBytes(n: number): Uint8Array {
  const a = new Uint8Array(n);
  structuredClone(a.buffer, { transfer: [a.buffer] });
  return a;
}

function detached(a: Float32Array): Float32Array {
  structuredClone(a.buffer, { transfer: [a.buffer as ArrayBuffer] });
  return a;
}

function selection(E: number): unknown {
  if (next() < chaos / 3) return pick(ODD);
  switch (pick(['topk', 'topp', 'threshold', 'dynamic', 'gptOss'])) {
    case 'topk':
      return { kind: 'topk', k: num(1 + Math.floor(next() * E)) };
    case 'topp':
      return { kind: 'topp', p: num(next()), minK: pick([undefined, num(1)]), maxK: pick([undefined, num(E)]) };
    case 'threshold':
      return {
        kind: 'threshold',
        tau: num(next() * 0.3),
        minK: pick([undefined, num(1)]),
        maxK: pick([undefined, num(E)]),
      };
    case 'dynamic': {
      const estimator =
        next() < chaos
          ? pick(['bogus', { kind: 'router_entropy' }, 5])
          : pick([undefined, 'router_entropy', 'gradient_norm']);
      return { kind: 'dynamic', minK: num(1), maxK: num(Math.min(E, 3)), estimator };
    }
    case 'gptOss':
      return { kind: 'gptOss', k: num(Math.min(2, E)) };
  }
}

/** Runs `call`; a package error is a clean refusal, anything else fails the test naming the call. */
async function returnsOrRefuses(what: string, call: () => unknown): Promise<boolean> {
  try {
    await call();
    return true;
  } catch (err) {
    assertCleanRefusal(err, () => what);
    return false;
  }
}

test('Router, route, routeLogits, MoELayer and forward on random arguments return or throw package errors', async () => {
  const seen = { routers: 0, routes: 0, forwards: 0 };
  for (let i = 0; i < 400; i++) {
    chaos = pick([0, 0.03, 0.1, 0.3]);
    const E = pick([1, 2, 4, 8, 60]);
    const d = pick([1, 3, 16, 33]);
    const opts: Record<string, unknown> = {
      numExperts: num(E),
      hiddenSize: num(d),
      gateWeight: values(E * d),
      selection: selection(E),
    };
    if (next() < 0.3) opts.scoring = next() < chaos ? pick(['x', null]) : pick(['softmax', 'sigmoid']);
    if (next() < 0.2) opts.bias = values(E);
    if (next() < 0.2) opts.logitBias = values(E);
    /** an option: a valid value, or at the chaos rate an odd one */
    const option = (valid: unknown[], odd: unknown[]) => pick(next() < chaos ? odd : valid);
    if (next() < 0.2)
      opts.groups = option(
        [{ nGroup: E % 2 === 0 ? 2 : 1, topkGroup: 1 }],
        [{ nGroup: 3, topkGroup: 1 }, { nGroup: 2, topkGroup: 3 }, null, 5],
      );
    if (next() < 0.2) opts.normalize = option([true, false], ['yes', 1]);
    if (next() < 0.2) opts.scale = option([2.5, 0.5], [0, -1, NaN, Infinity]);
    if (next() < 0.2) opts.threads = option([1, 2], [0, -1, 64, 1.5]);
    const described = () =>
      JSON.stringify(opts, (_, v) =>
        ArrayBuffer.isView(v) ? `${v.constructor.name}(${(v as Float32Array).length})` : v,
      );
    let router: Router | undefined;
    await returnsOrRefuses(`new Router(${described()})`, () => (router = new Router(opts as never)));
    if (!router) continue;
    seen.routers++;
    for (let j = 0; j < 3; j++) {
      const T = pick([0, 1, 3, 17]);
      const routeOpts: Record<string, unknown> = {};
      if (next() < 0.2) routeOpts.returnLogits = true;
      if (next() < 0.2) routeOpts.returnProbs = true;
      if (next() < 0.2) routeOpts.complexity = values(T);
      if (next() < 0.1) routeOpts.context = pick([{ positions: new Int32Array(T) }, null, 5, { tokens: 3 }]);
      const x = values(T * d);
      const what = `route T=${T} on ${described()}`;
      const routed = await returnsOrRefuses(what, async () => {
        const r = next() < 0.5 ? router!.route(x as never, routeOpts) : await router!.routeAsync(x as never, routeOpts);
        assert.is(r.indices.length, r.tokens * r.maxK, `${what}: indices`);
        for (let t = 0; t < r.tokens; t++) assert.ok(r.k[t] >= 0 && r.k[t] <= r.maxK, `${what}: k`);
      });
      if (routed) seen.routes++;
      await returnsOrRefuses(what, () => router!.routeLogits(values(T * E) as never, routeOpts));
      if (next() < 0.5) continue;
      const f = pick([1, 4, 7]);
      let layer: MoELayer | undefined;
      const one = () => ({ w1: values(f * d), w3: values(f * d), w2: values(d * f) });
      // E4M3 weights with their scales per row and 128 columns (an 'fp8' layer packs them; others refuse them)
      const matrix = (rows: number, cols: number) => ({
        data: e4m3Bytes(rows * cols),
        scales: values(rows * Math.ceil(cols / 128)),
      });
      const oneE4m3 = () => ({ e4m3: { w1: matrix(f, d), w3: matrix(f, d), w2: matrix(d, f) } });
      const experts = pick([
        () => ({ w1: values(E * f * d), w3: values(E * f * d), w2: values(E * d * f), stacked: true }),
        () => Array.from({ length: E }, one),
        () => one,
        () => Array.from({ length: E }, oneE4m3),
        () => pick(ODD),
      ])();
      await returnsOrRefuses(`new MoELayer on ${described()}`, () => {
        layer = new MoELayer({
          router: router!,
          experts: experts as never,
          dtype: pick(['fp32', 'bf16', 'fp8', 'fp32', 'x']) as never,
          intermediateSize: next() < 0.8 ? undefined : (num(f) as never),
          staticK: next() < 0.8 ? undefined : (num(2) as never),
        });
      });
      if (!layer) continue;
      const forwarded = await returnsOrRefuses(`forward T=${T} on ${described()}`, async () => {
        const input = values(T * d);
        const pending = layer!.forwardAsync(input as never, routeOpts);
        const plain = input instanceof Float32Array && !(input.buffer instanceof SharedArrayBuffer);
        if (plain && input.length > 0 && next() < 0.3) detached(input);
        const y = await pending;
        assert.is(y.output.length, y.routing.tokens * d);
      });
      if (forwarded) seen.forwards++;
      layer.dispose();
    }
    router.dispose();
  }
  console.log(`fuzz-api: ${JSON.stringify(seen)} of 400 option sets`);
  // the generator must reach the native calls, not stop at the option checks
  assert.ok(seen.routers > 50 && seen.routes > 100 && seen.forwards > 20, JSON.stringify(seen));
});

test.run();
