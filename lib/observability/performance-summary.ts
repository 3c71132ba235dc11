/**
 * One `performance.measurement` log record per interval instead of one record per call: logging on the hot path
 * would cost more than the routing itself at small T. The summary is built from drained native telemetry (through
 * a MetricsCollector's drain listener, or by draining a source directly when no collector is used). A collector
 * serving several models (observe(source, { modelName })) gets one record per model and interval.
 */
import { isDisposedError } from '../errors';
import { LogEvent } from './log-events';
import { getLogger, type EventLogger } from './logging';
import { drainSharedRecord, type MetricsCollector } from './metrics';
import { RecordHistogram, type TelemetryRecord, type TelemetrySource } from './telemetry-types';

export interface PerformanceSummaryOptions {
  /** Take the deltas this collector drains (preferred when metrics are on: a source has one drainer). */
  collector?: MetricsCollector;
  /**
   * Or drain this source directly. A collector observing it still counts every call, but its scrapes then take
   * calls from these summaries: pass the collector instead. When the source is disposed, the summaries stop.
   */
  source?: TelemetrySource;
  /** Where to log. Default: getLogger('performance'). */
  logger?: EventLogger;
  /** Interval between summaries in milliseconds. Default 60 000. */
  intervalMs?: number;
  /** Log a summary even when nothing ran in the interval. Default false. */
  logWhenIdle?: boolean;
  /**
   * The `model.name` written in `data`, for every source together. Default: one record per model, each named as
   * its sources were observed (the collector's model name unless observe() gave another).
   */
  modelName?: string;
}

/** The `data.performance` object of a summary record. */
export interface PerformanceSummary {
  interval_seconds: number;
  calls: number;
  errors: number;
  tokens_processed: number;
  tokens_per_second: number;
  /** Mean experts per token over the interval. */
  experts_used: number;
  /** Time spent in calls over the interval (the guide's `duration_seconds`, summed). */
  duration_seconds: number;
  duration_seconds_mean: number;
  /** Upper bound of the bucket holding the 95th percentile call (NaN when it is the +Inf bucket or no call). */
  duration_seconds_p95: number;
  flops_computed: number;
  flops_static: number;
  /** 1 − computed / static (0 for routers, which compute no expert FLOPs). */
  flop_reduction: number;
  /**
   * Lowest latest load balance over the layers of the record's model (NaN before any call); with a collector, of
   * its attached layers: a detached one no longer counts.
   */
  load_balance: number;
  spans_dropped: number;
}

/** Accumulates drained deltas and logs a summary of them every interval. */
export class PerformanceSummaryLogger {
  private readonly logger: EventLogger;
  private readonly intervalMs: number;
  /** The one name for every source, when given. */
  private readonly modelName: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private windowStartMs = performance.now();
  /** Every source's calls together (what logNow returns), and each model's (what is logged). */
  private readonly total = emptyWindow();
  private readonly models = new Map<string | undefined, Window>();
  /** Without a collector: the source's latest load balance (a collector keeps its layers' own). */
  private sourceLoadBalance = NaN;

  constructor(private readonly opts: PerformanceSummaryOptions) {
    if (!opts.collector === !opts.source)
      throw new TypeError('PerformanceSummaryLogger: pass exactly one of collector or source');
    this.intervalMs = opts.intervalMs ?? 60_000;
    if (!(this.intervalMs > 0)) throw new RangeError(`intervalMs: expected a positive number, got ${opts.intervalMs}`);
    this.logger = opts.logger ?? getLogger('performance');
    this.modelName = opts.modelName;
  }

  /** Starts the periodic summaries. The timer does not keep the process alive. */
  start(): this {
    if (this.timer) return this;
    if (this.opts.collector)
      this.unsubscribe = this.opts.collector.onDrainRecord((record, info) => this.add(record, info.modelName));
    this.windowStartMs = performance.now();
    this.timer = setInterval(() => this.logSafely(() => this.logNow({ drain: 'ifStale' })), this.intervalMs);
    this.timer.unref();
    return this;
  }

  /** Stops the timer; with `flush` (default) logs what accumulated since the last summary. */
  stop(flush = true): void {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = undefined;
    if (flush) this.logSafely(() => this.logNow());
    this.unsubscribe?.();
    this.unsubscribe = undefined;
  }

  /**
   * A summary from the timer or stop(), which must not throw: a source that was disposed ends the summaries (its
   * last calls were in the drain before); any other failure is a process warning, and the next interval tries
   * again.
   */
  private logSafely(log: () => void): void {
    try {
      log();
    } catch (error) {
      if (isDisposedError(error)) {
        this.stop(false);
        return;
      }
      process.emitWarning(
        `dynamic-moe-router-kit: the performance summary failed: ${(error as Error)?.message ?? String(error)}`,
      );
    }
  }

  /**
   * Logs the summary of the calls drained since the previous one, one record per model, and returns that of all
   * of them together (undefined when idle and not logged), draining first. With `drain: 'ifStale'` (what the
   * periodic timer does) a collector's recent drain is used instead: when one of its scrapes drained less than a
   * tenth of the interval ago (at most 1 s), the summary covers the calls up to that drain and the rest go into the
   * next one — a scrape has just done the work.
   */
  logNow(opts: { drain?: 'always' | 'ifStale' } = {}): PerformanceSummary | undefined {
    const collector = this.opts.collector;
    let end: number;
    if (collector) {
      const last = collector.lastDrainMs;
      const fresh = last > this.windowStartMs && performance.now() - last <= Math.min(this.intervalMs / 10, 1000);
      if (!(opts.drain === 'ifStale' && fresh)) collector.drainNow();
      end = collector.lastDrainMs;
    } else {
      const record = drainSharedRecord(this.opts.source!);
      this.add(record, undefined);
      if (Number.isFinite(record.loadBalance)) this.sourceLoadBalance = record.loadBalance;
      end = performance.now();
    }
    const seconds = (end - this.windowStartMs) / 1000;
    this.windowStartMs = end;
    const idle = (w: Window) => w.calls === 0 && w.errors === 0 && !this.opts.logWhenIdle;
    const balance = (model?: string) =>
      collector ? collector.latestLoadBalanceScore(undefined, model) : this.sourceLoadBalance;
    const summary = summarise(this.total, seconds, balance());
    const logged = !idle(this.total);
    resetWindow(this.total);
    // Each drain adds every attached source's record, even without calls: a model that added none in this
    // interval has no source left, and its window goes (the interval after a detach's last drain was logged).
    for (const [model, window] of this.models) if (!window.drained) this.models.delete(model);
    if (this.models.size === 0 && logged) this.log(summary, this.modelName ?? collector?.modelName); // logWhenIdle
    for (const [model, window] of this.models) {
      if (!idle(window))
        this.log(summarise(window, seconds, balance(this.modelName === undefined ? model : undefined)), model);
      resetWindow(window);
    }
    return logged ? summary : undefined;
  }

  private log(summary: PerformanceSummary, model: string | undefined): void {
    this.logger.info(
      LogEvent.PERFORMANCE_MEASUREMENT,
      `${summary.calls} calls, ${summary.tokens_processed} tokens in ${summary.interval_seconds.toFixed(1)} s`,
      { data: { performance: summary, model: { name: model ?? null } } },
    );
  }

  private add(r: TelemetryRecord, modelName: string | undefined): void {
    const model = this.modelName ?? modelName;
    let window = this.models.get(model);
    if (!window) this.models.set(model, (window = emptyWindow()));
    addRecord(this.total, r);
    addRecord(window, r);
    window.drained = true;
  }
}

interface Window {
  calls: number;
  errors: number;
  tokens: number;
  assignments: number;
  flopsComputed: number;
  flopsStatic: number;
  spansDropped: number;
  /** Whether a drain added a record in this window. */
  drained: boolean;
  /** Counts per bucket, reset in place from window to window (a window's first observations choose the layout). */
  duration: { bounds: number[]; counts: Float64Array; sum: number; count: number };
}

function emptyWindow(): Window {
  return {
    calls: 0,
    errors: 0,
    tokens: 0,
    assignments: 0,
    flopsComputed: 0,
    flopsStatic: 0,
    spansDropped: 0,
    drained: false,
    duration: { bounds: [], counts: new Float64Array(0), sum: 0, count: 0 },
  };
}

function resetWindow(w: Window): void {
  w.calls = w.errors = w.tokens = w.assignments = w.flopsComputed = w.flopsStatic = w.spansDropped = 0;
  w.drained = false;
  w.duration.counts.fill(0);
  w.duration.sum = w.duration.count = 0;
}

function addRecord(w: Window, r: TelemetryRecord): void {
  w.calls += r.calls;
  w.errors += r.error(0) + r.error(1) + r.error(2);
  w.tokens += r.tokens;
  w.assignments += r.assignments;
  w.flopsComputed += r.flopsComputed;
  w.flopsStatic += r.flopsStatic;
  w.spansDropped += r.spansDropped;
  if (r.histogramCount(RecordHistogram.Duration) > 0)
    addDurationCounts(w.duration, r.flat, r.histogramOffset(RecordHistogram.Duration));
}

/**
 * Adds the histogram at `flat[at]` (nBounds, bounds, counts, sum, count: the drain record's layout) into an
 * accumulator, reading the record in place (this runs at every drain; all sources share the native duration bounds).
 */
function addDurationCounts(into: Window['duration'], flat: Float64Array, at: number): void {
  const n = flat[at];
  // (a window's first observations choose the layout: a source with other bounds would make it change)
  if (into.counts.length !== n + 1 && into.count === 0) {
    into.bounds = Array.from(flat.subarray(at + 1, at + 1 + n));
    into.counts = new Float64Array(n + 1);
  }
  if (into.counts.length === n + 1) for (let i = 0; i <= n; i++) into.counts[i] += flat[at + 1 + n + i];
  into.sum += flat[at + 2 + 2 * n];
  into.count += flat[at + 3 + 2 * n];
}

function summarise(w: Window, intervalSeconds: number, loadBalance: number): PerformanceSummary {
  return {
    interval_seconds: intervalSeconds,
    calls: w.calls,
    errors: w.errors,
    tokens_processed: w.tokens,
    tokens_per_second: intervalSeconds > 0 ? w.tokens / intervalSeconds : 0,
    experts_used: w.tokens > 0 ? w.assignments / w.tokens : 0,
    duration_seconds: w.duration.sum,
    duration_seconds_mean: w.duration.count > 0 ? w.duration.sum / w.duration.count : 0,
    duration_seconds_p95: quantileUpperBound(w.duration, 0.95),
    flops_computed: w.flopsComputed,
    flops_static: w.flopsStatic,
    flop_reduction: w.flopsStatic > 0 ? 1 - w.flopsComputed / w.flopsStatic : 0,
    load_balance: loadBalance,
    spans_dropped: w.spansDropped,
  };
}

/** The upper bound of the bucket where the q-quantile falls. */
function quantileUpperBound(h: Window['duration'], q: number): number {
  if (h.count === 0) return NaN;
  const rank = q * h.count;
  let cumulative = 0;
  for (let i = 0; i < h.counts.length; i++) {
    cumulative += h.counts[i];
    if (cumulative >= rank) return i < h.bounds.length ? h.bounds[i] : NaN;
  }
  return NaN;
}
