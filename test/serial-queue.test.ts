/**
 * SerialQueue: one task at a time, in order, and a failed task does not stop the next. Slots: at most `limit` at
 * once; and every router's and layer's async native calls share one bound, half of libuv's threads.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MoELayer, Router } from '../lib';
import { nativeAsyncSlots, SerialQueue, Slots } from '../lib/serial-queue';
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

test('Slots: at most limit tasks at once, the rest in arrival order, failures release their slot', async () => {
  const slots = new Slots(2);
  let running = 0;
  let most = 0;
  const started: number[] = [];
  const task =
    (i: number, ms: number, fail = false) =>
    async () => {
      started.push(i);
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, ms));
      running--;
      if (fail) throw new Error(`task ${i}`);
      return i;
    };
  const results = await Promise.allSettled([
    slots.run(task(1, 20)),
    slots.run(task(2, 5, true)),
    slots.run(task(3, 5)),
    slots.run(task(4, 5)),
    slots.run(task(5, 5)),
  ]);
  assert.is(most, 2);
  assert.equal(started, [1, 2, 3, 4, 5]);
  assert.equal(
    results.map((r) => r.status),
    ['fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled'],
  );
  // all slots free again: two start at once
  let both = 0;
  await Promise.all([0, 1].map(() => slots.run(async () => void both++)));
  assert.is(both, 2);
  assert.throws(() => new Slots(0), /limit/);
});

test('async calls of many routers and layers at once occupy at most half of libuv threads', async () => {
  const uv = Math.floor(Number(process.env.UV_THREADPOOL_SIZE)) || 4;
  assert.is(nativeAsyncSlots.limit, Math.max(1, Math.floor(Math.min(uv, 1024) / 2)));
  const E = 8;
  const d = 32;
  let inFlight = 0;
  let most = 0;
  // count the native calls in flight: each one holds a libuv thread until it settles
  const counted = <T>(p: Promise<T>) => {
    inFlight++;
    most = Math.max(most, inFlight);
    return p.finally(() => inFlight--);
  };
  const routers = Array.from({ length: 5 }, (_, i) => {
    const r = new Router({
      numExperts: E,
      hiddenSize: d,
      gateWeight: randn(E * d, SEED + i),
      selection: { kind: 'topk', k: 2 },
    });
    const h = r.handle as unknown as { routeAsync: (...a: unknown[]) => Promise<unknown> };
    const inner = h.routeAsync.bind(h);
    // (the prototype's method is read-only: defined on the instance instead)
    Object.defineProperty(h, 'routeAsync', { value: (...a: unknown[]) => counted(inner(...a)) });
    return r;
  });
  const layers = routers.slice(0, 3).map((router, i) => {
    const f = 16;
    const layer = new MoELayer({
      router,
      experts: {
        stacked: true,
        w1: randn(E * f * d, SEED + 10 + i, 0.1),
        w3: randn(E * f * d, SEED + 20 + i, 0.1),
        w2: randn(E * d * f, SEED + 30 + i, 0.1),
      },
    });
    const h = (layer as unknown as { handle: { forwardAsync: (...a: unknown[]) => Promise<unknown> } }).handle;
    const inner = h.forwardAsync.bind(h);
    Object.defineProperty(h, 'forwardAsync', { value: (...a: unknown[]) => counted(inner(...a)) });
    return layer;
  });
  const x = randn(64 * d, SEED + 30);
  const calls: Promise<unknown>[] = [];
  for (let round = 0; round < 3; round++) {
    for (const r of routers) calls.push(r.routeAsync(x));
    for (const l of layers) calls.push(l.forwardAsync(x));
  }
  const results = await Promise.all(calls);
  assert.is(results.length, 24);
  assert.ok(
    most >= 1 && most <= nativeAsyncSlots.limit,
    `${most} native calls at once, limit ${nativeAsyncSlots.limit}`,
  );
  // and the results are those of sync calls
  const sync = routers[1].route(x);
  const viaAsync = results[1] as { indices: Int32Array };
  assert.equal(Array.from(viaAsync.indices), Array.from(sync.indices));
});

test.run();
