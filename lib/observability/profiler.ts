/**
 * `PerformanceProfiler`: named sections timed on the monotonic clock, with the resident memory change and the peak
 * resident memory seen while the section ran (sampled on an unref'ed timer, plus the start and end readings).
 * Resident set size is used because native weights and buffers live outside the V8 heap.
 */

/** The result of one profiled section. */
export interface ProfileResult {
  name: string;
  /** Wall-clock seconds between start and end. */
  duration: number;
  /** Resident set size at the end minus at the start, in bytes (may be negative). */
  memoryDelta: number;
  /** Highest resident set size seen during the section, in bytes. */
  peakMemory: number;
}

interface OpenProfile {
  startNs: bigint;
  startRssBytes: number;
  peakRssBytes: number;
}

export interface PerformanceProfilerOptions {
  /** How often resident memory is sampled while a section is open, in milliseconds. Default 10. */
  sampleIntervalMs?: number;
}

/** Where a profiler reports each section's resident memory: a MetricsCollector (or anything alike). */
export interface MemoryUsageSink {
  updateMemoryUsage(bytes: number, component: string): void;
}

/**
 * Times named sections; sections may overlap and nest, but one name is open at most once at a time. Given a
 * collector (`new PerformanceProfiler(collector)`, as in the guide), each ended section also sets
 * `dynamic_moe_memory_usage_bytes{component="<section name>"}` to the resident memory at its end: use a bounded
 * set of section names.
 */
export class PerformanceProfiler {
  private readonly open = new Map<string, OpenProfile>();
  private readonly sampleIntervalMs: number;
  private sampler: NodeJS.Timeout | undefined;
  private readonly metrics: MemoryUsageSink | undefined;

  constructor(opts?: PerformanceProfilerOptions);
  constructor(collector: MemoryUsageSink, opts?: PerformanceProfilerOptions);
  constructor(first: MemoryUsageSink | PerformanceProfilerOptions = {}, second: PerformanceProfilerOptions = {}) {
    const isSink = typeof (first as MemoryUsageSink).updateMemoryUsage === 'function';
    this.metrics = isSink ? (first as MemoryUsageSink) : undefined;
    const opts = isSink ? second : (first as PerformanceProfilerOptions);
    this.sampleIntervalMs = opts.sampleIntervalMs ?? 10;
    if (!(this.sampleIntervalMs > 0))
      throw new RangeError(`sampleIntervalMs: expected a positive number, got ${opts.sampleIntervalMs}`);
  }

  /** Starts a section. @throws Error when a section of that name is already open. */
  startProfile(name: string): void {
    if (this.open.has(name)) throw new Error(`startProfile: ${JSON.stringify(name)} is already running`);
    const rss = process.memoryUsage.rss();
    this.open.set(name, { startNs: process.hrtime.bigint(), startRssBytes: rss, peakRssBytes: rss });
    if (!this.sampler) {
      this.sampler = setInterval(() => this.sample(), this.sampleIntervalMs);
      this.sampler.unref();
    }
  }

  /** Ends a section and returns its numbers. @throws Error when no section of that name is open. */
  endProfile(name: string): ProfileResult {
    const endNs = process.hrtime.bigint();
    const p = this.open.get(name);
    if (!p) throw new Error(`endProfile: ${JSON.stringify(name)} was not started`);
    const rss = process.memoryUsage.rss();
    this.open.delete(name);
    if (this.open.size === 0 && this.sampler) {
      clearInterval(this.sampler);
      this.sampler = undefined;
    }
    this.metrics?.updateMemoryUsage(rss, name);
    return {
      name,
      duration: Number(endNs - p.startNs) / 1e9,
      memoryDelta: rss - p.startRssBytes,
      peakMemory: Math.max(p.peakRssBytes, rss),
    };
  }

  /** Runs `fn` (sync or async) as a section and returns its result with the profile. */
  async profile<T>(name: string, fn: () => T | Promise<T>): Promise<{ result: T; profile: ProfileResult }> {
    this.startProfile(name);
    try {
      const result = await fn();
      return { result, profile: this.endProfile(name) };
    } catch (error) {
      if (this.open.has(name)) this.endProfile(name);
      throw error;
    }
  }

  /** Takes one memory sample now (also useful inside a long synchronous section, where the timer cannot run). */
  sample(): void {
    if (this.open.size === 0) return;
    const rss = process.memoryUsage.rss();
    for (const p of this.open.values()) if (rss > p.peakRssBytes) p.peakRssBytes = rss;
  }

  /** Names of the sections now open. */
  get running(): string[] {
    return [...this.open.keys()];
  }
}
