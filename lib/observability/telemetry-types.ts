/**
 * The shape of what Router and MoELayer hand over from their native telemetry: one `drainTelemetry()` call
 * returns every counter, histogram and span record accumulated since the previous drain of that object.
 * This file is the one contract between the native side and the observability module; both code against it.
 * The native drain returns a flat Float64Array (layout in native/binding/telemetry_wrap.h) that decodeTelemetry()
 * below turns into a TelemetryDelta.
 */

import { STAGES } from './metric-names';

/** Bucket counts of one histogram since the previous drain. */
export interface HistogramDelta {
  bounds: number[];
  counts: number[] /* bounds.length + 1, last = +Inf bucket, NOT cumulative */;
  sum: number;
  count: number;
}
/** Stage timestamps of one call. */
export interface SpanRecord {
  /** Start of the complexity estimation that ran in JS before the call (dynamic rule only). */
  complexityStartNs?: number;
  startNs: number;
  gatingEndNs: number;
  dispatchEndNs: number;
  expertEndNs: number;
  combineEndNs: number;
  tokens: number;
  meanK: number;
  flopsComputed: number;
  flopsStatic: number;
  /** Experts given at least one token (the `routing.active_experts` span attribute). */
  activeExperts?: number;
  /** Standard deviation of the experts' shares of the call's assignments over their mean 1/E; NaN without any. */
  loadBalanceCv?: number;
} // steady-clock ns (process.hrtime.bigint() clock); for a router-only call, dispatch/expert/combine end == gatingEndNs
/**
 * A call's spread over the experts from its tokens per expert: the experts given any (`routing.active_experts`),
 * and the standard deviation of their shares over the mean share 1/E (`routing.load_balance_cv`; NaN without any
 * assignment). The native span records carry the same (native/telemetry/telemetry.cc).
 */
export function expertSpread(counts: ArrayLike<number>): { activeExperts: number; loadBalanceCv: number } {
  const E = counts.length;
  let active = 0;
  let assigned = 0;
  for (let e = 0; e < E; e++) {
    if (counts[e] > 0) active++;
    assigned += counts[e];
  }
  let variance = 0;
  for (let e = 0; e < E; e++) variance += (counts[e] / assigned - 1 / E) ** 2;
  return { activeExperts: active, loadBalanceCv: assigned > 0 ? Math.sqrt(variance / E) * E : NaN };
}

/** Everything a router or layer counted since its previous drain. */
export interface TelemetryDelta {
  kind: 'router' | 'layer';
  numExperts: number;
  calls: number;
  tokens: number;
  errors: { validation: number; non_finite: number; internal: number };
  assignments: number; // sum of k over tokens
  flopsComputed: number;
  flopsStatic: number; // 0 for a bare router
  expertsPerToken: HistogramDelta; // bounds 0..maxK (integers)
  complexity: HistogramDelta; // bounds [0.1,0.2,...,1.0]; only dynamic-rule calls observe it
  stageSeconds: {
    complexity: HistogramDelta;
    gating: HistogramDelta;
    dispatch: HistogramDelta;
    expert_gemm: HistogramDelta;
    combine: HistogramDelta;
  };
  durationSeconds: HistogramDelta; // whole call
  expertTokens: number[]; // per expert delta, length numExperts
  loadBalance: number; // of the expert tokens since the previous value once they hold >= numExperts assignments, else NaN
  memoryBytes: number; // packed weights held natively (gauge)
  spans: SpanRecord[]; // bounded ring; oldest dropped when full
  spansDropped: number; // delta
}
/** Anything whose native counters can be drained: a Router or an MoELayer. */
export interface TelemetrySource {
  drainTelemetry(): TelemetryDelta;
  readonly numExperts: number;
  /**
   * @internal The same drain as a flat record (the layout below), written into `into` when it fits (returns the
   * number of values) or as a new array. Router and MoELayer have it; MetricsCollector then reads the record in
   * place instead of decoding it.
   */
  drainTelemetryRecord?(into: Float64Array): Float64Array | number;
}

/** Layout version of the flat record the native drain returns (native/binding/telemetry_wrap.h). */
const TELEMETRY_LAYOUT_VERSION = 2;
const SPAN_FIELDS = 12;
/** Positions of the record's fixed header (telemetry_wrap.h). */
const enum At {
  Version = 0,
  Kind,
  NumExperts,
  Calls,
  Tokens,
  Errors, // validation, non_finite, internal
  Assignments = 8,
  FlopsComputed,
  FlopsStatic,
  LoadBalance,
  MemoryBytes,
  SpansDropped,
  NExpertTokens,
  NSpans,
  Histograms,
}
/** Positions of header fields in a record (what a DrainPlan's ops read). */
export const RecordAt = {
  Calls: At.Calls,
  /** validation, non_finite, internal */
  Errors: At.Errors,
  FlopsComputed: At.FlopsComputed,
  FlopsStatic: At.FlopsStatic,
  LoadBalance: At.LoadBalance,
} as const;

/** The record's histograms, in order (stage i of STAGES is StageFirst + i). */
export const RecordHistogram = { ExpertsPerToken: 0, Complexity: 1, StageFirst: 2, Duration: 7 } as const;
/** A histogram's index in the record, 0..7. */
export type RecordHistogram = number;
const HISTOGRAMS = 8;

/**
 * A flat drain record read in place: {@link load} checks it and finds its parts once; the accessors read numbers
 * from it, and only {@link histogram} and {@link spans} build objects. One instance is reused from drain to drain,
 * so what it returns is valid until the next load.
 */
export class TelemetryRecord {
  flat: Float64Array = new Float64Array(0);
  private length = 0;
  private readonly histogramAt = new Int32Array(HISTOGRAMS);
  private expertTokensAt = 0;
  private spansAt = 0;

  /**
   * Reads the first `length` values of `flat`.
   * @throws Error when the record's layout version or length is not what this code expects (a stale binary).
   */
  load(flat: Float64Array, length = flat.length): this {
    if (flat[At.Version] !== TELEMETRY_LAYOUT_VERSION)
      throw new Error(
        `telemetry: the native addon wrote layout version ${flat[At.Version]}, expected ${TELEMETRY_LAYOUT_VERSION}`,
      );
    const short = (at: number) => new Error(`telemetry: record of ${length} values ends early (at ${at})`);
    if (length > flat.length || length < At.Histograms) throw short(length);
    let at: number = At.Histograms;
    for (let h = 0; h < HISTOGRAMS; h++) {
      const nBounds = at < length ? flat[at] : NaN;
      if (!(Number.isInteger(nBounds) && nBounds >= 0)) throw short(at);
      this.histogramAt[h] = at;
      at += 1 + nBounds + nBounds + 1 + 2;
      if (at > length) throw short(at);
    }
    const nExpertTokens = flat[At.NExpertTokens];
    const nSpans = flat[At.NSpans];
    if (!(Number.isInteger(nExpertTokens) && nExpertTokens >= 0 && Number.isInteger(nSpans) && nSpans >= 0))
      throw short(at);
    this.expertTokensAt = at;
    this.spansAt = at + nExpertTokens;
    const end = this.spansAt + nSpans * SPAN_FIELDS;
    if (end > length) throw short(end);
    if (end !== length) throw new Error(`telemetry: record of ${length} values, decoded ${end}`);
    this.flat = flat;
    this.length = length;
    return this;
  }

  get kind(): 'router' | 'layer' {
    return this.flat[At.Kind] === 1 ? 'layer' : 'router';
  }
  get numExperts(): number {
    return this.flat[At.NumExperts];
  }
  get calls(): number {
    return this.flat[At.Calls];
  }
  get tokens(): number {
    return this.flat[At.Tokens];
  }
  /** Errors by type: 0 validation, 1 non_finite, 2 internal. */
  error(type: 0 | 1 | 2): number {
    return this.flat[At.Errors + type];
  }
  get assignments(): number {
    return this.flat[At.Assignments];
  }
  get flopsComputed(): number {
    return this.flat[At.FlopsComputed];
  }
  get flopsStatic(): number {
    return this.flat[At.FlopsStatic];
  }
  get loadBalance(): number {
    return this.flat[At.LoadBalance];
  }
  get memoryBytes(): number {
    return this.flat[At.MemoryBytes];
  }
  get spansDropped(): number {
    return this.flat[At.SpansDropped];
  }
  get expertCount(): number {
    return this.flat[At.NExpertTokens];
  }
  /** Where the tokens per expert start. */
  get expertTokensOffset(): number {
    return this.expertTokensAt;
  }
  /** Tokens routed to expert `e` since the previous drain. */
  expertTokens(e: number): number {
    return this.flat[this.expertTokensAt + e];
  }
  get spanCount(): number {
    return this.flat[At.NSpans];
  }
  /** Where histogram `h` starts (nBounds, bounds, counts, sum, count): BucketedHistogram.addFlatDelta reads it. */
  histogramOffset(h: RecordHistogram): number {
    return this.histogramAt[h];
  }
  /** Observations in histogram `h`. */
  histogramCount(h: RecordHistogram): number {
    const at = this.histogramAt[h];
    return this.flat[at + 2 * this.flat[at] + 3];
  }

  /** Histogram `h`, decoded. */
  histogram(h: RecordHistogram): HistogramDelta {
    const f = this.flat;
    const at = this.histogramAt[h];
    const n = f[at];
    const bounds = Array.from(f.subarray(at + 1, at + 1 + n));
    const counts = Array.from(f.subarray(at + 1 + n, at + 2 + 2 * n));
    return { bounds, counts, sum: f[at + 2 + 2 * n], count: f[at + 3 + 2 * n] };
  }

  /** The span records, decoded. */
  spans(): SpanRecord[] {
    const f = this.flat;
    const spans: SpanRecord[] = [];
    for (let i = 0, at = this.spansAt; i < f[At.NSpans]; i++, at += SPAN_FIELDS) {
      const span: SpanRecord = {
        startNs: f[at],
        gatingEndNs: f[at + 2],
        dispatchEndNs: f[at + 3],
        expertEndNs: f[at + 4],
        combineEndNs: f[at + 5],
        tokens: f[at + 6],
        meanK: f[at + 7],
        flopsComputed: f[at + 8],
        flopsStatic: f[at + 9],
      };
      // (NaN: a source of its own that did not give them)
      if (Number.isFinite(f[at + 10])) span.activeExperts = f[at + 10];
      if (Number.isFinite(f[at + 11])) span.loadBalanceCv = f[at + 11];
      if (f[at + 1] >= 0) span.complexityStartNs = f[at + 1];
      spans.push(span);
    }
    return spans;
  }

  /** The whole record as a TelemetryDelta. */
  toDelta(): TelemetryDelta {
    const stages = STAGES.map((_, i) => this.histogram(RecordHistogram.StageFirst + i));
    const expertTokens: number[] = [];
    for (let e = 0; e < this.expertCount; e++) expertTokens.push(this.expertTokens(e));
    return {
      kind: this.kind,
      numExperts: this.numExperts,
      calls: this.calls,
      tokens: this.tokens,
      errors: { validation: this.error(0), non_finite: this.error(1), internal: this.error(2) },
      assignments: this.assignments,
      flopsComputed: this.flopsComputed,
      flopsStatic: this.flopsStatic,
      expertsPerToken: this.histogram(RecordHistogram.ExpertsPerToken),
      complexity: this.histogram(RecordHistogram.Complexity),
      stageSeconds: {
        complexity: stages[0],
        gating: stages[1],
        dispatch: stages[2],
        expert_gemm: stages[3],
        combine: stages[4],
      },
      durationSeconds: this.histogram(RecordHistogram.Duration),
      expertTokens,
      loadBalance: this.loadBalance,
      memoryBytes: this.memoryBytes,
      spans: this.spans(),
      spansDropped: this.spansDropped,
    };
  }
}

/**
 * Decodes the Float64Array a native drainTelemetry() returns into a TelemetryDelta. The native side writes one
 * typed array (a few copies) instead of building this tree through ~350 N-API calls; here it is plain JS.
 * @throws Error when the record's layout version or length is not what this code expects (a stale binary).
 */
export function decodeTelemetry(flat: Float64Array): TelemetryDelta {
  return new TelemetryRecord().load(flat).toDelta();
}

/** One drain of `source` (its decoded delta, encoded again) read by `into`: for sources that build deltas, and rare drains. */
export function drainRecordOf(source: TelemetrySource, into = new TelemetryRecord()): TelemetryRecord {
  return into.load(encodeTelemetry(source.drainTelemetry()));
}

/** The flat record of a TelemetryDelta (the inverse of {@link decodeTelemetry}), for sources that build deltas. */
export function encodeTelemetry(d: TelemetryDelta): Float64Array {
  const out: number[] = [
    TELEMETRY_LAYOUT_VERSION,
    d.kind === 'layer' ? 1 : 0,
    d.numExperts,
    d.calls,
    d.tokens,
    d.errors.validation,
    d.errors.non_finite,
    d.errors.internal,
    d.assignments,
    d.flopsComputed,
    d.flopsStatic,
    d.loadBalance,
    d.memoryBytes,
    d.spansDropped,
    d.expertTokens.length,
    d.spans.length,
  ];
  const histogram = (h: HistogramDelta) => {
    if (h.counts.length !== h.bounds.length + 1)
      throw new RangeError(`telemetry: a histogram needs bounds.length + 1 counts, got ${h.counts.length}`);
    out.push(h.bounds.length, ...h.bounds, ...h.counts, h.sum, h.count);
  };
  histogram(d.expertsPerToken);
  histogram(d.complexity);
  for (const stage of STAGES) histogram(d.stageSeconds[stage]);
  histogram(d.durationSeconds);
  out.push(...d.expertTokens);
  for (const r of d.spans) {
    out.push(r.startNs, r.complexityStartNs ?? -1, r.gatingEndNs, r.dispatchEndNs, r.expertEndNs, r.combineEndNs);
    out.push(r.tokens, r.meanK, r.flopsComputed, r.flopsStatic, r.activeExperts ?? NaN, r.loadBalanceCv ?? NaN);
  }
  return Float64Array.from(out);
}
