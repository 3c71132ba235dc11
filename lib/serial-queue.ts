/**
 * Runs async native calls of one object one after another. The native side serialises them anyway (one arena
 * per layer, one compute pool); queueing them here keeps them from each occupying a libuv thread while they wait,
 * so concurrent forwardAsync calls cannot starve fs, dns and crypto, which share libuv's 4 threads.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  /** Starts `task` once every earlier task has settled; resolves or rejects with it. */
  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task, task);
    this.tail = result.catch(() => undefined);
    return result;
  }
}
