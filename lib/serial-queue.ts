/**
 * Runs async native calls of one object one after another. The native side serialises them anyway (one arena
 * per layer, one compute pool); queueing them here keeps them from each occupying a libuv thread while they wait.
 * Calls of different objects are bounded together by {@link nativeAsyncSlots}, so that concurrent calls cannot
 * starve fs, dns and crypto, which share libuv's threads.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();
  /** Tasks queued or running. */
  private pending = 0;

  /** Starts `task` once every earlier task has settled; resolves or rejects with it. */
  run<T>(task: () => Promise<T>): Promise<T> {
    this.pending++;
    const result = this.tail.then(task, task).finally(() => this.pending--);
    this.tail = result.catch(() => undefined);
    return result;
  }

  /** Runs `fn` now when no task is queued or running, else once they have all settled (a dispose after calls). */
  afterPending(fn: () => void): void {
    if (this.pending === 0) fn();
    else void this.run(async () => fn()).catch(() => undefined); // (the callers' fn never throws)
  }
}

/** Runs at most `limit` tasks at once, the rest in arrival order as earlier ones settle. */
export class Slots {
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1)
      throw new RangeError(`Slots: expected an integer limit >= 1, got ${limit}`);
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.running < this.limit) this.running++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await task();
    } finally {
      // (a waiting task takes the slot over; the count changes only when nobody waits)
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }
}

/**
 * libuv's thread pool size as this process was started with (libuv reads UV_THREADPOOL_SIZE once, default 4,
 * clamped to 1..1024).
 */
function libuvThreads(): number {
  const n = Math.floor(Number(process.env.UV_THREADPOOL_SIZE));
  return n >= 1 ? Math.min(n, 1024) : 4;
}

/**
 * Every async native call of this package (all routers and layers of this JS thread) takes one of these slots for
 * as long as it occupies a libuv thread: at most half of libuv's threads (2 of the default 4), so fs, dns and crypto
 * keep the rest however many objects are called at once. The calls of different objects take turns on the one
 * compute pool anyway, so the limit costs them little.
 */
export const nativeAsyncSlots = new Slots(Math.max(1, Math.floor(libuvThreads() / 2)));
