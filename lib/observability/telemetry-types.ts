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
} // steady-clock ns (process.hrtime.bigint() clock); for a router-only call, dispatch/expert/combine end == gatingEndNs
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
  loadBalance: number; // of the most recent call (gauge), NaN if no call yet
  memoryBytes: number; // packed weights held natively (gauge)
  spans: SpanRecord[]; // bounded ring; oldest dropped when full
  spansDropped: number; // delta
}
/** Anything whose native counters can be drained: a Router or an MoELayer. */
export interface TelemetrySource {
  drainTelemetry(): TelemetryDelta;
  readonly numExperts: number;
}

/** Layout version of the flat record the native drain returns (native/binding/telemetry_wrap.h). */
const TELEMETRY_LAYOUT_VERSION = 1;
const SPAN_FIELDS = 10;

/**
 * Decodes the Float64Array a native drainTelemetry() returns into a TelemetryDelta. The native side writes one
 * typed array (a few copies) instead of building this tree through ~350 N-API calls; here it is plain JS.
 * @throws Error when the record's layout version or length is not what this code expects (a stale binary).
 */
export function decodeTelemetry(flat: Float64Array): TelemetryDelta {
  if (flat[0] !== TELEMETRY_LAYOUT_VERSION)
    throw new Error(
      `telemetry: the native addon wrote layout version ${flat[0]}, expected ${TELEMETRY_LAYOUT_VERSION}`,
    );
  const r = new FlatReader(flat);
  const kind = r.next() === 1 ? 'layer' : 'router';
  const numExperts = r.next();
  const calls = r.next();
  const tokens = r.next();
  const errors = { validation: r.next(), non_finite: r.next(), internal: r.next() };
  const assignments = r.next();
  const flopsComputed = r.next();
  const flopsStatic = r.next();
  const loadBalance = r.next();
  const memoryBytes = r.next();
  const spansDropped = r.next();
  const nExpertTokens = r.next();
  const nSpans = r.next();
  const expertsPerToken = r.histogram();
  const complexity = r.histogram();
  const stages = STAGES.map(() => r.histogram());
  const durationSeconds = r.histogram();
  const expertTokens = r.take(nExpertTokens);
  const spans: SpanRecord[] = [];
  let at = r.at;
  if (!(Number.isInteger(nSpans) && at + nSpans * SPAN_FIELDS <= flat.length)) throw r.short();
  for (let i = 0; i < nSpans; i++, at += SPAN_FIELDS) {
    const span: SpanRecord = {
      startNs: flat[at],
      gatingEndNs: flat[at + 2],
      dispatchEndNs: flat[at + 3],
      expertEndNs: flat[at + 4],
      combineEndNs: flat[at + 5],
      tokens: flat[at + 6],
      meanK: flat[at + 7],
      flopsComputed: flat[at + 8],
      flopsStatic: flat[at + 9],
    };
    if (flat[at + 1] >= 0) span.complexityStartNs = flat[at + 1];
    spans.push(span);
  }
  if (at !== flat.length) throw new Error(`telemetry: record of ${flat.length} values, decoded ${at}`);
  return {
    kind,
    numExperts,
    calls,
    tokens,
    errors,
    assignments,
    flopsComputed,
    flopsStatic,
    expertsPerToken,
    complexity,
    stageSeconds: {
      complexity: stages[0],
      gating: stages[1],
      dispatch: stages[2],
      expert_gemm: stages[3],
      combine: stages[4],
    },
    durationSeconds,
    expertTokens,
    loadBalance,
    memoryBytes,
    spans,
    spansDropped,
  };
}

/** Reads the flat drain record in order, checking that it does not end early. */
class FlatReader {
  at = 1;
  constructor(private readonly flat: Float64Array) {}

  short(): Error {
    return new Error(`telemetry: record of ${this.flat.length} values ends early (at ${this.at})`);
  }

  next(): number {
    if (this.at >= this.flat.length) throw this.short();
    return this.flat[this.at++];
  }

  take(n: number): number[] {
    const { flat, at } = this;
    if (!(Number.isInteger(n) && n >= 0 && at + n <= flat.length)) throw this.short();
    const values: number[] = new Array(n);
    for (let i = 0; i < n; i++) values[i] = flat[at + i];
    this.at = at + n;
    return values;
  }

  histogram(): HistogramDelta {
    const nBounds = this.next();
    const bounds = this.take(nBounds);
    const counts = this.take(nBounds + 1);
    return { bounds, counts, sum: this.next(), count: this.next() };
  }
}
