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

test.run();
