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

// Main thread and two workers call async methods of their own routers and layers at once; the native side counts
// the calls running on libuv threads. Then workers are terminated while some of their calls wait for a slot.
const gateScript = (libPath: string, helpersPath: string) => `
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
require(${JSON.stringify(require.resolve('tsx/cjs/api'))}).register();
const { MoELayer, Router } = require(${JSON.stringify(libPath)});
const { native } = require(${JSON.stringify(path.join(libPath, 'native'))});
const { randn } = require(${JSON.stringify(helpersPath)});

const E = 8, d = 64, f = 128, T = 256;
function build(seed) {
  const router = new Router({ numExperts: E, hiddenSize: d, gateWeight: randn(E * d, seed), selection: { kind: 'topk', k: 2 } });
  const layer = new MoELayer({
    router,
    experts: { stacked: true, w1: randn(E * f * d, seed + 1, 0.1), w3: randn(E * f * d, seed + 2, 0.1), w2: randn(E * d * f, seed + 3, 0.1) },
  });
  return { router, layer };
}
// Three routers and layers per thread, each called ${'${rounds}'} times at once; every result checked against a sync call.
async function hammer(seed, rounds) {
  const objects = [0, 1, 2].map((i) => build(seed + 10 * i));
  const x = randn(T * d, seed + 100);
  const calls = [];
  for (let r = 0; r < rounds; r++)
    for (const { router, layer } of objects) calls.push(layer.forwardAsync(x), router.routeAsync(x));
  const results = await Promise.all(calls);
  const y = objects[0].layer.forward(x).output;
  const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
  if (!same(results[0].output, y) || !same(results[2 * rounds * 3 - 6].output, y))
    throw new Error('an async forward differs from the sync one');
  return results.length;
}

if (isMainThread) {
  const seed = Number(process.argv[2]);
  native().asyncGate(); // (the peak restarts here)
  (async () => {
    const workers = [1, 2].map((i) => new Worker(__filename, { workerData: { seed: seed + 1000 * i, mode: 'hammer' } }));
    const done = workers.map((w) => new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); }));
    const mine = await hammer(seed, 4);
    const theirs = await Promise.all(done);
    const gate = native().asyncGate();
    console.log('calls ' + (mine + theirs[0] + theirs[1]) + ' peak ' + gate.peakExecuting + ' limit ' + gate.limit);
    // workers terminated while calls of theirs wait for a slot: the slots they held or were handed go on
    for (let i = 0; i < 4; i++) {
      const w = new Worker(__filename, { workerData: { seed: seed + 5000 + i, mode: 'park' } });
      w.on('error', () => {});
      await new Promise((resolve) => w.once('message', resolve));
      await w.terminate();
    }
    const after = await hammer(seed + 7, 2);
    const end = native().asyncGate();
    console.log('after ' + after + ' running ' + end.running + ' waiting ' + end.waiting + ' executing ' + end.executing);
  })().catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else if (workerData.mode === 'hammer') {
  hammer(workerData.seed, 4).then((n) => parentPort.postMessage(n));
} else {
  const { layer } = build(workerData.seed);
  const others = [1, 2, 3].map((i) => build(workerData.seed + 10 * i).layer);
  const x = randn(4 * T * d, workerData.seed + 100);
  for (const l of [layer, ...others]) l.forwardAsync(x).catch(() => {});
  parentPort.postMessage('parked');
}
`;

test('workers: async calls of every JS thread together run on at most half of libuv threads', () => {
  const file = path.join(tmpDir(), 'gate-probe.js');
  fs.writeFileSync(file, gateScript(path.join(__dirname, '..', 'lib'), path.join(__dirname, 'helpers', 'random')));
  const r = spawnSync(process.execPath, [file, String(SEED)], {
    encoding: 'utf8',
    timeout: 120_000,
    cwd: path.join(__dirname, '..'),
    env: { ...process.env, UV_THREADPOOL_SIZE: '4' },
  });
  assert.is(r.status, 0, `seed ${SEED}: the process died (signal ${r.signal}): ${r.stderr}`);
  const m = /^calls (\d+) peak (\d+) limit (\d+)\nafter (\d+) running (\d+) waiting (\d+) executing (\d+)/.exec(
    r.stdout,
  );
  assert.ok(m, r.stdout + r.stderr);
  const [calls, peak, limit, after, running, waiting, executing] = m!.slice(1).map(Number);
  assert.is(calls, 3 * 24);
  assert.is(limit, 2);
  assert.ok(peak >= 1 && peak <= limit, `${peak} calls ran at once on libuv threads, limit ${limit}`);
  assert.is(after, 12);
  assert.equal([running, waiting, executing], [0, 0, 0], 'slots leaked by the terminated workers');
});

test.run();
