/**
 * Runs async native calls of one object one after another. The native side serialises them anyway (one arena
 * per layer, one compute pool); queueing them here keeps them from each holding a libuv thread or a slot of the
 * native async gate while they wait. Calls of different objects, on every JS thread of the process, are bounded
 * together natively (native/binding/async_gate.h): at most half of libuv's threads run them at once, so that fs,
 * dns and crypto, which share those threads, are never starved.
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
