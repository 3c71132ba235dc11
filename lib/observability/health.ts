/**
 * Health checks and their aggregate, in the JSON shape of the observability guide:
 *
 *   { status, timestamp, summary: {total_checks, healthy, degraded, unhealthy},
 *     checks: { <name>: {status, message, duration_ms, details} } }
 *
 * Overall status: unhealthy if any check is, else degraded if any is, else unknown if any is, else healthy.
 * The model check is real: it runs a tiny forward (or route) on random input and times it.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as os from 'node:os';
import { brief } from '../errors';
import { LogEvent } from './log-events';
import type { EventLogger } from './logging';
import { drainSharedRecord } from './metrics';
import type { TelemetrySource } from './telemetry-types';

/** The four statuses, as the JSON spells them. */
export const HealthStatus = {
  HEALTHY: 'healthy',
  DEGRADED: 'degraded',
  UNHEALTHY: 'unhealthy',
  UNKNOWN: 'unknown',
} as const;
export type HealthStatusValue = (typeof HealthStatus)[keyof typeof HealthStatus];

/** What a check's `performCheck` returns. */
export interface CheckOutcome {
  status: HealthStatusValue;
  message: string;
  details?: Record<string, unknown>;
}

/** One entry of `checks`. */
export interface HealthCheckResult {
  status: HealthStatusValue;
  message: string;
  duration_ms: number;
  details: Record<string, unknown>;
}

/** The report of {@link HealthMonitor.getOverallHealth}. */
export interface HealthReport {
  status: HealthStatusValue;
  /** Seconds since the epoch, with fractions. */
  timestamp: number;
  summary: { total_checks: number; healthy: number; degraded: number; unhealthy: number };
  checks: Record<string, HealthCheckResult>;
}

/** Base class of every check: subclasses implement `performCheck`; `run` times it, applies the timeout and catches. */
export abstract class BaseHealthCheck {
  /**
   * @param name the key of this check in `checks`.
   * @param timeoutMs a check still running after this long is reported unhealthy.
   */
  constructor(
    readonly name: string,
    readonly timeoutMs = 10_000,
  ) {
    if (typeof name !== 'string' || name.length === 0)
      throw new TypeError(`name: expected a non-empty string, got ${String(name)}`);
    checkTimeout('timeoutMs', timeoutMs);
  }

  protected abstract performCheck(): Promise<CheckOutcome> | CheckOutcome;

  /** Runs the check once; never throws (an exception makes the result unhealthy). */
  async run(): Promise<HealthCheckResult> {
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<CheckOutcome>((resolve) => {
      // Not unref'ed: someone awaits this result, and the timer is cleared as soon as the check settles.
      timer = setTimeout(
        () => resolve({ status: HealthStatus.UNHEALTHY, message: `Check timed out after ${this.timeoutMs} ms` }),
        this.timeoutMs,
      );
    });
    let outcome: CheckOutcome;
    try {
      outcome = await Promise.race([Promise.resolve().then(() => this.performCheck()), timeout]);
    } catch (error) {
      outcome = {
        status: HealthStatus.UNHEALTHY,
        message: `Check failed: ${error instanceof Error ? error.message : String(error)}`,
        details: { error_type: error instanceof Error ? error.name : typeof error },
      };
    } finally {
      clearTimeout(timer);
    }
    return { ...checkedOutcome(outcome), duration_ms: performance.now() - started };
  }
}

/** Node's longest timer (about 24.8 days); a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A timeout in milliseconds that a timer can wait (with `margin` more on top), else a RangeError naming it. */
function checkTimeout(name: string, ms: number, margin = 0): number {
  if (typeof ms !== 'number' || !(ms > 0) || ms > MAX_TIMER_MS - margin)
    throw new RangeError(`${name}: expected a number of milliseconds in (0, ${MAX_TIMER_MS - margin}], got ${ms}`);
  return ms;
}

const STATUSES: ReadonlySet<unknown> = new Set(Object.values(HealthStatus));

/**
 * What a check returned, made safe to report: a custom check that returns nothing, an unknown status, or details
 * that JSON cannot write (a cycle, a BigInt) becomes an unhealthy result saying so, instead of failing the whole
 * /health report.
 */
function checkedOutcome(outcome: unknown): Omit<HealthCheckResult, 'duration_ms'> {
  const o = outcome as Partial<CheckOutcome> | null | undefined;
  if (!o || typeof o !== 'object' || !STATUSES.has(o.status))
    return {
      status: HealthStatus.UNHEALTHY,
      message: `Check returned no valid status (expected one of ${[...STATUSES].join(', ')}): ${brief(o?.status ?? o)}`,
      details: {},
    };
  const details = o.details ?? {};
  try {
    JSON.stringify(details);
  } catch (error) {
    return {
      status: HealthStatus.UNHEALTHY,
      message: `Check returned details that cannot be written as JSON: ${(error as Error).message}`,
      details: {},
    };
  }
  return { status: o.status!, message: String(o.message ?? ''), details };
}

/** The overall status of a set of statuses (healthy when empty). */
export function overallStatus(statuses: Iterable<HealthStatusValue>): HealthStatusValue {
  const seen = new Set(statuses);
  for (const s of [HealthStatus.UNHEALTHY, HealthStatus.DEGRADED, HealthStatus.UNKNOWN] as const)
    if (seen.has(s)) return s;
  return HealthStatus.HEALTHY;
}

/** Runs a set of checks concurrently and aggregates them. */
export class HealthMonitor {
  private readonly checks = new Map<string, BaseHealthCheck>();
  private lastStatus: HealthStatusValue | undefined;

  /** @param opts.logger logs a `health.check` record whenever the overall status changes. */
  constructor(private readonly opts: { logger?: EventLogger } = {}) {}

  /** Adds a check. @throws Error when a check of the same name exists. */
  addCheck(check: BaseHealthCheck): this {
    if (this.checks.has(check.name))
      throw new Error(`addCheck: a check named ${JSON.stringify(check.name)} already exists`);
    this.checks.set(check.name, check);
    return this;
  }

  removeCheck(name: string): boolean {
    return this.checks.delete(name);
  }

  get checkNames(): string[] {
    return [...this.checks.keys()];
  }

  /** Runs every check and returns the guide's report. */
  async getOverallHealth(): Promise<HealthReport> {
    const names = [...this.checks.keys()];
    const results = await Promise.all([...this.checks.values()].map((c) => c.run()));
    const checks: Record<string, HealthCheckResult> = {};
    names.forEach((name, i) => (checks[name] = results[i]));
    const count = (s: HealthStatusValue) => results.filter((r) => r.status === s).length;
    const status = overallStatus(results.map((r) => r.status));
    const report: HealthReport = {
      status,
      timestamp: Date.now() / 1000,
      summary: {
        total_checks: results.length,
        healthy: count('healthy'),
        degraded: count('degraded'),
        unhealthy: count('unhealthy'),
      },
      checks,
    };
    if (this.opts.logger && status !== this.lastStatus) {
      const level = status === 'healthy' ? 'info' : 'warn';
      this.opts.logger[level](LogEvent.HEALTH_CHECK, `Health is ${status}`, {
        data: { status, summary: report.summary },
      });
    }
    this.lastStatus = status;
    return report;
  }
}

/** Status from a usage ratio and two thresholds. */
function byUsage(usage: number, warning: number, critical: number): HealthStatusValue {
  return usage >= critical ? HealthStatus.UNHEALTHY : usage >= warning ? HealthStatus.DEGRADED : HealthStatus.HEALTHY;
}

/** System memory in use (1 − available / total): degraded at `warningThreshold`, unhealthy at `criticalThreshold`. */
export class MemoryHealthCheck extends BaseHealthCheck {
  /** @param readMemory where the numbers come from (default: os.totalmem / os.freemem, i.e. MemAvailable on Linux). */
  constructor(
    readonly warningThreshold = 0.8,
    readonly criticalThreshold = 0.95,
    private readonly readMemory: () => { totalBytes: number; availableBytes: number } = () => ({
      totalBytes: os.totalmem(),
      availableBytes: os.freemem(),
    }),
  ) {
    super('memory');
  }

  protected performCheck(): CheckOutcome {
    const { totalBytes, availableBytes } = this.readMemory();
    const usage = totalBytes > 0 ? 1 - availableBytes / totalBytes : 0;
    const status = byUsage(usage, this.warningThreshold, this.criticalThreshold);
    const word = status === 'healthy' ? 'normal' : status === 'degraded' ? 'high' : 'critical';
    return {
      status,
      message: `Memory usage ${word}: ${(usage * 100).toFixed(1)}%`,
      details: {
        usage_percent: usage,
        available_bytes: availableBytes,
        total_bytes: totalBytes,
        process_rss_bytes: process.memoryUsage.rss(),
      },
    };
  }
}

/** Disk space in use on the file system holding `path` (fs.statfs). */
export class DiskSpaceHealthCheck extends BaseHealthCheck {
  constructor(
    readonly path = '/',
    readonly warningThreshold = 0.8,
    readonly criticalThreshold = 0.95,
    name = 'disk_space',
  ) {
    super(name);
  }

  protected async performCheck(): Promise<CheckOutcome> {
    const s = await fs.promises.statfs(this.path);
    const totalBytes = s.blocks * s.bsize;
    const availableBytes = s.bavail * s.bsize;
    const usage = totalBytes > 0 ? 1 - availableBytes / totalBytes : 0;
    const status = byUsage(usage, this.warningThreshold, this.criticalThreshold);
    return {
      status,
      message: `Disk usage of ${this.path}: ${(usage * 100).toFixed(1)}%`,
      details: { path: this.path, usage_percent: usage, available_bytes: availableBytes, total_bytes: totalBytes },
    };
  }
}

/** The options a probe passes to the model's call (a subset of RouteOptions). */
export interface ProbeRouteOptions {
  complexity?: Float32Array;
  context?: object;
}

/** What {@link ModelHealthCheck} needs: a Router (`route`) or an MoELayer (`forward`), sync or async. */
export interface CheckableModel {
  readonly hiddenSize: number;
  /** A Router's rule ('dynamic' gets a fixed complexity per probe token); an MoELayer has it on its router. */
  readonly selection?: string;
  readonly router?: { readonly selection?: string };
  forward?(x: Float32Array, opts?: ProbeRouteOptions): { output: Float32Array };
  forwardAsync?(x: Float32Array, opts?: ProbeRouteOptions): Promise<{ output: Float32Array }>;
  route?(x: Float32Array, opts?: ProbeRouteOptions): { weights: Float32Array };
  routeAsync?(x: Float32Array, opts?: ProbeRouteOptions): Promise<{ weights: Float32Array }>;
}

/** Options of {@link ModelHealthCheck}. */
export interface ModelHealthCheckOptions {
  /** The check's key in the report. Default `model_<modelName>`, or 'model' without a modelName. */
  name?: string;
  /** The model's name, as the guide's `ModelHealthCheck("my-model")` gives it (its check is `model_my-model`). */
  modelName?: string;
  /** Tokens per probe (default 1). */
  tokens?: number;
  /** A slower probe is degraded (default 1000 ms). */
  maxLatencyMs?: number;
  timeoutMs?: number;
  /**
   * What each probe passes to the call. Default: nothing, except for the dynamic rule, which gets a complexity of
   * 0.5 per token — the probe then exercises selection, dispatch, experts and combine without running the
   * router's estimator, which would fold random input into its running calibration (and some estimators need
   * attention or LM logits a probe does not have).
   */
  routeOptions?: ProbeRouteOptions | ((tokens: number) => ProbeRouteOptions);
}

/**
 * Runs a real tiny forward (layer) or route (router) on random normal input and times it. A probe is a real call:
 * the layer's native counters count it like any other (a probe every 10 s adds 0.1 requests a second).
 */
export class ModelHealthCheck extends BaseHealthCheck {
  private readonly tokens: number;
  private readonly maxLatencyMs: number;
  private readonly routeOptions: ModelHealthCheckOptions['routeOptions'];

  /** @param model the layer or router to exercise. */
  constructor(
    private readonly model: CheckableModel,
    opts: ModelHealthCheckOptions = {},
  ) {
    super(opts.name ?? (opts.modelName ? `model_${opts.modelName}` : 'model'), opts.timeoutMs);
    this.tokens = opts.tokens ?? 1;
    if (!Number.isInteger(this.tokens) || this.tokens < 1 || this.tokens > 4096)
      throw new RangeError(`tokens: expected an integer in [1, 4096], got ${opts.tokens}`);
    this.maxLatencyMs = opts.maxLatencyMs ?? 1000;
    this.routeOptions = opts.routeOptions;
    if (!(
      typeof model?.hiddenSize === 'number' &&
      (model.forward || model.forwardAsync || model.route || model.routeAsync)
    )) {
      throw new TypeError('ModelHealthCheck: expected an MoELayer or a Router');
    }
  }

  protected async performCheck(): Promise<CheckOutcome> {
    const x = randomNormal(this.tokens * this.model.hiddenSize);
    const m = this.model;
    const opts = this.probeOptions();
    const started = performance.now();
    let values: Float32Array;
    if (m.forwardAsync) values = (await m.forwardAsync(x, opts)).output;
    else if (m.forward) values = m.forward(x, opts).output;
    else if (m.routeAsync) values = (await m.routeAsync(x, opts)).weights;
    else values = m.route!(x, opts).weights;
    const latencyMs = performance.now() - started;
    const finite = values.every(Number.isFinite);
    const details = { tokens: this.tokens, latency_ms: latencyMs, output_finite: finite };
    if (!finite) return { status: HealthStatus.UNHEALTHY, message: 'Model produced non-finite output', details };
    if (latencyMs > this.maxLatencyMs)
      return { status: HealthStatus.DEGRADED, message: `Model inference slow: ${latencyMs.toFixed(1)} ms`, details };
    return { status: HealthStatus.HEALTHY, message: `Model inference ok: ${latencyMs.toFixed(1)} ms`, details };
  }

  private probeOptions(): ProbeRouteOptions {
    const given = this.routeOptions;
    if (given) return typeof given === 'function' ? given(this.tokens) : given;
    const selection = this.model.selection ?? this.model.router?.selection;
    return selection === 'dynamic' ? { complexity: new Float32Array(this.tokens).fill(0.5) } : {};
  }
}

/**
 * An HTTP(S) GET: healthy on a 2xx answer, degraded on any other answer (the service is up but unwell: that alone
 * must not fail this process's liveness), unhealthy when there is no answer within the timeout. Its key in the
 * report is `external_<serviceName>`, as in the guide's Python edition.
 */
export class ExternalServiceHealthCheck extends BaseHealthCheck {
  /** The URL as reports show it: without credentials (/health is unauthenticated). */
  private readonly shownUrl: string;

  constructor(
    readonly serviceName: string,
    readonly url: string,
    readonly requestTimeoutMs = 5000,
  ) {
    super(`external_${serviceName}`, checkTimeout('requestTimeoutMs', requestTimeoutMs, 1000) + 1000);
    const parsed = new URL(url);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')
      throw new TypeError(`url: expected http(s), got ${parsed.protocol}`);
    parsed.username = '';
    parsed.password = '';
    this.shownUrl = parsed.href;
  }

  /**
   * One GET with a deadline for the whole exchange (a service that trickles its headers resets an idle timeout
   * forever); the status line is all it needs, so the connection is closed as soon as it is read — a body, however
   * long, is never downloaded.
   */
  protected performCheck(): Promise<CheckOutcome> {
    const client = new URL(this.url).protocol === 'https:' ? https : http;
    const details = { service_name: this.serviceName, url: this.shownUrl };
    return new Promise((resolve) => {
      const request = client.get(this.url, (response) => {
        clearTimeout(deadline);
        const code = response.statusCode ?? 0;
        response.destroy();
        request.destroy();
        const message = `${this.serviceName} answered ${code}`;
        resolve({
          status: code >= 200 && code < 300 ? HealthStatus.HEALTHY : HealthStatus.DEGRADED,
          message,
          details: { ...details, status_code: code },
        });
      });
      const deadline = setTimeout(
        () => request.destroy(new Error(`no answer within ${this.requestTimeoutMs} ms`)),
        this.requestTimeoutMs,
      );
      request.on('error', (error) => {
        clearTimeout(deadline);
        resolve({
          status: HealthStatus.UNHEALTHY,
          message: `${this.serviceName} unreachable: ${error.message.replace(this.url, this.shownUrl)}`,
          details,
        });
      });
    });
  }
}

/** Where a load balance score comes from: a function, a MetricsCollector, or a source drained directly. */
export type LoadBalanceSource =
  (() => number | Promise<number>) | { latestLoadBalanceScore(): number; drainNow(): void } | TelemetrySource;

/** Degraded when the expert load balance score (1 = even) falls below a threshold. */
export class ExpertBalanceHealthCheck extends BaseHealthCheck {
  private lastFromSource = NaN;

  /**
   * @param source a function returning the score, a MetricsCollector (its latest score over all layers), or a
   *   Router/MoELayer (drained here; a collector observing it still counts every call, but its own scrapes then
   *   take the drains this check would have seen: pass the collector).
   * @param name the check's key; default `expert_balance_<modelName>` for a collector (the guide's name), else
   *   'expert_balance'.
   */
  constructor(
    private readonly source: LoadBalanceSource,
    readonly balanceThreshold = 0.5,
    name?: string,
  ) {
    const modelName = (source as { modelName?: unknown }).modelName;
    super(name ?? (typeof modelName === 'string' ? `expert_balance_${modelName}` : 'expert_balance'));
  }

  protected async performCheck(): Promise<CheckOutcome> {
    const score = await this.readScore();
    const details = { balance_score: Number.isFinite(score) ? score : null, threshold: this.balanceThreshold };
    if (!Number.isFinite(score)) return { status: HealthStatus.UNKNOWN, message: 'No routing call yet', details };
    if (score < this.balanceThreshold)
      return { status: HealthStatus.DEGRADED, message: `Expert load imbalance: ${score.toFixed(2)}`, details };
    return { status: HealthStatus.HEALTHY, message: `Expert balance healthy: ${score.toFixed(2)}`, details };
  }

  private async readScore(): Promise<number> {
    const s = this.source;
    if (typeof s === 'function') return s();
    if ('latestLoadBalanceScore' in s) {
      s.drainNow();
      return s.latestLoadBalanceScore();
    }
    // (a collector observing it gets the same record: no call goes missing from /metrics)
    const record = drainSharedRecord(s);
    if (Number.isFinite(record.loadBalance)) this.lastFromSource = record.loadBalance;
    return this.lastFromSource;
  }
}

function randomNormal(n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(1 - Math.random()));
    const angle = 2 * Math.PI * Math.random();
    out[i] = radius * Math.cos(angle);
    if (i + 1 < n) out[i + 1] = radius * Math.sin(angle);
  }
  return out;
}
