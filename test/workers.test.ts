/**
 * The addon under worker_threads (in a child process, as a crash probe): routers and layers built in workers give
 * the main thread's results bit for bit, and workers terminated while their async calls run — at random moments —
 * take neither the process down nor the main thread's results with them. (Probabilistic: eight terminations
 * during back-to-back calls of ~1 ms hit a completion in the dying worker in practically every run; before the fix
 * the process aborted in every run tried.)
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { freshSeed } from './helpers/random';
import { tempDirs } from './helpers/tmp';

const SEED = freshSeed();
const tmpDir = tempDirs('moe-workers-');

// Plain CommonJS run by the child process, main thread and workers alike; the package's TypeScript loads
// through tsx's require hook.
const script = (libPath: string, helpersPath: string) => `
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
require(${JSON.stringify(require.resolve('tsx/cjs/api'))}).register();
const { MoELayer, Router } = require(${JSON.stringify(libPath)});
const { randn, rng } = require(${JSON.stringify(helpersPath)});

const E = 8, d = 32, f = 16, T = 5;
function build(seed) {
  const router = new Router({ numExperts: E, hiddenSize: d, gateWeight: randn(E * d, seed), selection: { kind: 'topk', k: 2 } });
  const layer = new MoELayer({
    router,
    experts: { stacked: true, w1: randn(E * f * d, seed + 1, 0.2), w3: randn(E * f * d, seed + 2, 0.2), w2: randn(E * d * f, seed + 3, 0.2) },
  });
  return { router, layer };
}

if (isMainThread) {
  const seed = Number(process.argv[2]);
  const next = rng(seed);
  const { router, layer } = build(seed);
  const x = randn(T * d, seed + 4);
  const expected = { y: layer.forward(x).output, indices: router.route(x).indices };
  const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
  const start = (mode) => new Worker(__filename, { workerData: { mode, seed } });
  (async () => {
    const finished = await Promise.all(
      [0, 1, 2].map(() => new Promise((resolve, reject) => {
        const w = start('finish');
        w.once('message', resolve);
        w.once('error', reject);
      })),
    );
    for (const r of finished) {
      if (!same(r.y, expected.y)) throw new Error('a worker forward differs from the main thread');
      if (!same(r.indices, expected.indices)) throw new Error('a worker route differs from the main thread');
    }
    let terminated = 0;
    for (let i = 0; i < 8; i++) {
      const w = start('busy');
      w.on('error', () => {});
      await new Promise((resolve) => w.once('message', resolve));
      await new Promise((resolve) => setTimeout(resolve, Math.floor(next() * 40)));
      await w.terminate();
      terminated++;
    }
    if (!same(layer.forward(x).output, expected.y)) throw new Error('the main thread differs after the terminations');
    if (!same((await layer.forwardAsync(x)).output, expected.y)) throw new Error('forwardAsync differs after them');
    console.log('ok ' + finished.length + ' finished, ' + terminated + ' terminated mid-call');
  })().catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else {
  const { router, layer } = build(workerData.seed);
  const x = randn(T * d, workerData.seed + 4);
  if (workerData.mode === 'finish') {
    (async () => {
      const y = (await layer.forwardAsync(x)).output;
      const indices = (await router.routeAsync(x)).indices;
      parentPort.postMessage({ y, indices });
    })();
  } else {
    const big = randn(512 * d, workerData.seed + 5);
    parentPort.postMessage('started');
    (async () => {
      for (;;) {
        await Promise.all([layer.forwardAsync(big), router.routeAsync(big), layer.forwardAsync(x)]);
        layer.forward(x);
      }
    })();
  }
}
`;

test('workers: same results as the main thread; terminating them mid-call never crashes the process', () => {
  const file = path.join(tmpDir(), 'workers-probe.js');
  fs.writeFileSync(file, script(path.join(__dirname, '..', 'lib'), path.join(__dirname, 'helpers', 'random')));
  const r = spawnSync(process.execPath, [file, String(SEED)], {
    encoding: 'utf8',
    timeout: 120_000,
    cwd: path.join(__dirname, '..'),
  });
  assert.is(r.status, 0, `seed ${SEED}: the process died (signal ${r.signal}): ${r.stderr}`);
  assert.match(r.stdout, /^ok 3 finished, 8 terminated mid-call/, r.stdout);
});

// Three probes of the process-wide async gate, each in its own child process (UV_THREADPOOL_SIZE=4: 2 slots):
//   hammer:    the main thread and two workers call async methods of their own routers and layers at once; the
//              native side counts the calls running on libuv threads.
//   blocked:   the main thread holds both slots and has two calls waiting, then blocks in Atomics.wait until a
//              worker's routeAsync has run: a slot freed by the main thread's calls must reach the worker.
//   terminate: a worker whose calls wait (the main thread holding both slots) is terminated: they are dropped and
//              the count of waiting calls comes back to 0.
//   stop:      a worker with two calls running and four waiting is terminated: the four never start (Node turns a
//              stopping thread's event loop until its running calls end, and the slots they free must not start
//              the others).
const gateScript = (libPath: string, helpersPath: string) => `
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
require(${JSON.stringify(require.resolve('tsx/cjs/api'))}).register();
const { MoELayer, Router } = require(${JSON.stringify(libPath)});
const { native } = require(${JSON.stringify(path.join(libPath, 'native'))});
const { randn } = require(${JSON.stringify(helpersPath)});

const E = 8, k = 2;
const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
function normal(n, seed, std) {
  const a = new Float32Array(n);
  native().bench.fillNormal(a, seed, std);
  return a;
}
function build(seed, d, f) {
  const router = new Router({ numExperts: E, hiddenSize: d, gateWeight: normal(E * d, seed, 1), selection: { kind: 'topk', k } });
  const layer = new MoELayer({
    router,
    experts: { stacked: true, w1: normal(E * f * d, seed + 1, 0.05), w3: normal(E * f * d, seed + 2, 0.05), w2: normal(E * d * f, seed + 3, 0.05) },
  });
  return { router, layer };
}
// n layers over one set of weights (withRouter), each with its own router: n independent objects
function layers(seed, n, d, f) {
  const { layer } = build(seed, d, f);
  const more = Array.from({ length: n - 1 }, (_, i) => layer.withRouter(build(seed + 10 * (i + 1), d, 8).router));
  return [layer, ...more];
}
// Three routers and layers per thread, each called 4 times at once; results checked against sync calls.
async function hammer(seed) {
  const d = 64, T = 256;
  const objects = [0, 1, 2].map((i) => build(seed + 10 * i, d, 128));
  const x = randn(T * d, seed + 100);
  const calls = [];
  for (let r = 0; r < 4; r++) for (const { router, layer } of objects) calls.push(layer.forwardAsync(x), router.routeAsync(x));
  const results = await Promise.all(calls);
  const y = objects[0].layer.forward(x).output;
  if (!same(results[0].output, y) || !same(results[18].output, y)) throw new Error('an async forward differs from the sync one');
  return results.length;
}
const BIG = { d: 256, f: 512 };

if (isMainThread) {
  const [mode, seedText] = process.argv.slice(2);
  const seed = Number(seedText);
  const start = (data) => new Worker(__filename, { workerData: { ...data, seed } });
  const message = (w) => new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
  (async () => {
    native().asyncGate(); // (the peak restarts here)
    if (mode === 'hammer') {
      const workers = [1, 2].map((i) => start({ mode, seed: seed + 1000 * i }));
      const done = workers.map(message);
      const mine = await hammer(seed);
      const theirs = await Promise.all(done);
      const gate = native().asyncGate();
      console.log('calls ' + (mine + theirs[0] + theirs[1]) + ' peak ' + gate.peakExecuting + ' limit ' + gate.limit);
    } else if (mode === 'blocked') {
      const flag = new Int32Array(new SharedArrayBuffer(4));
      const w = start({ mode, flag });
      await message(w); // built
      const mine = layers(seed, 4, BIG.d, BIG.f);
      const x = normal(1024 * BIG.d, seed + 5, 1);
      const calls = mine.map((l) => l.forwardAsync(x)); // two run, two wait
      await new Promise((resolve) => setImmediate(resolve));
      const before = native().asyncGate();
      w.postMessage('go');
      const waited = Atomics.wait(flag, 0, 0, 20000); // the worker's routeAsync, or 20 s
      const results = await Promise.all(calls);
      const y = mine[3].forward(x).output;
      if (!same(results[3].output, y)) throw new Error('an async forward differs from the sync one');
      await w.terminate();
      console.log('before running ' + before.running + ' waiting ' + before.waiting + '; worker ' + waited);
    } else if (mode === 'stop') {
      const flag = new Int32Array(new SharedArrayBuffer(4));
      const w = start({ mode, flag });
      w.on('error', () => {});
      await message(w); // built
      const before = native().asyncGate();
      w.postMessage('go');
      Atomics.wait(flag, 0, 0, 20000); // two of its calls run, four wait
      const during = native().asyncGate();
      await w.terminate();
      const after = native().asyncGate();
      console.log('during running ' + during.running + ' waiting ' + during.waiting + '; started ' +
        (after.started - before.started) + '; after running ' + after.running + ' waiting ' + after.waiting);
    } else {
      const flag = new Int32Array(new SharedArrayBuffer(4));
      const w = start({ mode, flag });
      w.on('error', () => {});
      await message(w); // built
      const mine = layers(seed, 2, BIG.d, BIG.f);
      const x = normal(16384 * BIG.d, seed + 5, 1);
      const calls = mine.map((l) => l.forwardAsync(x)); // both slots, for a while
      await new Promise((resolve) => setImmediate(resolve)); // (each call reaches the native side a microtask later)
      w.postMessage('go');
      Atomics.wait(flag, 0, 0, 20000); // its four calls are waiting
      const during = native().asyncGate();
      const stopped = w.terminate(); // (asks the thread to stop now; it stops while this thread's calls run)
      await Promise.all(calls);
      await stopped;
      const after = native().asyncGate();
      const again = await mine[0].forwardAsync(normal(8 * BIG.d, seed + 6, 1));
      console.log('during running ' + during.running + ' waiting ' + during.waiting + '; after running ' + after.running +
        ' waiting ' + after.waiting + ' executing ' + after.executing + '; again ' + again.output.length);
    }
  })().catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else if (workerData.mode === 'hammer') {
  hammer(workerData.seed).then((n) => parentPort.postMessage(n));
} else {
  const { flag, mode, seed } = workerData;
  const { router } = build(seed + 500, BIG.d, 8);
  const mine = mode === 'terminate' ? layers(seed + 600, 4, 64, 64) : mode === 'stop' ? layers(seed + 600, 6, BIG.d, BIG.f) : [];
  parentPort.postMessage('built');
  parentPort.once('message', async () => {
    if (mode === 'blocked') {
      await router.routeAsync(normal(64 * BIG.d, seed + 7, 1));
    } else if (mode === 'stop') {
      const x = normal(8192 * BIG.d, seed + 9, 1);
      for (const l of mine) l.forwardAsync(x).catch(() => {});
      await new Promise((resolve) => setImmediate(resolve));
    } else {
      for (const l of mine) l.forwardAsync(normal(16 * 64, seed + 8, 1)).catch(() => {});
      await new Promise((resolve) => setImmediate(resolve)); // (each call reaches the native side a microtask later)
    }
    Atomics.store(flag, 0, 1);
    Atomics.notify(flag, 0);
  });
}
`;

function runGateProbe(mode: string): string {
  const file = path.join(tmpDir(), 'gate-probe.js');
  if (!fs.existsSync(file))
    fs.writeFileSync(file, gateScript(path.join(__dirname, '..', 'lib'), path.join(__dirname, 'helpers', 'random')));
  const r = spawnSync(process.execPath, [file, mode, String(SEED)], {
    encoding: 'utf8',
    timeout: 180_000,
    cwd: path.join(__dirname, '..'),
    env: { ...process.env, UV_THREADPOOL_SIZE: '4' },
  });
  assert.is(r.status, 0, `seed ${SEED}, ${mode}: the process died (signal ${r.signal}): ${r.stderr}`);
  return r.stdout;
}

test('async gate: calls of every JS thread together run on at most half of libuv threads', () => {
  const out = runGateProbe('hammer');
  const m = /^calls (\d+) peak (\d+) limit (\d+)/.exec(out);
  assert.ok(m, out);
  const [calls, peak, limit] = m!.slice(1).map(Number);
  assert.is(calls, 3 * 24);
  assert.is(limit, 2);
  assert.ok(peak >= 1 && peak <= limit, `${peak} calls ran at once on libuv threads, limit ${limit}`);
});

test('async gate: a thread blocked in Atomics.wait with calls waiting does not keep another thread from its slot', () => {
  const out = runGateProbe('blocked');
  assert.match(out, /^before running 2 waiting 2; worker ok/, out);
});

test('async gate: a worker terminated with calls running and waiting starts none of the waiting ones', () => {
  const out = runGateProbe('stop');
  assert.match(out, /^during running 2 waiting 4; started 2; after running 0 waiting 0/, out);
});

test('async gate: a worker terminated while its calls wait gives their places back', () => {
  const out = runGateProbe('terminate');
  assert.match(out, /^during running 2 waiting 4; after running 0 waiting 0 executing 0; again 2048/, out);
});

test.run();
