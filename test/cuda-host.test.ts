/**
 * The CUDA backend's host side on any machine: the addon's binding (native/binding/cuda_wrap.cc), the backend
 * choice ('auto' falling back to the CPU) and the error paths, driven through a stand-in plugin
 * (test/helpers/mock-cuda-plugin.cc, built here with the C++ compiler) that implements the plugin's C ABI on the
 * host. It does not compute a layer (token t takes experts (t + j) % E, y = x), so what these tests see is what
 * crossed the ABI; the GPU's own results are cuda.test.ts's. A plugin is loaded once per process, so the checks
 * run in a child process with MOE_CUDA_PLUGIN naming the stand-in.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BackendError, cudaStatus, ExpertDispatchError, MoELayer, Router, ValidationError } from '../lib';
import { native } from '../lib/native';
import { relativeError } from './helpers/compare';
import { throwsWith } from './helpers/errors';
import { writeTinyCheckpoint } from './helpers/checkpoint';
import { buildLayer, layerReference } from './helpers/layer';
import { freshSeed, randn } from './helpers/random';
import { tempDirs } from './helpers/tmp';

const root = path.join(__dirname, '..');

if (process.env.MOE_TEST_CUDA_MOCK !== '1') {
  const tmpDir = tempDirs('moe-cuda-mock-');
  test('the CUDA host side against a stand-in plugin (child process)', () => {
    const dir = tmpDir();
    const plugin = path.join(dir, 'mock_cuda.so');
    const compiler = process.env.CXX || 'c++';
    const source = path.join(__dirname, 'helpers', 'mock-cuda-plugin.cc');
    const cc = spawnSync(
      compiler,
      ['-std=c++17', '-O1', '-Wall', '-Werror', '-shared', '-fPIC', '-I', path.join(root, 'cuda', 'include'), source],
      { encoding: 'utf8', cwd: dir, timeout: 120_000, env: compilerEnv() },
    );
    // (CI sets MOE_REQUIRE_CUDA_STANDIN=1: there a missing compiler fails the suite instead of skipping it)
    if ((cc.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT' && !process.env.MOE_REQUIRE_CUDA_STANDIN) {
      console.log(`cuda-host.test: SKIPPED (no C++ compiler "${compiler}" to build the stand-in plugin)`);
      return;
    }
    assert.is(cc.status, 0, `building the stand-in plugin failed:\n${cc.stderr}`);
    fs.renameSync(path.join(dir, 'a.out'), plugin);
    const child = spawnSync(
      process.execPath,
      ['--import', 'tsx', path.join(root, 'node_modules', 'uvu', 'bin.js'), 'test', '^cuda-host\\.test\\.ts$'],
      {
        encoding: 'utf8',
        cwd: root,
        timeout: 300_000,
        env: {
          ...process.env,
          MOE_TEST_CUDA_MOCK: '1',
          MOE_CUDA_PLUGIN: plugin,
          MOE_MOCK_CUDA_LOG: path.join(dir, 'log'),
        },
      },
    );
    const output = `${child.stdout}\n${child.stderr}`;
    assert.is(child.status, 0, `the stand-in checks failed:\n${output}`);
    const passed = /Passed:\s+(\d+)/.exec(output);
    assert.ok(passed && Number(passed[1]) >= 8, `expected the child's checks to run:\n${output}`);
  });
} else {
  childChecks();
}

/** The environment minus a sanitizer runtime that scripts/test-sanitized.sh preloads (meant for Node, not the compiler). */
function compilerEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.LD_PRELOAD;
  return env;
}

function childChecks() {
  const SEED = freshSeed();
  const ckDir = tempDirs('moe-cuda-mock-ck-');
  const log = process.env.MOE_MOCK_CUDA_LOG!;
  /** The stand-in's layer creations and destructions since `from` (an offset into its log). */
  const events = (from = 0) => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').slice(from) : '');
  const logSize = () => events().length;
  const warnings: { code?: string; message: string }[] = [];
  process.on('warning', (w) => warnings.push({ code: (w as { code?: string }).code, message: w.message }));
  const tick = () => new Promise((resolve) => setImmediate(resolve));
  const withFailure = <T>(what: string, fn: () => T): T => {
    process.env.MOE_MOCK_CUDA_FAIL = what;
    try {
      return fn();
    } finally {
      delete process.env.MOE_MOCK_CUDA_FAIL;
    }
  };
  const router = (backend: 'auto' | 'cuda' | 'cpu', seed: number) =>
    new Router({ numExperts: 6, hiddenSize: 16, gateWeight: randn(6 * 16, seed), normalize: true, backend });
  /** The stand-in's routing of T tokens with k experts each (its fixed pattern). */
  const standInIndices = (T: number, k: number, E: number) =>
    Int32Array.from({ length: T * k }, (_, i) => (Math.floor(i / k) + (i % k)) % E);
  /** Tokens per expert of those choices. */
  const standInCounts = (T: number, k: number, E: number) => {
    const counts = new Array<number>(E).fill(0);
    for (const e of standInIndices(T, k, E)) counts[e]++;
    return counts;
  };

  test('the stand-in is the CUDA backend: "auto" takes it, and route() goes through the plugin', () => {
    const status = cudaStatus();
    assert.ok(status.available, status.reason);
    assert.is(status.device!.name, 'Mock GPU (host stand-in)');
    const r = router('auto', SEED);
    assert.is(r.backend, 'cuda');
    assert.is(r.cpuFallbackReason, undefined);
    const T = 5;
    const got = r.route(randn(T * 16, SEED + 1));
    assert.equal(Array.from(got.indices), Array.from(standInIndices(T, 2, 6)));
    assert.equal(Array.from(got.weights), new Array(T * 2).fill(0.5));
  });

  test("'auto' router: when the GPU refuses it, the CPU, with the reason kept and one warning", async () => {
    warnings.length = 0;
    const [a, b] = withFailure('create', () => [router('auto', SEED), router('auto', SEED + 1)]);
    await tick();
    for (const r of [a, b]) {
      assert.is(r.backend, 'cpu');
      assert.match(r.cpuFallbackReason ?? '', /cudaErrorMemoryAllocation/);
    }
    // the CPU's routing, not the stand-in's: the same as a router asked for the CPU
    const x = randn(7 * 16, SEED + 2);
    assert.equal(Array.from(a.route(x).indices), Array.from(router('cpu', SEED).route(x).indices));
    const fallbacks = warnings.filter((w) => w.code === 'MOE_CUDA_FALLBACK');
    assert.is(fallbacks.length, 1, JSON.stringify(warnings));
    assert.match(
      fallbacks[0].message,
      /^backend 'auto' runs on the CPU: Router: CUDA backend: .*cudaErrorMemoryAllocation/,
    );
    // asked for explicitly, the same failure is an error
    withFailure('create', () =>
      throwsWith(() => router('cuda', SEED), BackendError, /CUDA backend: .*cudaErrorMemoryAllocation/),
    );
  });

  test("'auto' layer: an upload the GPU refuses sends the layer to the CPU, and frees its GPU copy at once", () => {
    const from = logSize();
    const b = withFailure('expert:2', () =>
      buildLayer({ E: 6, d: 16, f: 12, selection: { kind: 'topk', k: 2 }, backend: 'auto', seed: SEED }),
    );
    assert.is(b.layer.router.backend, 'cuda');
    assert.is(b.layer.backend, 'cpu');
    assert.is(b.layer.dtype, 'fp32');
    assert.match(b.layer.cpuFallbackReason ?? '', /experts\[2\].*cudaErrorMemoryAllocation/);
    // router and layer created on the "GPU", the layer's copy destroyed before the constructor returned
    const created = [...events(from).matchAll(/create (\d+)/g)].map((m) => m[1]);
    assert.is(created.length, 2, events(from));
    assert.ok(events(from).includes(`destroy ${created[1]}`), events(from));
    const x = randn(9 * 16, SEED + 3);
    const { output, routing } = b.layer.forward(x);
    const err = relativeError(output, layerReference(b, x, routing));
    assert.ok(err < 1e-5, `fallback layer: relative error ${err} (seed ${SEED})`);
    // asked for explicitly, the same failure is an error, and the GPU copy is freed too
    const from2 = logSize();
    withFailure('expert:2', () =>
      throwsWith(
        () => new MoELayer({ router: b.layer.router, experts: b.experts, backend: 'cuda' }),
        BackendError,
        /experts\[2\]: CUDA backend: .*cudaErrorMemoryAllocation/,
      ),
    );
    const created2 = /create (\d+)/.exec(events(from2));
    assert.ok(created2 && events(from2).includes(`destroy ${created2[1]}`), events(from2));
  });

  test("'auto' layer: dtype 'fp32' and shareWeightsOf pick the CPU without touching the GPU; a caller's mistake is an error", () => {
    const b = buildLayer({ E: 6, d: 16, f: 12, selection: { kind: 'topk', k: 2 }, backend: 'auto', seed: SEED });
    assert.is(b.layer.backend, 'cuda');
    assert.is(b.layer.dtype, 'bf16');
    warnings.length = 0;
    const from = logSize();
    const fp32 = new MoELayer({ router: b.layer.router, experts: b.experts, dtype: 'fp32', backend: 'auto' });
    assert.is(fp32.backend, 'cpu');
    assert.match(fp32.cpuFallbackReason ?? '', /dtype 'fp32'/);
    const shared = new MoELayer({ router: b.layer.router, shareWeightsOf: fp32, backend: 'auto' });
    assert.is(shared.backend, 'cpu');
    assert.match(shared.cpuFallbackReason ?? '', /shareWeightsOf/);
    // gpt-oss experts: the activation and the biases are CPU-only
    const biased = b.experts.map((w) => ({ ...w, b2: randn(16, SEED + 7, 0.5) }));
    const gptOss = new MoELayer({
      router: b.layer.router,
      experts: b.experts,
      activation: { kind: 'gptOss' },
      backend: 'auto',
    });
    assert.is(gptOss.backend, 'cpu');
    assert.match(gptOss.cpuFallbackReason ?? '', /activation 'gptOss'/);
    const llama4 = new MoELayer({ router: b.layer.router, experts: b.experts, weightInputs: true, backend: 'auto' });
    assert.is(llama4.backend, 'cpu');
    assert.match(llama4.cpuFallbackReason ?? '', /weightInputs/);
    const withBias = new MoELayer({ router: b.layer.router, experts: biased, backend: 'auto' });
    assert.is(withBias.backend, 'cpu');
    assert.is(withBias.dtype, 'fp32');
    assert.match(withBias.cpuFallbackReason ?? '', /expert biases/);
    assert.is(events(from), '', 'no GPU layer was created');
    assert.is(warnings.length, 0, 'a choice, not a failure: no warning');
    throwsWith(
      () => new MoELayer({ router: b.layer.router, experts: b.experts, dtype: 'fp32', backend: 'cuda' }),
      ValidationError,
      /dtype/,
    );
    throwsWith(
      () =>
        new MoELayer({ router: b.layer.router, experts: b.experts, activation: { kind: 'gptOss' }, backend: 'cuda' }),
      ValidationError,
      /^activation: the CUDA backend runs SwiGLU experts/,
    );
    throwsWith(
      () => new MoELayer({ router: b.layer.router, experts: b.experts, weightInputs: true, backend: 'cuda' }),
      ValidationError,
      /^weightInputs \(Llama 4's experts\): the CUDA backend weights the experts' outputs/,
    );
    // a bias on an expert after the first: 'auto' packs the layer on the CPU instead (the GPU copy made so far is
    // freed, no warning), 'cuda' refuses it
    const late = b.experts.map((w, e) => (e === 2 ? { ...w, b1: randn(12, SEED + 8, 0.5) } : w));
    const from3 = logSize();
    const lateLayer = new MoELayer({ router: b.layer.router, experts: late, backend: 'auto' });
    assert.is(lateLayer.backend, 'cpu');
    assert.match(lateLayer.cpuFallbackReason ?? '', /expert biases/);
    const created3 = /create (\d+)/.exec(events(from3));
    assert.ok(created3 && events(from3).includes(`destroy ${created3[1]}`), events(from3));
    throwsWith(
      () => new MoELayer({ router: b.layer.router, experts: late, backend: 'cuda' }),
      ValidationError,
      /^experts\[2\]\.b1: the CUDA backend runs experts without biases/,
    );
    // NaN weights are refused on either backend: an error, not a fallback (and the GPU copy is freed)
    const bad = b.experts.map((w, e) => (e === 3 ? { ...w, w2: w.w2.map((v, i) => (i === 5 ? NaN : v)) } : w));
    const from2 = logSize();
    throwsWith(
      () => new MoELayer({ router: b.layer.router, experts: bad, backend: 'auto' }),
      ValidationError,
      /experts\[3\]/,
    );
    const created = /create (\d+)/.exec(events(from2));
    assert.ok(created && events(from2).includes(`destroy ${created[1]}`), events(from2));
  });

  test('forward on the stand-in: outputs come back through the binding; a plugin failure is a BackendError counted as internal', async () => {
    const b = buildLayer({ E: 6, d: 16, f: 12, selection: { kind: 'topk', k: 2 }, backend: 'cuda', seed: SEED });
    const T = 4;
    const x = randn(T * 16, SEED + 4);
    const sync = b.layer.forward(x);
    assert.equal(Array.from(sync.output), Array.from(x)); // the stand-in's y = x
    assert.equal(Array.from(sync.routing.indices), Array.from(standInIndices(T, 2, 6)));
    const async = await b.layer.forwardAsync(x);
    assert.equal(Array.from(async.output), Array.from(x));
    b.layer.drainTelemetry();
    withFailure('forward', () =>
      throwsWith(() => b.layer.forward(x), BackendError, /CUDA backend: mock: an illegal memory access/),
    );
    process.env.MOE_MOCK_CUDA_FAIL = 'forward';
    try {
      await b.layer.forwardAsync(x).then(
        () => assert.unreachable('forwardAsync should reject'),
        (err: unknown) => {
          assert.instance(err, BackendError);
          assert.match((err as Error).message, /illegal memory access/);
        },
      );
    } finally {
      delete process.env.MOE_MOCK_CUDA_FAIL;
    }
    // a plugin failure without a message is still a failure (not a success with unwritten outputs)
    withFailure('silent', () =>
      throwsWith(() => b.layer.forward(x), BackendError, /CUDA plugin reported a failure without a message/),
    );
    const bad = x.slice();
    bad[2 * 16 + 3] = NaN;
    throwsWith(() => b.layer.forward(bad), ValidationError, /token 2 .*not finite/);
    const t = b.layer.drainTelemetry();
    assert.is(t.errors.internal, 3);
    assert.is(t.errors.non_finite, 1);
  });

  test('dispose() with async calls pending on the stand-in: they complete, then the GPU layer is freed', async () => {
    const start = logSize();
    const b = buildLayer({ E: 6, d: 16, f: 12, selection: { kind: 'topk', k: 2 }, backend: 'cuda', seed: SEED });
    const id = [...events(start).matchAll(/create (\d+)/g)].map((m) => m[1])[1]; // (the router's is first)
    const freed = () => new RegExp(`^destroy ${id}$`, 'm').test(events(start));
    const x = randn(3 * 16, SEED + 5);
    process.env.MOE_MOCK_CUDA_DELAY_MS = '30';
    try {
      const pending = [b.layer.forwardAsync(x), b.layer.forwardAsync(x), b.layer.forwardAsync(x)];
      b.layer.dispose();
      assert.not.ok(freed(), 'not freed while calls are pending');
      throwsWith(() => b.layer.forward(x), Error, /disposed/);
      // (allSettled: the environment changes only after every call that reads it has ended)
      for (const r of await Promise.allSettled(pending)) {
        assert.is(r.status, 'fulfilled');
        if (r.status === 'fulfilled') assert.equal(Array.from(r.value.output), Array.from(x));
      }
    } finally {
      delete process.env.MOE_MOCK_CUDA_DELAY_MS;
    }
    for (let i = 0; i < 100 && !freed(); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(freed(), events(start));
  });

  test('fromPretrained: a layer the GPU refuses frees the router it made for it at once', () => {
    const dir = ckDir();
    const ck = writeTinyCheckpoint(dir, 'qwen2_moe', { hiddenSize: 16, intermediateSize: 8, numExperts: 4, topK: 2 });
    const from = logSize();
    withFailure('expert:1', () =>
      throwsWith(
        () => MoELayer.fromPretrained(dir, { layer: ck.moeLayers[0], backend: 'cuda' }),
        BackendError,
        /experts\[1\]: CUDA backend/,
      ),
    );
    const created = [...events(from).matchAll(/create (\d+)/g)].map((m) => m[1]);
    assert.is(created.length, 2, events(from)); // the router, then the layer
    for (const id of created) assert.ok(new RegExp(`^destroy ${id}$`, 'm').test(events(from)), events(from));
  });

  test('device complexity: a complexityOut that is short or not a Float32Array is refused, not ignored', () => {
    const r = new Router({
      numExperts: 6,
      hiddenSize: 16,
      gateWeight: randn(6 * 16, SEED),
      selection: { kind: 'dynamic', minK: 1, maxK: 3, estimator: 'router_entropy' },
      backend: 'cuda',
    });
    const T = 4;
    const x = randn(T * 16, SEED + 6);
    const handle = r.cudaHandle!;
    const call = (complexityOut: unknown) =>
      handle.route(
        0,
        x,
        T,
        new Int32Array(T * 3),
        new Float32Array(T * 3),
        new Int32Array(T),
        new Int32Array(6),
        new Float64Array(5),
        null,
        null,
        null,
        0,
        { mode: 2, calibration: 0, state: new Float64Array(3), knots: null, complexityOut } as never,
      );
    const ok = new Float32Array(T);
    call(ok);
    assert.equal(Array.from(ok), [0.5, 0.5, 0.5, 0.5]); // written by the stand-in
    for (const bad of [new Float32Array(T - 1), new Float64Array(T), [0, 0, 0, 0]])
      assert.throws(
        () => call(bad),
        (e: unknown) => /device\.complexityOut: expected a Float32Array of at least 4/.test((e as Error).message),
      );
    // the public path allocates it: routing with the device estimator works and returns the device's scores
    const got = r.route(x);
    assert.equal(Array.from(got.complexity!), [0.5, 0.5, 0.5, 0.5]);
  });

  test('forwardDevice on the stand-in: device pointers reach the plugin, and its counters drain', () => {
    const b = buildLayer({ E: 6, d: 16, f: 12, selection: { kind: 'topk', k: 2 }, backend: 'cuda', seed: SEED });
    const addon = native();
    const T = 3;
    const x = randn(T * 16, SEED + 7);
    const dx = addon.cudaAlloc(x.byteLength);
    const dy = addon.cudaAlloc(x.byteLength);
    try {
      addon.cudaCopy(dx, x, true);
      b.layer.forwardDevice({ input: dx, output: dy, tokens: T });
      const y = new Float32Array(T * 16);
      addon.cudaCopy(dy, y, false);
      assert.equal(Array.from(y), Array.from(x));
      // device counters arrive one drain late (the copy a drain queues is read by the next)
      assert.is(b.layer.drainTelemetry().calls, 0);
      let t = b.layer.drainTelemetry();
      assert.is(t.calls, 1);
      assert.is(t.tokens, T);
      assert.equal(Array.from(t.expertTokens), Array.from(standInCounts(T, 2, 6)));
      // a drain that cannot read the device counters still returns, with the failure counted
      b.layer.forwardDevice({ input: dx, output: dy, tokens: T });
      t = withFailure('drain', () => b.layer.drainTelemetry());
      assert.is(t.errors.internal, 1);
      assert.is(t.calls, 0);
      // the last call's counts reach the final drain of dispose(), which waits for them; later drains are refused
      b.layer.forwardDevice({ input: dx, output: dy, tokens: T });
      b.layer.dispose();
      t = b.layer.drainTelemetry();
      assert.is(t.calls, 2, 'the call whose drain failed, and the last one');
      throwsWith(() => b.layer.drainTelemetry(), ExpertDispatchError, /disposed/);
    } finally {
      addon.cudaFree(dx);
      addon.cudaFree(dy);
    }
  });

  test('a CUDA router disposed: its final record once, then drains are refused with the package error class', () => {
    const r = new Router({
      numExperts: 6,
      hiddenSize: 16,
      gateWeight: randn(6 * 16, SEED + 8),
      selection: { kind: 'topk', k: 2 },
      backend: 'cuda',
    });
    r.route(randn(2 * 16, SEED + 9));
    r.dispose();
    assert.is(r.drainTelemetry().calls, 1);
    throwsWith(() => r.drainTelemetry(), ExpertDispatchError, /Router: this router was disposed/);
  });
}

test.run();
