/**
 * The shape of what Router and MoELayer hand over from their native telemetry: one `drainTelemetry()` call
 * returns every counter, histogram and span record accumulated since the previous drain of that object.
 * This file is the one contract between the native side and the observability module; both code against it.
 */

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
