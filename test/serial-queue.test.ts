/**
 * SerialQueue: one task at a time, in order, and a failed task does not stop the next; and every router's and
 * layer's async native calls share one bound, half of libuv's threads (the native gate; across worker threads in
 * test/workers.test.ts).
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MoELayer, Router } from '../lib';
import { native } from '../lib/native';
import { SerialQueue } from '../lib/serial-queue';
import { freshSeed, randn } from './helpers/random';

const SEED = freshSeed();

test('runs tasks one at a time, in order, past failures', async () => {
  const q = new SerialQueue();
  let running = 0;
  let most = 0;
  const order: number[] = [];
  const task =
    (i: number, fail = false) =>
    async () => {
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, 5));
      order.push(i);
      running--;
      if (fail) throw new Error(`task ${i}`);
      return i;
    };
  const results = await Promise.allSettled([q.run(task(1)), q.run(task(2, true)), q.run(task(3))]);
  assert.is(most, 1);
  assert.equal(order, [1, 2, 3]);
  assert.equal(
    results.map((r) => r.status),
    ['fulfilled', 'rejected', 'fulfilled'],
  );
});

test('afterPending runs at once when idle, else after every queued task has settled', async () => {
  const q = new SerialQueue();
  const order: string[] = [];
  q.afterPending(() => order.push('idle'));
  assert.equal(order, ['idle'], 'ran synchronously');
  const slow = q.run(async () => {
    await new Promise((r) => setTimeout(r, 5));
    order.push('task');
  });
  const failing = q.run(async () => {
    throw new Error('no');
  });
  q.afterPending(() => order.push('after'));
  assert.equal(order, ['idle'], 'waits for the queued tasks');
  await slow;
  await failing.catch(() => undefined);
  await new Promise((r) => setImmediate(r));
  assert.equal(order, ['idle', 'task', 'after']);
  q.afterPending(() => order.push('idle again'));
  assert.equal(order.at(-1), 'idle again', 'idle again once they settled');
});

/** Half of libuv's threads, as libuv reads UV_THREADPOOL_SIZE (atoi; 0 means 1; at most 1024; unset means 4). */
function expectedLimit(value: string | undefined): number {
  const n = value === undefined ? 4 : parseInt(value, 10) || 0;
  const threads = n === 0 ? 1 : n < 0 ? 1024 : Math.min(n, 1024);
  return Math.max(1, Math.floor(threads / 2));
}

test('async calls of many routers and layers at once run on at most half of libuv threads', async () => {
  const E = 8;
  const d = 32;
  const { limit } = native().asyncGate(); // (the peak restarts here)
  const objects = limit + 6; // (5 routers and 3 layers at the default limit of 2)
  const routers = Array.from({ length: objects - 3 }, (_, i) => {
    return new Router({
      numExperts: E,
      hiddenSize: d,
      gateWeight: randn(E * d, SEED + i),
      selection: { kind: 'topk', k: 2 },
    });
  });
  const layers = routers.slice(0, 3).map((router, i) => {
    const f = 16;
    return new MoELayer({
      router,
      experts: {
        stacked: true,
        w1: randn(E * f * d, SEED + 10 + i, 0.1),
        w3: randn(E * f * d, SEED + 20 + i, 0.1),
        w2: randn(E * d * f, SEED + 30 + i, 0.1),
      },
    });
  });
  const x = randn(2048 * d, SEED + 30);
  const calls: Promise<unknown>[] = [];
  for (let round = 0; round < 3; round++) {
    for (const r of routers) calls.push(r.routeAsync(x));
    for (const l of layers) calls.push(l.forwardAsync(x));
  }
  await new Promise((resolve) => setImmediate(resolve)); // (each call reaches the native side a microtask later)
  const during = native().asyncGate();
  const results = await Promise.all(calls);
  const after = native().asyncGate();
  assert.is(results.length, 3 * objects);
  assert.is(limit, expectedLimit(process.env.UV_THREADPOOL_SIZE));
  // one call of each object reached the native side (its later calls wait in its own queue): at most `limit` of
  // them hold a slot, the others wait for one
  assert.ok(during.running <= limit, `${during.running} slots held, limit ${limit}`);
  assert.ok(
    during.waiting >= 1 && during.running + during.waiting <= objects,
    `${during.waiting} calls waiting, ${during.running} running, ${objects} objects`,
  );
  assert.ok(
    after.peakExecuting >= 1 && after.peakExecuting <= after.limit,
    `${after.peakExecuting} native calls ran at once, limit ${after.limit}`,
  );
  assert.equal([after.running, after.waiting, after.executing], [0, 0, 0]);
  // and the results are those of sync calls
  const sync = routers[1].route(x);
  const viaAsync = results[1] as { indices: Int32Array };
  assert.equal(Array.from(viaAsync.indices), Array.from(sync.indices));
});

test('the bound follows UV_THREADPOOL_SIZE as libuv reads it', () => {
  for (const value of ['9', 'abc', '5000']) {
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', '-e', `process.stdout.write(String(require('./lib/native').native().asyncGate().limit))`],
      { encoding: 'utf8', cwd: path.join(__dirname, '..'), env: { ...process.env, UV_THREADPOOL_SIZE: value } },
    );
    assert.is(r.status, 0, r.stderr);
    assert.is(Number(r.stdout.trim()), expectedLimit(value), `UV_THREADPOOL_SIZE=${value}: ${r.stdout}`);
  }
});

test.run();
