/**
 * A Prometheus histogram family that can take whole bucket deltas at once. The native side counts its histograms
 * itself (per bucket, not cumulative); replaying each count through prom-client's `Histogram.observe` would cost
 * one call per token. This family keeps the same per-bucket state, adds a drained delta in O(buckets), and exposes
 * itself to a prom-client `Registry` as a custom collector object (what prom-client's registry calls: `name`,
 * `help`, `type`, `get()`, `reset()`), so it serialises exactly like a built-in histogram.
 */
import type { Metric, Registry } from 'prom-client';
import type { HistogramDelta } from './telemetry-types';
import { escapeString, familyHeader, formatLabels, piecesText, valueString } from './text-format';

/** Label values by label name. */
export type LabelValues<L extends string> = Partial<Record<L, string | number>>;

/** One exported sample, in the form prom-client's registry serialises. */
export interface HistogramSample {
  labels: Record<string, string | number>;
  /** Labels common to a series; the registry prints them after `labels`. */
  sharedLabels?: Record<string, string>;
  value: number;
  metricName: string;
}

/** What `get()` returns. */
export interface HistogramValues {
  name: string;
  help: string;
  type: 'histogram';
  values: HistogramSample[];
  aggregator: 'sum';
}

export interface BucketedHistogramOptions<L extends string> {
  name: string;
  help: string;
  labelNames: readonly L[];
  /** Finite upper bounds, ascending; +Inf is implicit. */
  buckets: readonly number[];
  /** Registries to register with. */
  registers?: Registry[];
  /** Called at the start of every `get()`, before the values are read (the scrape-time hook). */
  collect?: () => void;
}

interface Series {
  labels: Record<string, string>;
  /** Per-bucket counts, not cumulative: [bounds.length + 1], the last one is +Inf. */
  counts: Float64Array;
  sum: number;
  count: number;
  /** Line prefixes (`\nname_bucket{le="..",labels} ` per bucket, then _sum and _count), built on first print. */
  linePrefixes?: string[];
}

/** A histogram family with fixed buckets whose counts can be added per bucket. */
export class BucketedHistogram<L extends string = string> {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram' as const;
  /** How prom-client's cluster mode merges workers' values. */
  readonly aggregator = 'sum' as const;
  readonly labelNames: readonly L[];
  readonly upperBounds: readonly number[];
  /** The scrape-time hook (options.collect). */
  readonly collectHook: (() => void) | undefined;
  private series = new Map<string, Series>();
  /** For each set of source bounds seen: source bucket index -> our bucket index. */
  private readonly remaps = new Map<string, Int32Array>();
  /** The bounds of the latest delta (a copy) and their remap. */
  private lastRemap: { bounds: number[]; remap: Int32Array } | undefined;
  private header: string | undefined;

  constructor(opts: BucketedHistogramOptions<L>) {
    for (let i = 1; i < opts.buckets.length; i++) {
      if (!(opts.buckets[i] > opts.buckets[i - 1]))
        throw new RangeError(`${opts.name}: buckets must be strictly ascending`);
    }
    if ((opts.labelNames as readonly string[]).includes('le')) throw new RangeError(`${opts.name}: 'le' is reserved`);
    this.name = opts.name;
    this.help = opts.help;
    this.labelNames = opts.labelNames;
    this.upperBounds = Object.freeze([...opts.buckets]);
    this.collectHook = opts.collect;
    // prom-client's Registry duck-types its metrics; this object has every member the registry uses.
    for (const registry of opts.registers ?? []) registry.registerMetric(this as unknown as Metric);
  }

  /** Adds one observation. */
  observe(labels: LabelValues<L>, value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`${this.name}: observed value must be finite, got ${value}`);
    const s = this.seriesFor(labels);
    s.counts[bucketIndex(this.upperBounds, value)] += 1;
    s.sum += value;
    s.count += 1;
  }

  /**
   * Adds a natively counted delta. A source bucket (lo, hi] goes to our first bound >= hi, which is exact when the
   * source bounds are among ours (and for integer-valued data such as k per token); the source +Inf goes to +Inf.
   */
  addDelta(labels: LabelValues<L>, delta: HistogramDelta): void {
    if (delta.count === 0) return;
    if (delta.counts.length !== delta.bounds.length + 1) {
      throw new RangeError(
        `${this.name}: a delta needs bounds.length + 1 counts, got ${delta.counts.length} for ${delta.bounds.length} bounds`,
      );
    }
    const remap = this.remapFor(delta.bounds);
    const s = this.seriesFor(labels);
    for (let i = 0; i < delta.counts.length; i++) {
      if (delta.counts[i] !== 0) s.counts[remap[i]] += delta.counts[i];
    }
    s.sum += delta.sum;
    s.count += delta.count;
  }

  /** Drops every series. */
  reset(): void {
    this.series = new Map();
  }

  /** Removes one series. */
  remove(labels: LabelValues<L>): void {
    this.series.delete(this.keyOf(labels));
  }

  /** The exported samples with all labels on each (prom-client's `get()`, used by getMetricsAsJSON). */
  async get(): Promise<HistogramValues> {
    const data = await this.getForPromString();
    for (const v of data.values) {
      v.labels = { ...v.sharedLabels, ...v.labels };
      delete v.sharedLabels;
    }
    return data;
  }

  /**
   * The samples as prom-client's registry serialises them fastest: the series labels as one shared object per
   * series (the registry caches its formatted text), and only `le` per bucket.
   */
  async getForPromString(): Promise<HistogramValues> {
    this.collectHook?.();
    return this.samples();
  }

  /** {@link getForPromString} without the collect hook, synchronously (lib/observability/exposition.ts). */
  samples(): HistogramValues {
    const values: HistogramSample[] = [];
    const bucketName = `${this.name}_bucket`;
    const sumName = `${this.name}_sum`;
    const countName = `${this.name}_count`;
    for (const s of this.series.values()) {
      let cumulative = 0;
      for (let b = 0; b < this.upperBounds.length; b++) {
        cumulative += s.counts[b];
        values.push({
          labels: { le: this.upperBounds[b] },
          sharedLabels: s.labels,
          value: cumulative,
          metricName: bucketName,
        });
      }
      values.push({ labels: { le: '+Inf' }, sharedLabels: s.labels, value: s.count, metricName: bucketName });
      values.push({ labels: {}, sharedLabels: s.labels, value: s.sum, metricName: sumName });
      values.push({ labels: {}, sharedLabels: s.labels, value: s.count, metricName: countName });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** The family's text exposition without the collect hook, as prom-client's registry writes it. */
  text(): string {
    return piecesText(this);
  }

  /** Appends the pieces of {@link text} to `out`, to be joined once by the caller. */
  writeText(out: string[]): void {
    // name and help never change: the header is built once (regex replaces are slow on cold caches)
    out.push((this.header ??= familyHeader(this.name, this.help, 'histogram')));
    const buckets = this.upperBounds.length;
    for (const s of this.series.values()) {
      const prefixes = (s.linePrefixes ??= this.linePrefixesOf(s.labels));
      let cumulative = 0;
      for (let b = 0; b < buckets; b++) {
        cumulative += s.counts[b];
        out.push(prefixes[b], valueString(cumulative));
      }
      out.push(prefixes[buckets], valueString(s.count));
      out.push(prefixes[buckets + 1], valueString(s.sum));
      out.push(prefixes[buckets + 2], valueString(s.count));
    }
  }

  /** Count, sum and per-bucket counts of one series (a copy), or undefined when it has no observations. */
  snapshot(labels: LabelValues<L>): { counts: number[]; sum: number; count: number } | undefined {
    const s = this.series.get(this.keyOf(labels));
    return s && { counts: Array.from(s.counts), sum: s.sum, count: s.count };
  }

  private linePrefixesOf(labels: Record<string, string>): string[] {
    const name = escapeString(this.name);
    const shared = formatLabels(labels).join(',');
    const bucket = (le: number | string) => `\n${name}_bucket{le="${le}"${shared ? `,${shared}` : ''}} `;
    return [
      ...this.upperBounds.map(bucket),
      bucket('+Inf'),
      `\n${name}_sum${shared ? `{${shared}}` : ''} `,
      `\n${name}_count${shared ? `{${shared}}` : ''} `,
    ];
  }

  private keyOf(labels: LabelValues<L>): string {
    let key = '';
    for (const name of this.labelNames) key += `${labels[name] ?? ''}\u0000`;
    return key;
  }

  private seriesFor(labels: LabelValues<L>): Series {
    const key = this.keyOf(labels);
    let s = this.series.get(key);
    if (!s) {
      const own: Record<string, string> = {};
      for (const name of this.labelNames) {
        const value = labels[name];
        if (value === undefined) throw new TypeError(`${this.name}: missing label ${name}`);
        own[name] = String(value);
      }
      for (const name of Object.keys(labels)) {
        if (!(this.labelNames as readonly string[]).includes(name))
          throw new TypeError(`${this.name}: unknown label ${name}`);
      }
      s = { labels: own, counts: new Float64Array(this.upperBounds.length + 1), sum: 0, count: 0 };
      this.series.set(key, s);
    }
    return s;
  }

  private remapFor(bounds: readonly number[]): Int32Array {
    // Every drain brings the same bounds: compare them with the last ones before building a string key (the
    // number-to-string conversions were a visible part of a scrape).
    const last = this.lastRemap;
    if (last && last.bounds.length === bounds.length && bounds.every((b, i) => b === last.bounds[i])) return last.remap;
    const key = bounds.join(',');
    let remap = this.remaps.get(key);
    if (!remap) {
      remap = new Int32Array(bounds.length + 1);
      for (let i = 0; i < bounds.length; i++) remap[i] = bucketIndex(this.upperBounds, bounds[i], true);
      remap[bounds.length] = this.upperBounds.length;
      this.remaps.set(key, remap);
    }
    this.lastRemap = { bounds: [...bounds], remap };
    return remap;
  }
}

/**
 * Index of the first bound >= value, or +Inf's. `tolerant` (for matching another histogram's bounds) accepts a
 * bound that differs by rounding only, such as 0.1 * 3 against 0.3.
 */
function bucketIndex(bounds: readonly number[], value: number, tolerant = false): number {
  for (let b = 0; b < bounds.length; b++) {
    if (value <= (tolerant ? bounds[b] + 1e-9 * Math.abs(bounds[b]) + 1e-12 : bounds[b])) return b;
  }
  return bounds.length;
}
