/**
 * A TelemetrySource that behaves like the native one (deltas since the previous drain, per-bucket histogram
 * counts, a bounded span ring) but is fed by the test, so the observability code can be tested exactly without
 * the addon and with known numbers.
 */
import { COMPLEXITY_BUCKETS, DURATION_BUCKETS_SECONDS } from '../../lib/observability/metric-names';
import type {
  HistogramDelta,
  SpanRecord,
  TelemetryDelta,
  TelemetrySource,
} from '../../lib/observability/telemetry-types';

export interface FakeCall {
  /** k of each token. */
  ks: number[];
  /** Expert of each assignment, cycled if shorter than the assignments. Default: 0, 1, 2, ... */
  experts?: number[];
  durationSeconds?: number;
  stageSeconds?: Partial<Record<'complexity' | 'gating' | 'dispatch' | 'expert_gemm' | 'combine', number>>;
  complexity?: number[];
  flopsComputed?: number;
  flopsStatic?: number;
  loadBalance?: number;
  startNs?: number;
}

const STAGES = ['complexity', 'gating', 'dispatch', 'expert_gemm', 'combine'] as const;

function emptyHistogram(bounds: readonly number[]): HistogramDelta {
  return { bounds: [...bounds], counts: new Array<number>(bounds.length + 1).fill(0), sum: 0, count: 0 };
}

function observe(h: HistogramDelta, value: number): void {
  let b = 0;
  while (b < h.bounds.length && value > h.bounds[b]) b++;
  h.counts[b] += 1;
  h.sum += value;
  h.count += 1;
}

export class FakeTelemetrySource implements TelemetrySource {
  drains = 0;
  throwOnDrain: Error | undefined;
  private pending: TelemetryDelta;
  private readonly ringCapacity: number;

  constructor(
    readonly numExperts = 8,
    readonly maxK = 4,
    readonly kind: 'router' | 'layer' = 'layer',
    readonly memoryBytes = 1 << 20,
    ringCapacity = 1024,
  ) {
    this.ringCapacity = ringCapacity;
    this.pending = this.empty(NaN);
  }

  call(c: FakeCall): SpanRecord {
    const d = this.pending;
    const tokens = c.ks.length;
    const assignments = c.ks.reduce((a, b) => a + b, 0);
    d.calls += 1;
    d.tokens += tokens;
    d.assignments += assignments;
    for (const k of c.ks) observe(d.expertsPerToken, k);
    for (const x of c.complexity ?? []) observe(d.complexity, x);
    const experts = c.experts ?? [...Array(this.numExperts).keys()];
    const counts = new Array<number>(this.numExperts).fill(0);
    for (let i = 0; i < assignments; i++) counts[experts[i % experts.length]] += 1;
    counts.forEach((n, e) => (d.expertTokens[e] += n));
    const shares = counts.map((n) => n / assignments);
    const E = this.numExperts;
    d.flopsComputed += c.flopsComputed ?? 0;
    d.flopsStatic += c.flopsStatic ?? 0;
    const stage = (name: (typeof STAGES)[number]) => c.stageSeconds?.[name] ?? (name === 'complexity' ? 0 : 1e-4);
    for (const name of STAGES) {
      if (name === 'complexity' && !c.complexity) continue;
      if (this.kind === 'router' && name !== 'gating' && name !== 'complexity') continue;
      observe(d.stageSeconds[name], stage(name));
    }
    const duration = c.durationSeconds ?? 1e-3;
    observe(d.durationSeconds, duration);
    d.loadBalance = c.loadBalance ?? 0.9;
    const start = c.startNs ?? Number(process.hrtime.bigint());
    const gatingEnd = start + stage('gating') * 1e9;
    const later = this.kind === 'layer';
    const dispatchEnd = later ? gatingEnd + stage('dispatch') * 1e9 : gatingEnd;
    const expertEnd = later ? dispatchEnd + stage('expert_gemm') * 1e9 : gatingEnd;
    const combineEnd = later ? expertEnd + stage('combine') * 1e9 : gatingEnd;
    const span: SpanRecord = {
      startNs: start,
      gatingEndNs: gatingEnd,
      dispatchEndNs: dispatchEnd,
      expertEndNs: expertEnd,
      combineEndNs: combineEnd,
      tokens,
      meanK: tokens ? assignments / tokens : 0,
      flopsComputed: c.flopsComputed ?? 0,
      flopsStatic: c.flopsStatic ?? 0,
      activeExperts: counts.filter((n) => n > 0).length,
      loadBalanceCv: assignments ? Math.sqrt(shares.reduce((a, p) => a + (p - 1 / E) ** 2, 0) / E) * E : NaN,
    };
    d.spans.push(span);
    if (d.spans.length > this.ringCapacity) {
      d.spans.shift();
      d.spansDropped += 1;
    }
    return span;
  }

  error(type: 'validation' | 'non_finite' | 'internal'): void {
    this.pending.errors[type] += 1;
  }

  drainTelemetry(): TelemetryDelta {
    this.drains += 1;
    if (this.throwOnDrain) throw this.throwOnDrain;
    const out = this.pending;
    this.pending = this.empty(out.loadBalance);
    return out;
  }

  private empty(loadBalance: number): TelemetryDelta {
    const k = [...Array(this.maxK + 1).keys()];
    return {
      kind: this.kind,
      numExperts: this.numExperts,
      calls: 0,
      tokens: 0,
      errors: { validation: 0, non_finite: 0, internal: 0 },
      assignments: 0,
      flopsComputed: 0,
      flopsStatic: 0,
      expertsPerToken: emptyHistogram(k),
      complexity: emptyHistogram(COMPLEXITY_BUCKETS),
      stageSeconds: {
        complexity: emptyHistogram(DURATION_BUCKETS_SECONDS),
        gating: emptyHistogram(DURATION_BUCKETS_SECONDS),
        dispatch: emptyHistogram(DURATION_BUCKETS_SECONDS),
        expert_gemm: emptyHistogram(DURATION_BUCKETS_SECONDS),
        combine: emptyHistogram(DURATION_BUCKETS_SECONDS),
      },
      durationSeconds: emptyHistogram(DURATION_BUCKETS_SECONDS),
      expertTokens: new Array<number>(this.numExperts).fill(0),
      loadBalance,
      memoryBytes: this.memoryBytes,
      spans: [],
      spansDropped: 0,
    };
  }
}
