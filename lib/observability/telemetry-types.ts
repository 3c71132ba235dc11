/**
 * The shape of one telemetry drain: what `router.drainTelemetry()` / `layer.drainTelemetry()` return. The
 * native side (native/binding/telemetry_wrap.cc) builds exactly this; metrics, spans and logs read it.
 */

/** Bucketed observations since the previous drain. `counts` has bounds.length + 1 entries (last = +Inf), not cumulative. */
export interface HistogramDelta {
  bounds: number[];
  counts: number[];
  sum: number;
  count: number;
}

/**
 * One call's stage timestamps, on the steady clock of process.hrtime.bigint() (nanoseconds). For a router
 * call, dispatch/expert/combine end equal gatingEndNs.
 */
export interface SpanRecord {
  startNs: number;
  gatingEndNs: number;
  dispatchEndNs: number;
  expertEndNs: number;
  combineEndNs: number;
  tokens: number;
  meanK: number;
  flopsComputed: number;
  flopsStatic: number;
}

export interface TelemetryDelta {
  kind: 'router' | 'layer';
  numExperts: number;
  calls: number;
  tokens: number;
  errors: { validation: number; non_finite: number; internal: number };
  /** Sum of k over tokens. */
  assignments: number;
  /** 0 for a bare router. */
  flopsComputed: number;
  flopsStatic: number;
  /** Bounds 0..maxK. */
  expertsPerToken: HistogramDelta;
  /** Bounds 0.1..1.0; only dynamic-rule calls observe it. */
  complexity: HistogramDelta;
  stageSeconds: {
    complexity: HistogramDelta;
    gating: HistogramDelta;
    dispatch: HistogramDelta;
    expert_gemm: HistogramDelta;
    combine: HistogramDelta;
  };
  /** Whole call. */
  durationSeconds: HistogramDelta;
  /** Tokens per expert since the previous drain, length numExperts. */
  expertTokens: number[];
  /** Of the most recent call (a gauge); NaN before any call. */
  loadBalance: number;
  /** Bytes held natively: packed weights (and the layer's arena). */
  memoryBytes: number;
  /** Bounded ring: the oldest records are dropped when it is full. */
  spans: SpanRecord[];
  spansDropped: number;
}

/** Anything whose native counters can be drained: a Router or an MoELayer. */
export interface TelemetrySource {
  drainTelemetry(): TelemetryDelta;
  readonly numExperts: number;
}
