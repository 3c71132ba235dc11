/**
 * The last drain of a native router or layer that dispose() frees: taken just before the free (a CUDA handle waits
 * for its device counters), handed to the next drain once; later drains go to the freed handle and fail, which a
 * MetricsCollector answers by detaching the source.
 */
export class FinalDrain {
  private record: Float64Array | undefined;

  /** Drains a handle one last time, then frees it (a drain that fails loses the last counts, never the free). */
  takeThenFree(drain: () => Float64Array, free: () => void): void {
    try {
      this.record = drain();
    } catch {
      this.record = undefined;
    } finally {
      free();
    }
  }

  /** The record taken, once; undefined when there is none (left). */
  once(): Float64Array | undefined {
    const record = this.record;
    this.record = undefined;
    return record;
  }

  /** {@link once} in the shape of a drain into `into`: the count written, or the record when it does not fit. */
  onceInto(into: Float64Array): Float64Array | number | undefined {
    const record = this.once();
    if (!record || into.length < record.length) return record;
    into.set(record);
    return record.length;
  }
}
