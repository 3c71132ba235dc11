/**
 * A Prometheus counter or gauge family whose values live in a {@link SeriesStore} (one slot per series) and whose
 * text is rendered natively from them (text-plan.ts). The collector adds drained deltas through series handles it
 * looked up once, so a scrape neither hashes label sets nor formats text: each series keeps its line prefix
 * (`name{labels} `) for the plan. It registers with a prom-client `Registry` as a custom collector object (`name`,
 * `help`, `type`, `get()`, `reset()`), which prints it as it prints its own Counter and Gauge;
 * test/observability-metrics.test.ts checks both writers agree.
 */
import type { Metric, Registry } from 'prom-client';
import { SeriesStore } from './series-store';
import { escapeString, familyHeader, formatLabels } from './text-format';
import { TextPlan, type TextSink } from './text-plan';

/** Label values by label name. */
export type SeriesLabels<L extends string> = Partial<Record<L, string | number>>;

/** One series of a family: a handle the owner may keep and pass to {@link SeriesFamily.add}. */
export interface Series {
  readonly labels: Readonly<Record<string, string>>;
  /** Its value's slot in the family's store (released, and -1, once removed). */
  slot: number;
  /** `\nname{labels} `, built on first use. */
  linePrefix: string | undefined;
  /** Set when the series was removed (by remove() or reset()): a handle to it then looks its labels up again. */
  removed: boolean;
}

export interface SeriesFamilyOptions<L extends string> {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  labelNames: readonly L[];
  registers?: Registry[];
  /** Called at the start of every `get()` (the scrape-time hook). */
  collect?: () => void;
  /** Where the values live (shared by a collector's families, so one native call renders them all). */
  store?: SeriesStore;
}

/** What `get()` returns, as prom-client's Counter and Gauge return it. */
export interface SeriesFamilyValues {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  values: { labels: Record<string, string>; value: number }[];
  aggregator: 'sum';
}

/** A counter or gauge family with labels, fast to add to and to print. */
export class SeriesFamily<L extends string = string> {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'gauge';
  readonly aggregator = 'sum' as const;
  readonly labelNames: readonly L[];
  /** The scrape-time hook (options.collect). */
  readonly collectHook: (() => void) | undefined;
  /** Where the values live. */
  readonly store: SeriesStore;
  private series = new Map<string, Series>();
  private escapedName: string | undefined;
  private header: string | undefined;

  constructor(opts: SeriesFamilyOptions<L>) {
    this.name = opts.name;
    this.help = opts.help;
    this.type = opts.type;
    this.labelNames = opts.labelNames;
    this.collectHook = opts.collect;
    this.store = opts.store ?? new SeriesStore();
    for (const registry of opts.registers ?? []) registry.registerMetric(this as unknown as Metric);
  }

  /** The series of a label set, created at 0 when new. Keep it to add without a lookup. */
  handle(labels: SeriesLabels<L>): Series {
    const key = this.keyOf(labels);
    let s = this.series.get(key);
    if (!s) {
      s = { labels: this.ownLabels(labels), slot: this.store.allocate(1), linePrefix: undefined, removed: false };
      this.series.set(key, s);
    }
    return s;
  }

  /**
   * Adds to a series by handle (a counter only grows). A handle of a removed series (remove(), reset()) puts
   * itself back, so a kept handle stays as fast as before.
   */
  add(series: Series, value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`${this.name}: value must be finite, got ${value}`);
    if (this.type === 'counter' && value < 0) throw new RangeError(`${this.name}: a counter cannot decrease`);
    if (series.removed) {
      const key = this.keyOf(series.labels as SeriesLabels<L>);
      const current = this.series.get(key);
      if (current) {
        this.store.values[current.slot] += value; // the series came back through another handle meanwhile
        return;
      }
      series.removed = false;
      series.slot = this.store.allocate(1);
      this.series.set(key, series);
    }
    this.store.values[series.slot] += value;
  }

  /** Adds `value` (default 1) to the series of `labels`. */
  inc(labels: SeriesLabels<L>, value = 1): void {
    this.add(this.handle(labels), value);
  }

  /** Sets a gauge's series (any number, NaN and infinities included, as prom-client's Gauge). */
  set(labels: SeriesLabels<L>, value: number): void {
    if (this.type !== 'gauge') throw new TypeError(`${this.name}: set() is for gauges`);
    if (typeof value !== 'number') throw new TypeError(`${this.name}: value must be a number, got ${typeof value}`);
    this.setSeries(this.handle(labels), value);
  }

  /** Sets a gauge's series by handle (see {@link set}); a removed handle puts its series back. */
  setSeries(series: Series, value: number): void {
    if (this.type !== 'gauge') throw new TypeError(`${this.name}: set() is for gauges`);
    if (series.removed) series = this.handle(series.labels as SeriesLabels<L>);
    this.store.values[series.slot] = value; // read after handle(): a new series may replace the values array
  }

  /** Removes one series. */
  remove(labels: SeriesLabels<L>): void {
    const key = this.keyOf(labels);
    const s = this.series.get(key);
    if (s) this.release(s);
    this.series.delete(key);
  }

  /** Drops every series (prom-client's `registry.resetMetrics()` calls this). */
  reset(): void {
    for (const s of this.series.values()) this.release(s);
    this.series = new Map();
  }

  /** prom-client's `get()`: runs the collect hook, then returns the series. */
  async get(): Promise<SeriesFamilyValues> {
    this.collectHook?.();
    const stored = this.store.values;
    const values = [...this.series.values()].map((s) => ({ labels: { ...s.labels }, value: stored[s.slot] }));
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** The family's text exposition without the collect hook, as prom-client's registry writes it. */
  text(): string {
    return TextPlan.build((sink) => this.writeText(sink)).render(this.store.values);
  }

  /** Writes the family's text into a plan: the header, then a line prefix and value slot per series. */
  writeText(sink: TextSink): void {
    // name and help never change: their escaped forms are built once
    const name = (this.escapedName ??= escapeString(this.name));
    sink.text((this.header ??= familyHeader(this.name, this.help, this.type)));
    for (const s of this.series.values()) {
      if (s.linePrefix === undefined) {
        const parts = formatLabels(s.labels);
        s.linePrefix = `\n${name}${parts.length ? `{${parts.join(',')}}` : ''} `;
      }
      sink.value(s.linePrefix, s.slot);
    }
  }

  private release(s: Series): void {
    s.removed = true;
    this.store.release(s.slot, 1);
    s.slot = -1;
  }

  /** The lookup key of a label set: every label of the family, and no other, checked on each lookup. */
  private keyOf(labels: SeriesLabels<L>): string {
    let key = '';
    let given = 0;
    for (const name of this.labelNames) {
      const value = labels[name];
      if (value === undefined) throw new TypeError(`${this.name}: missing label ${name}`);
      const text = String(value);
      key += `${text.length}:${text}`; // length-prefixed: no value can end early inside another
      given++;
    }
    if (Object.keys(labels).length !== given) {
      for (const name of Object.keys(labels)) {
        if (!(this.labelNames as readonly string[]).includes(name))
          throw new TypeError(`${this.name}: unknown label ${name}`);
      }
    }
    return key;
  }

  private ownLabels(labels: SeriesLabels<L>): Record<string, string> {
    const own: Record<string, string> = {};
    for (const name of this.labelNames) own[name] = String(labels[name]);
    return own;
  }
}
