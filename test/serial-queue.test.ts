/** SerialQueue: one task at a time, in order, and a failed task does not stop the next. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { SerialQueue } from '../lib/serial-queue';

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

test.run();
