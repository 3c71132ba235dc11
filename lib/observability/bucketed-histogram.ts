/**
 * A Prometheus histogram family that can take whole bucket deltas at once. The native side counts its histograms
 * itself (per bucket, not cumulative); replaying each count through prom-client's `Histogram.observe` would cost
 * one call per token. This family adds a drained delta in O(buckets) into a block of a {@link SeriesStore} per
 * series (cumulative bucket counts, then sum and count: the values its text prints, rendered natively with the
 * collector's other families), and exposes itself to a prom-client `Registry` as a custom collector object (what
 * prom-client's registry calls: `name`, `help`, `type`, `get()`, `reset()`), so it serialises exactly like a
 * built-in histogram.
 */
import type { Metric, Registry } from 'prom-client';
import { SeriesStore } from './series-store';
import type { HistogramDelta } from './telemetry-types';
import { escapeString, familyHeader, formatLabels } from './text-format';
import { TextPlan, type TextSink } from './text-plan';

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
  /** Where the values live (shared by a collector's families, so one native call renders them all). */
  store?: SeriesStore;
}

/** One series: a handle the owner may keep and pass to {@link BucketedHistogram.addFlatDelta}. */
export interface HistogramSeries {
  readonly labels: Record<string, string>;
  /**
   * First slot of its block in the store: the cumulative count of each finite bucket, then the sum, then the
   * count (which is also the +Inf bucket's). -1 once removed.
   */
  slot: number;
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
  /** Where the values live. */
  readonly store: SeriesStore;
  private series = new Map<string, HistogramSeries>();
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
    this.store = opts.store ?? new SeriesStore();
    // prom-client's Registry duck-types its metrics; this object has every member the registry uses.
    for (const registry of opts.registers ?? []) registry.registerMetric(this as unknown as Metric);
  }

  /** Adds one observation. */
  observe(labels: LabelValues<L>, value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`${this.name}: observed value must be finite, got ${value}`);
    const { slot } = this.handle(labels);
    const values = this.store.values;
    const buckets = this.upperBounds.length;
    for (let b = bucketIndex(this.upperBounds, value); b < buckets; b++) values[slot + b] += 1;
    values[slot + buckets] += value;
    values[slot + buckets + 1] += 1;
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
    const buckets = this.upperBounds.length;
    const perBucket = bucketScratch(buckets);
    for (let i = 0; i < delta.counts.length; i++) perBucket[remap[i]] += delta.counts[i];
    const { slot } = this.handle(labels); // first: a new series may replace the values array
    addBucketCounts(this.store.values, slot, buckets, perBucket, delta.sum, delta.count);
  }

  /**
   * {@link addDelta} from a flat drain record (telemetry-types.ts) without decoding it: the histogram at `at`
   * (nBounds, bounds, counts, sum, count). Returns the offset after it. A series that was removed comes back.
   */
  addFlatDelta(series: HistogramSeries, flat: Float64Array, at: number): number {
    const nBounds = flat[at];
    const countsAt = at + 1 + nBounds;
    const end = countsAt + nBounds + 1 + 2;
    if (!(Number.isInteger(nBounds) && nBounds >= 0 && end <= flat.length))
      throw new RangeError(`${this.name}: a flat histogram record ends early`);
    if (flat[end - 1] === 0) return end;
    const remap = this.remapForFlat(flat, at + 1, nBounds);
    const { slot } = this.revive(series); // first: reviving may replace the values array
    addFlatHistogram(flat, at, this.store.values, slot, this.upperBounds.length, remap, 0);
    return end;
  }

  /** @internal Where the buckets of a source histogram with these bounds go (lib/observability/drain-plan.ts). */
  bucketTarget(bounds: readonly number[]): { buckets: number; remap: Int32Array } {
    return { buckets: this.upperBounds.length, remap: this.remapFor(bounds) };
  }

  /** The series of a label set, created empty when new. Keep it for {@link addFlatDelta}. */
  handle(labels: LabelValues<L>): HistogramSeries {
    const key = this.keyOf(labels);
    let s = this.series.get(key);
    if (!s) {
      s = { labels: this.ownLabels(labels), slot: this.store.allocate(this.upperBounds.length + 2) };
      this.series.set(key, s);
    }
    return s;
  }

  /** Drops every series. */
  reset(): void {
    for (const s of this.series.values()) this.release(s);
    this.series = new Map();
  }

  /** Removes one series. */
  remove(labels: LabelValues<L>): void {
    const key = this.keyOf(labels);
    const s = this.series.get(key);
    if (s) this.release(s);
    this.series.delete(key);
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
    const stored = this.store.values;
    const buckets = this.upperBounds.length;
    for (const s of this.series.values()) {
      for (let b = 0; b < buckets; b++) {
        values.push({
          labels: { le: this.upperBounds[b] },
          sharedLabels: s.labels,
          value: stored[s.slot + b],
          metricName: bucketName,
        });
      }
      const sum = stored[s.slot + buckets];
      const count = stored[s.slot + buckets + 1];
      values.push({ labels: { le: '+Inf' }, sharedLabels: s.labels, value: count, metricName: bucketName });
      values.push({ labels: {}, sharedLabels: s.labels, value: sum, metricName: sumName });
      values.push({ labels: {}, sharedLabels: s.labels, value: count, metricName: countName });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** The family's text exposition without the collect hook, as prom-client's registry writes it. */
  text(): string {
    return TextPlan.build((sink) => this.writeText(sink)).render(this.store.values);
  }

  /** Writes the family's text into a plan: the header, then each series' lines with their value slots. */
  writeText(sink: TextSink): void {
    // name and help never change: the header is built once
    sink.text((this.header ??= familyHeader(this.name, this.help, 'histogram')));
    const buckets = this.upperBounds.length;
    for (const s of this.series.values()) {
      const prefixes = (s.linePrefixes ??= this.linePrefixesOf(s.labels));
      for (let b = 0; b < buckets; b++) sink.value(prefixes[b], s.slot + b);
      sink.value(prefixes[buckets], s.slot + buckets + 1); // +Inf: the count
      sink.value(prefixes[buckets + 1], s.slot + buckets);
      sink.value(prefixes[buckets + 2], s.slot + buckets + 1);
    }
  }

  /** Count, sum and per-bucket counts of one series (a copy), or undefined when it has no observations. */
  snapshot(labels: LabelValues<L>): { counts: number[]; sum: number; count: number } | undefined {
    const s = this.series.get(this.keyOf(labels));
    if (!s) return undefined;
    const stored = this.store.values;
    const buckets = this.upperBounds.length;
    const count = stored[s.slot + buckets + 1];
    const counts: number[] = [];
    for (let b = 0, below = 0; b <= buckets; b++) {
      const cumulative = b < buckets ? stored[s.slot + b] : count;
      counts.push(cumulative - below);
      below = cumulative;
    }
    return { counts, sum: stored[s.slot + buckets], count };
  }

  /** A kept handle of a removed series puts it back (or returns the series that replaced it meanwhile). */
  private revive(s: HistogramSeries): HistogramSeries {
    if (s.slot >= 0) return s;
    const key = this.keyOf(s.labels as LabelValues<L>);
    const current = this.series.get(key);
    if (current) return current;
    s.slot = this.store.allocate(this.upperBounds.length + 2);
    this.series.set(key, s);
    return s;
  }

  private release(s: HistogramSeries): void {
    this.store.release(s.slot, this.upperBounds.length + 2);
    s.slot = -1;
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
    for (const name of this.labelNames) {
      const text = String(labels[name] ?? '');
      key += `${text.length}:${text}`; // length-prefixed: no value can end early inside another
    }
    return key;
  }

  private ownLabels(labels: LabelValues<L>): Record<string, string> {
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
    return own;
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

  /** {@link remapFor} of the `n` bounds at `flat[at]`, compared in place with the last ones. */
  private remapForFlat(flat: Float64Array, at: number, n: number): Int32Array {
    const last = this.lastRemap;
    if (last && last.bounds.length === n) {
      let same = true;
      for (let i = 0; i < n && same; i++) same = flat[at + i] === last.bounds[i];
      if (same) return last.remap;
    }
    return this.remapFor(Array.from(flat.subarray(at, at + n)));
  }
}

/** Per-bucket counts of the delta being added (reused; grown for a family with more buckets). */
let scratch = new Float64Array(64);

/** The reused per-bucket counts, zeroed for `buckets` finite buckets and +Inf. */
function bucketScratch(buckets: number): Float64Array {
  if (scratch.length < buckets + 1) scratch = new Float64Array(2 * (buckets + 1));
  return scratch.fill(0, 0, buckets + 1);
}

/** Adds per-bucket counts (made cumulative here), a sum and a count to the store block at `values[slot]`. */
function addBucketCounts(
  values: Float64Array,
  slot: number,
  buckets: number,
  perBucket: Float64Array,
  sum: number,
  count: number,
): void {
  let cumulative = 0;
  for (let b = 0; b < buckets; b++) {
    cumulative += perBucket[b];
    values[slot + b] += cumulative;
  }
  values[slot + buckets] += sum;
  values[slot + buckets + 1] += count;
}

/**
 * Adds the flat histogram at `flat[at]` (nBounds, bounds, counts, sum, count: telemetry-types.ts) to the store
 * block at `values[slot]` (cumulative buckets, then sum and count), source bucket i going to block bucket
 * `remap[remapAt + i]` (`buckets` is +Inf). BucketedHistogram.addFlatDelta and a DrainPlan's histogram ops both
 * add through it.
 */
export function addFlatHistogram(
  flat: Float64Array,
  at: number,
  values: Float64Array,
  slot: number,
  buckets: number,
  remap: Int32Array,
  remapAt: number,
): void {
  const nBounds = flat[at];
  const count = flat[at + 2 * nBounds + 3];
  if (count === 0) return;
  const perBucket = bucketScratch(buckets);
  const counts = at + 1 + nBounds;
  for (let i = 0; i <= nBounds; i++) perBucket[remap[remapAt + i]] += flat[counts + i];
  addBucketCounts(values, slot, buckets, perBucket, flat[at + 2 * nBounds + 2], count);
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
