/**
 * Failure paths that must not take the process down or poison later calls: an allocation that cannot succeed
 * (run in a child process, as a crash probe), detaching an input while an async call runs, masked (-inf) LM
 * logits, and an estimator that yields NaN.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  BackendError,
  GradientNormEstimator,
  MoELayer,
  PerplexityProxyEstimator,
  Router,
  ValidationError,
  createEstimator,
} from '../lib';
import { referenceLogitEntropy } from '../lib/reference/routing';
import { addonSurface, missingAddonMembers, native, type NativeLayerHandle } from '../lib/native';
import { freshSeed, randn } from './helpers/random';
import { refusedNatively } from './helpers/errors';

const SEED = freshSeed();

test('an impossible allocation is an error, not an abort (child process)', () => {
  const script = `
    const { Router, BackendError } = require(${JSON.stringify(path.join(__dirname, '..', 'lib'))});
    const router = new Router({ numExperts: 65536, hiddenSize: 16, gateWeight: new Float32Array(65536 * 16).fill(0.01), selection: { kind: 'topk', k: 2 } });
    try { router.route(new Float32Array(2 ** 26).fill(0.5)); console.log('no error'); }
    catch (e) { console.log(e instanceof BackendError ? 'BackendError' : e.constructor.name, e.message.slice(0, 80)); }
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8', timeout: 120_000 });
  assert.is(r.status, 0, `the process died: signal ${r.signal}, stderr ${r.stderr}`);
  assert.match(r.stdout, /^BackendError/, r.stdout);
  void BackendError;
});

test('a thread pool that cannot start all its threads is a BackendError; the threads it started are joined (child process)', () => {
  // The constructor used to unwind past the workers it had started: the process hung (or aborted) instead.
  if (process.env.MOE_NATIVE_ADDON) {
    console.log('  (skipped: the address-space limit this needs does not suit a sanitizer or another addon build)');
    return;
  }
  const script = `
    const { Router, BackendError } = require(${JSON.stringify(path.join(__dirname, '..', 'dist', 'index.js'))});
    const gateWeight = new Float32Array(8 * 16).map((_, i) => Math.sin(i + ${SEED % 1000}));
    const opts = { numExperts: 8, hiddenSize: 16, gateWeight, selection: { kind: 'topk', k: 2 } };
    try { new Router({ ...opts, threads: 1024 }); console.log('no error'); }
    catch (e) { console.log(e instanceof BackendError ? 'BackendError' : e.constructor.name, e.message); }
    console.log('then', Array.from(new Router(opts).route(new Float32Array(16).fill(0.5)).indices).join(','));
  `;
  // 8 MiB stacks in a 4 GB address space: about 350 threads fit, not 1024
  const r = spawnSync(
    'bash',
    ['-c', 'ulimit -s 8192 && ulimit -v 4000000 && exec "$0" -e "$1"', process.execPath, script],
    {
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, LD_PRELOAD: '' },
    },
  );
  assert.is(r.status, 0, `the process died or hung: signal ${r.signal}, stderr ${r.stderr}`);
  assert.match(r.stdout, /^BackendError .*could not start a pool of 1024 threads/, r.stdout);
  assert.match(r.stdout, /\nthen \d,\d\n/, r.stdout);
});

test('MOE_NATIVE_ADDON: a missing, relative or non-.node path is a BackendError naming it; a real one is what loads (child processes)', () => {
  const script = `
    const { Router, BackendError } = require(${JSON.stringify(path.join(__dirname, '..', 'lib'))});
    try {
      const router = new Router({ numExperts: 4, hiddenSize: 8, gateWeight: new Float32Array(32).fill(0.5), selection: { kind: 'topk', k: 1 } });
      const k = router.route(new Float32Array(8).fill(1)).k[0];
      const loaded = Object.keys(require.cache).filter((f) => f.endsWith('.node'));
      console.log('loaded k=' + k + ' ' + JSON.stringify(loaded));
    } catch (e) { console.log(e instanceof BackendError ? 'BackendError' : e.constructor.name, e.message); }
  `;
  const run = (addon: string) =>
    spawnSync(process.execPath, ['--import', 'tsx', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, MOE_NATIVE_ADDON: addon },
    });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-addon-'));
  try {
    const jsFile = path.join(dir, 'addon.js');
    fs.writeFileSync(jsFile, 'module.exports = {};');
    for (const [addon, why] of [
      [path.join(dir, 'no-such-dir', 'addon.node'), /Cannot find module/],
      ['build/addon.node', /must be the absolute path of a \.node file/],
      [jsFile, /must be the absolute path of a \.node file/],
    ] as const) {
      const r = run(addon);
      assert.is(r.status, 0, `the process died: signal ${r.signal}, stderr ${r.stderr}`);
      assert.match(r.stdout, /^BackendError could not load the native addon/, r.stdout);
      assert.ok(r.stdout.includes(`MOE_NATIVE_ADDON=${addon}`), r.stdout);
      assert.match(r.stdout, why, r.stdout);
    }
    // a copy of the addon this process loaded, under another name: the child loads that copy and nothing else
    native();
    const file = Object.keys(require.cache).find((f) => f.endsWith('.node') && path.basename(f).startsWith('dynamic'));
    assert.ok(file, 'the addon this process loaded is in require.cache');
    const copy = path.join(dir, 'copy-of-the-addon.node');
    fs.copyFileSync(file!, copy);
    const r = run(copy);
    assert.is(r.status, 0, `the process died: signal ${r.signal}, stderr ${r.stderr}`);
    assert.match(r.stdout, /^loaded k=1 /, r.stdout);
    assert.equal(JSON.parse(r.stdout.slice(r.stdout.indexOf('['))), [copy], r.stdout);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the loader knows every member of the addon, and refuses a .node that lacks one (another addon, a stale build)', () => {
  // the list the loader checks is exactly what native/binding exports
  const real = native() as unknown as Record<string, unknown>;
  const actual = {
    functions: [] as string[],
    namespaces: {} as Record<string, string[]>,
    classes: {} as Record<string, string[]>,
  };
  for (const [name, value] of Object.entries(real)) {
    if (typeof value === 'object' && value !== null) actual.namespaces[name] = Object.keys(value);
    else if (typeof value === 'function' && Object.getOwnPropertyNames(value.prototype ?? {}).length > 1)
      actual.classes[name] = Object.getOwnPropertyNames(value.prototype).filter((m) => m !== 'constructor');
    else actual.functions.push(name);
  }
  const sorted = (o: { functions: readonly string[]; namespaces: object; classes: object }) =>
    JSON.stringify({
      functions: [...o.functions].sort(),
      namespaces: Object.fromEntries(
        Object.entries(o.namespaces)
          .map(([k, v]) => [k, [...v].sort()])
          .sort(),
      ),
      classes: Object.fromEntries(
        Object.entries(o.classes)
          .map(([k, v]) => [k, [...v].sort()])
          .sort(),
      ),
    });
  assert.is(sorted(addonSurface), sorted(actual), 'lib/native.ts addonSurface against the loaded addon');
  assert.equal(missingAddonMembers(real), []);
  const everything =
    addonSurface.functions.length +
    Object.values(addonSurface.namespaces).flat().length +
    Object.keys(addonSurface.classes).length;
  assert.is(missingAddonMembers({}).length, everything, 'an empty object lacks every function, member and class');
  assert.equal(missingAddonMembers(null).slice(0, 2), ['rowNorms', 'attentionEntropy']);

  // the whole load path in a child: a "stale build" (the real addon without asyncGate and with a NativeLayer class
  // with only forward) is a BackendError naming the file and what it lacks, and nothing of it is used
  const file = Object.keys(require.cache).find((f) => f.endsWith('.node') && path.basename(f).startsWith('dynamic'));
  assert.ok(file, 'the addon this process loaded is in require.cache');
  const stale = path.join(os.tmpdir(), `moe-stale-${process.pid}.node`);
  const script = `
    const real = require(${JSON.stringify(file)});
    class NativeLayer { forward() {} }
    const exports = { ...real, asyncGate: undefined, NativeLayer };
    require.cache[${JSON.stringify(stale)}] = { id: ${JSON.stringify(stale)}, filename: ${JSON.stringify(stale)}, loaded: true, exports };
    const { Router, BackendError } = require(${JSON.stringify(path.join(__dirname, '..', 'lib'))});
    for (let i = 0; i < 2; i++) {
      try {
        new Router({ numExperts: 4, hiddenSize: 8, gateWeight: new Float32Array(32).fill(0.5), selection: { kind: 'topk', k: 1 } });
        console.log('loaded');
      } catch (e) { console.log(e instanceof BackendError ? 'BackendError' : e.constructor.name, e.message); }
    }
  `;
  fs.writeFileSync(stale, ''); // (resolved before the cache is read; never opened)
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, MOE_NATIVE_ADDON: stale },
  });
  fs.rmSync(stale, { force: true });
  assert.is(r.status, 0, `the process died: signal ${r.signal}, stderr ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  assert.is(lines.length, 2, r.stdout);
  for (const line of lines) {
    assert.match(
      line,
      /^BackendError could not load the native addon of dynamic-moe-router-kit from MOE_NATIVE_ADDON=/,
    );
    assert.ok(line.includes(stale), line);
    assert.match(
      line,
      /it is not this version's addon \(it lacks asyncGate, NativeLayer\.prototype\.setExpert, /,
      line,
    );
  }
});

test('detaching x while forwardAsync runs neither crashes nor changes the result', async () => {
  const E = 8;
  const d = 64;
  const f = 32;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED),
    selection: { kind: 'topk', k: 2 },
  });
  const experts = Array.from({ length: E }, (_, e) => ({
    w1: randn(f * d, SEED + 3 * e + 1, 0.1),
    w3: randn(f * d, SEED + 3 * e + 2, 0.1),
    w2: randn(d * f, SEED + 3 * e + 3, 0.1),
  }));
  const layer = new MoELayer({ router, experts });
  const x = randn(256 * d, SEED + 50);
  const expected = layer.forward(x).output;
  const pending = layer.forwardAsync(x);
  const routing = router.routeAsync(x);
  structuredClone(x.buffer, { transfer: [x.buffer as ArrayBuffer] }); // x is now detached
  assert.is(x.length, 0);
  assert.equal(Array.from((await pending).output), Array.from(expected));
  assert.is((await routing).k.length, 256);
});

test('async calls copy x with the Float32Array constructor, never through a subclass species (a view the caller keeps)', async () => {
  let speciesCalls = 0;
  class Spy extends Float32Array {
    static get [Symbol.species](): Float32ArrayConstructor {
      speciesCalls++;
      // what a hostile or careless subclass might hand back: a view of memory someone else writes
      return class extends Float32Array {
        constructor(n: number) {
          super(new SharedArrayBuffer(4 * n) as unknown as ArrayBuffer);
        }
      } as unknown as Float32ArrayConstructor;
    }
  }
  const E = 8;
  const d = 16;
  const T = 5;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED + 80),
    selection: { kind: 'topk', k: 2 },
  });
  const x = randn(T * d, SEED + 81);
  const spy = new Spy(x);
  const got = await router.routeAsync(spy);
  assert.is(speciesCalls, 0, 'Symbol.species was consulted');
  assert.equal(Array.from(got.indices), Array.from(router.route(x).indices));
});

test('the native router checks its config itself: NaN, fractional and huge integers, NaN p, tau and scale', () => {
  const E = 8;
  const d = 4;
  const good = {
    numExperts: E,
    hiddenSize: d,
    scoring: 0,
    selection: 0,
    k: 2,
    p: 1,
    tau: 0,
    minK: 1,
    maxK: 2,
    nGroup: 0,
    topkGroup: 0,
    groupScore: 0,
    normalize: false,
    scale: 1,
  };
  const make = (cfg: object) => new (native().NativeRouter)(cfg, randn(E * d, SEED + 90), null, 1, null);
  make(good);
  for (const [key, value, message] of [
    ['numExperts', NaN, /numExperts: expected a 32-bit integer/],
    ['k', 1.5, /k: expected a 32-bit integer/],
    ['maxK', 2 ** 40, /maxK: expected a 32-bit integer/],
    ['selection', -Infinity, /selection: expected a 32-bit integer/],
    ['p', NaN, /p, tau or scale/],
    ['tau', 2, /p, tau or scale/],
    ['scale', Infinity, /p, tau or scale/],
  ] as const) {
    refusedNatively(() => make({ ...good, [key]: value }), message, `${key} = ${value}`);
  }
});

test('a layer call whose rows would overflow 32-bit row indices is refused before anything is read', () => {
  const E = 128;
  const d = 4;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED + 7),
    selection: { kind: 'topk', k: 128 },
  });
  const w = () => ({
    w1: randn(8 * d, SEED + 8, 0.1),
    w3: randn(8 * d, SEED + 9, 0.1),
    w2: randn(d * 8, SEED + 10, 0.1),
  });
  const layer = new MoELayer({ router, experts: Array.from({ length: E }, w) });
  // 2^24 tokens x (128 + 1) rows > 2^31 - 1: the binding's own entry point, with arrays far too small for that T
  const handle = (layer as unknown as { handle: NativeLayerHandle }).handle;
  const small = new Float32Array(4);
  const ints = new Int32Array(128);
  const forwardOf = (T: number) => () =>
    handle.forward(
      small,
      T,
      small,
      ints,
      small,
      ints,
      ints,
      new Float64Array(5),
      new Float64Array(7),
      null,
      null,
      0,
      null,
      null,
    );
  assert.throws(forwardOf(2 ** 24), (e: Error) => e instanceof Error && /split the batch/.test(e.message));
  // under the limit (2^20 tokens), the same call fails on the arrays' lengths instead
  assert.throws(forwardOf(2 ** 20), (e: Error) => /x: expected at least/.test(e.message));
  // a count past 2^24 is shown as the integer it is
  assert.throws(forwardOf(2 ** 24 + 1), (e: Error) => /got 16777217$/.test(e.message));
  layer.dispose();
});

test('too many tokens for one call: refused by the public API before an estimator runs or x is copied', async () => {
  const router = new Router({
    numExperts: 2,
    hiddenSize: 1,
    gateWeight: new Float32Array([0.5, -0.25]),
    selection: { kind: 'dynamic', minK: 1, maxK: 2, estimator: 'gradient_norm' },
  });
  const estimate = router.estimator!.estimate.bind(router.estimator);
  let estimated = 0;
  router.estimator!.estimate = (input) => {
    estimated++;
    return estimate(input);
  };
  const w = () => ({ w1: randn(4, SEED + 20), w3: randn(4, SEED + 21), w2: randn(4, SEED + 22) });
  const layer = new MoELayer({ router, experts: [w(), w()] });
  const x = new Float32Array(2 ** 24 + 1).fill(0.5);
  const tooMany = (e: Error) =>
    e instanceof ValidationError && /^x: 16777217 tokens in one call, at most 16777216/.test(e.message);
  assert.throws(() => layer.forward(x), tooMany);
  await layer.forwardAsync(x).then(
    () => assert.unreachable('forwardAsync resolved'),
    (e: Error) => assert.ok(tooMany(e), e.message),
  );
  assert.is(estimated, 0, 'no estimate for a call that cannot run');
  const y = layer.forward(randn(3, SEED + 23));
  assert.is(y.output.length, 3);
  assert.is(estimated, 1);
  layer.dispose();
});

test('masked (-inf) LM logits give a finite perplexity proxy equal to the reference', () => {
  const T = 5;
  const V = 300;
  const lm = randn(T * V, SEED + 60, 2);
  for (let i = 0; i < lm.length; i += 3) lm[i] = -Infinity;
  const got = new PerplexityProxyEstimator(1).raw({ x: new Float32Array(T), tokens: T, hiddenSize: 1, lmLogits: lm });
  const ref = referenceLogitEntropy(lm, T, V);
  for (let t = 0; t < T; t++)
    assert.ok(Number.isFinite(got[t]) && Math.abs(got[t] - ref[t]) < 1e-5, `${got[t]} vs ${ref[t]}`);
});

test('an estimator yielding NaN is a ValidationError, and its calibration stays usable', () => {
  const nan = createEstimator({
    name: 'custom',
    fn: (ctx) => new Float32Array(ctx.tokens).fill(NaN),
    calibration: 'zscore',
  });
  const router = new Router({
    numExperts: 8,
    hiddenSize: 4,
    gateWeight: randn(32, SEED + 70),
    selection: { kind: 'dynamic', minK: 1, maxK: 4, estimator: nan },
  });
  assert.throws(
    () => router.route(randn(8, SEED + 71)),
    (e: Error) => e instanceof ValidationError && /custom estimator/.test(e.message),
  );
  const norms = new GradientNormEstimator('l2');
  const bad = randn(4 * 8, SEED + 72);
  bad[3] = Infinity;
  assert.throws(
    () => norms.estimate({ x: bad, tokens: 4, hiddenSize: 8 }),
    (e: Error) =>
      e instanceof ValidationError && /gradient_norm estimator: the signal of token 0 is Infinity/.test(e.message),
  );
  const c = norms.estimate({ x: randn(16 * 8, SEED + 73), tokens: 16, hiddenSize: 8 });
  assert.ok(c.every((v) => v >= 0 && v <= 1) && new Set(c).size > 1, `running stats survived: ${Array.from(c)}`);
});

test.run();
