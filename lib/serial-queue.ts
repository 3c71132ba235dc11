/**
 * Runs async native calls of one object one after another. The native side serialises them anyway (one arena
 * per layer, one compute pool); queueing them here keeps them from each occupying a libuv thread while they wait,
 * so concurrent forwardAsync calls cannot starve fs, dns and crypto, which share libuv's 4 threads.
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
