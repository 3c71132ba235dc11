/**
 * Every value of a metrics collector's series in one Float64Array. The families (series-family.ts,
 * bucketed-histogram.ts) keep a slot per counter or gauge series and a block per histogram series (cumulative
 * bucket counts, then sum and count), so a scrape renders all of them natively in one call (text-plan.ts) instead
 * of formatting a few hundred JS strings, and a drain adds into plain array elements.
 */
export class SeriesStore {
  /** The values, by slot. Replaced by a larger array when it fills: read it through the store every time. */
  values = new Float64Array(256);
  /**
   * Bumped whenever a series appears or disappears (a slot is allocated or released): text plans built for an
   * older version are stale.
   */
  version = 0;
  private used = 0;
  /** Released blocks by size, reused first. */
  private readonly free = new Map<number, number[]>();

  /** A block of `size` slots, all 0. */
  allocate(size: number): number {
    this.version++;
    const reused = this.free.get(size)?.pop();
    if (reused !== undefined) return reused;
    if (this.used + size > this.values.length) {
      let capacity = this.values.length * 2;
      while (capacity < this.used + size) capacity *= 2;
      const grown = new Float64Array(capacity);
      grown.set(this.values.subarray(0, this.used));
      this.values = grown;
    }
    const slot = this.used;
    this.used += size;
    return slot;
  }

  /** Gives a block back (zeroed, for the next series that takes it). */
  release(slot: number, size: number): void {
    this.version++;
    this.values.fill(0, slot, slot + size);
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(slot);
  }
}
