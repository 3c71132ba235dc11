/**
 * Spans of one layer or router call, built after the call returned from the timestamps the native code wrote.
 * No span is ever opened inside the kernels: the native side stores steady-clock nanoseconds, and this file turns
 * them into `moe.forward` with children `router.complexity_estimation`, `router.expert_selection` and
 * `router.expert_computation`, with explicit start and end times. Attributes are built only for recording spans.
 */
import {
  context as otelContext,
  ROOT_CONTEXT,
  trace,
  type Context,
  type HrTime,
  type Tracer,
} from '@opentelemetry/api';
import type { ForwardResult } from '../layer';
import type { MetricsCollector } from './metrics';
import { expertSpread, type SpanRecord } from './telemetry-types';

/** A native span record, optionally with the start of the complexity estimation that ran before the native call. */
export type ForwardSpanRecord = SpanRecord;

/** Attributes shared by every span of a source. */
export interface ForwardSpanAttributes {
  modelName?: string;
  layerId?: string | number;
  numExperts?: number;
  backend?: string;
}

/** Epoch minus steady-clock time, as whole seconds and nanoseconds (so a conversion needs no BigInt). */
let epochOffset: { seconds: number; nanos: number } | undefined;

/**
 * Epoch nanoseconds minus steady-clock nanoseconds, measured once. `performance.timeOrigin + performance.now()` is
 * wall time on the same monotonic clock as `process.hrtime.bigint()` (and std::chrono::steady_clock on Linux), so
 * the difference is constant; the sample with the tightest hrtime bracket is kept.
 */
function offset(): { seconds: number; nanos: number } {
  if (epochOffset === undefined) {
    let bestGap = BigInt(Number.MAX_SAFE_INTEGER);
    let best = 0n;
    for (let i = 0; i < 8; i++) {
      const before = process.hrtime.bigint();
      const wallMs = performance.timeOrigin + performance.now();
      const after = process.hrtime.bigint();
      if (after - before < bestGap) {
        bestGap = after - before;
        best = BigInt(Math.round(wallMs * 1e6)) - (before + after) / 2n;
      }
    }
    epochOffset = { seconds: Number(best / 1_000_000_000n), nanos: Number(best % 1_000_000_000n) };
  }
  return epochOffset;
}

/**
 * A steady-clock nanosecond timestamp (process.hrtime.bigint()'s clock) as an OpenTelemetry epoch HrTime. Plain
 * number arithmetic (a span batch converts a few timestamps per call); a number above 2^53 ns (104 days of
 * uptime) keeps a precision of a few nanoseconds.
 */
export function steadyNsToHrTime(steadyNs: number | bigint): HrTime {
  const { seconds, nanos } = offset();
  let s: number;
  let n: number;
  if (typeof steadyNs === 'bigint') {
    s = Number(steadyNs / 1_000_000_000n);
    n = Number(steadyNs % 1_000_000_000n);
  } else {
    const whole = Math.round(steadyNs);
    s = Math.floor(whole / 1e9);
    n = whole - s * 1e9;
  }
  s += seconds;
  n += nanos;
  if (n >= 1e9) {
    n -= 1e9;
    s += 1;
  } else if (n < 0) {
    // a negative bigint remainder, or an offset below the steady clock (a wall clock set before boot)
    n += 1e9;
    s -= 1;
  }
  return [s, n];
}

/**
 * Creates the spans of each record: `moe.forward` (from the complexity start, or the gating start, to the end of
 * combine), and as its children `router.complexity_estimation` (when `complexityStartNs` is known),
 * `router.expert_selection` (gating) and `router.expert_computation` (dispatch, expert GEMM and combine; layers
 * only). `moe.forward` is a child of the span active in `parent` (default: the active context).
 * @returns how many records were recorded (0 when the tracer does not sample them).
 */
export function recordForwardSpans(
  tracer: Tracer,
  records: ForwardSpanRecord | readonly ForwardSpanRecord[],
  attributes: ForwardSpanAttributes = {},
  parent: Context = otelContext.active(),
): number {
  const list = Array.isArray(records) ? (records as readonly ForwardSpanRecord[]) : [records as ForwardSpanRecord];
  let recorded = 0;
  for (const r of list) if (recordOne(tracer, r, attributes, parent)) recorded++;
  return recorded;
}

/**
 * One record's spans. A batch runs on the caches a forward has just emptied, where every object allocated costs
 * memory latency: each stage boundary is converted once (a child's end is the next one's start), and attributes go
 * straight to the spans (no attribute objects to build and walk). The SDK validates start-time attributes three
 * times over, so none are passed at the start.
 */
function recordOne(tracer: Tracer, r: ForwardSpanRecord, a: ForwardSpanAttributes, parent: Context): boolean {
  const gatingStart = steadyNsToHrTime(r.startNs);
  const complexity = r.complexityStartNs != null;
  const forwardStart = complexity ? steadyNsToHrTime(r.complexityStartNs!) : gatingStart;
  const root = tracer.startSpan('moe.forward', { startTime: forwardStart }, parent);
  if (!root.isRecording()) {
    root.end();
    return false;
  }
  const layer = r.combineEndNs > r.gatingEndNs;
  root
    .setAttribute('moe.tokens', r.tokens)
    .setAttribute('moe.avg_experts_per_token', r.meanK)
    .setAttribute('moe.flops_computed', r.flopsComputed)
    .setAttribute('moe.flops_static', r.flopsStatic)
    .setAttribute('moe.flop_reduction', r.flopsStatic > 0 ? 1 - r.flopsComputed / r.flopsStatic : 0)
    .setAttribute('moe.kind', layer ? 'layer' : 'router');
  if (a.modelName !== undefined) root.setAttribute('model.name', a.modelName);
  if (a.layerId !== undefined) root.setAttribute('moe.layer_id', String(a.layerId));
  if (a.numExperts !== undefined) root.setAttribute('router.num_experts', a.numExperts);
  if (a.backend !== undefined) root.setAttribute('moe.backend', a.backend);
  const inside = trace.setSpan(parent, root);
  if (complexity) {
    tracer
      .startSpan('router.complexity_estimation', { startTime: forwardStart }, inside)
      .setAttribute('component', 'complexity_estimator')
      .setAttribute('input.tokens', r.tokens)
      .end(gatingStart);
  }
  const gatingEnd = steadyNsToHrTime(r.gatingEndNs);
  const selection = tracer
    .startSpan('router.expert_selection', { startTime: gatingStart }, inside)
    .setAttribute('component', 'expert_router')
    .setAttribute('routing.avg_experts_per_token', r.meanK)
    .setAttribute('routing.tokens', r.tokens);
  if (a.numExperts !== undefined) selection.setAttribute('router.num_experts', a.numExperts);
  if (Number.isFinite(r.activeExperts)) selection.setAttribute('routing.active_experts', r.activeExperts!);
  if (Number.isFinite(r.loadBalanceCv)) selection.setAttribute('routing.load_balance_cv', r.loadBalanceCv!);
  selection.end(gatingEnd);
  let end = gatingEnd;
  if (layer) {
    end = steadyNsToHrTime(r.combineEndNs);
    tracer
      .startSpan('router.expert_computation', { startTime: gatingEnd }, inside)
      .setAttribute('component', 'expert_network')
      .setAttribute('moe.dispatch_seconds', (r.dispatchEndNs - r.gatingEndNs) / 1e9)
      .setAttribute('moe.expert_gemm_seconds', (r.expertEndNs - r.dispatchEndNs) / 1e9)
      .setAttribute('moe.combine_seconds', (r.combineEndNs - r.expertEndNs) / 1e9)
      .setAttribute('moe.flops_computed', r.flopsComputed)
      .end(end);
  }
  root.end(end);
  return true;
}

/**
 * The span record of one MoELayer forward, from the stats it returned (no drain needed), for
 * {@link recordForwardSpans} right after the call. Dynamic routing's complexity estimation (measured by the layer)
 * becomes a `router.complexity_estimation` span; `complexityStartNs` (process.hrtime.bigint() taken before the
 * call) overrides its start.
 */
export function spanRecordFromForward(result: ForwardResult, complexityStartNs?: bigint): ForwardSpanRecord {
  const s = result.stats;
  const start = Number(s.startNs);
  const gatingEnd = start + s.stageSeconds.gating * 1e9;
  const dispatchEnd = gatingEnd + s.stageSeconds.dispatch * 1e9;
  const expertEnd = dispatchEnd + s.stageSeconds.expertGemm * 1e9;
  const combineEnd = expertEnd + s.stageSeconds.combine * 1e9;
  const record: ForwardSpanRecord = {
    startNs: start,
    gatingEndNs: gatingEnd,
    dispatchEndNs: dispatchEnd,
    expertEndNs: expertEnd,
    combineEndNs: combineEnd,
    tokens: result.routing.tokens,
    meanK: s.meanK,
    flopsComputed: s.flopsComputed,
    flopsStatic: s.flopsStatic,
    ...expertSpread(result.routing.stats.expertCounts),
  };
  if (complexityStartNs !== undefined && result.routing.complexity)
    record.complexityStartNs = Number(complexityStartNs);
  else if (s.stageSeconds.complexity > 0) record.complexityStartNs = start - s.stageSeconds.complexity * 1e9;
  return record;
}

/** How {@link traceDrainedSpans} batches the span records it receives. */
export interface DrainedSpanOptions {
  /**
   * The records of each drain wait here and become spans in one batch every `flushIntervalMs` (default 1000; 0
   * records them at every drain). One batch a second keeps the span work out of the scrapes (on the development
   * VM a record costs about the same either way, ~0.2 ms, most of it the SDK's allocations); spans are exported
   * after the fact either way, with their native start and end times.
   */
  flushIntervalMs?: number;
  /** At most this many records wait; a drain that reaches it flushes at once (default 4096). */
  maxBuffered?: number;
}

/** What {@link traceDrainedSpans} returns: stop it (flushing what waits), or flush now. */
export interface DrainedSpanTracing {
  (): void;
  /** Clears the timer, drains the collector, records what is buffered, and stops listening. */
  stop(): void;
  /**
   * Records the buffered records now. When the collector has not drained since the previous flush (no scrape, or
   * scrapes further apart than the interval), it drains it first, so spans arrive without a /metrics scrape too.
   */
  flush(): void;
}

/**
 * Turns the span records a collector drains at each scrape into spans (root spans of their own traces, as they are
 * emitted after the fact), batched (see {@link DrainedSpanOptions}). A batch that finds no drain since the previous
 * one drains the collector itself: without scrapes the native span ring (1024 records per source) would otherwise
 * fill and drop the oldest. Returns a function that stops it; stopping records whatever still waits.
 */
export function traceDrainedSpans(
  collector: MetricsCollector,
  tracer: Tracer,
  opts: DrainedSpanOptions = {},
): DrainedSpanTracing {
  const intervalMs = opts.flushIntervalMs ?? 1000;
  const maxBuffered = opts.maxBuffered ?? 4096;
  if (!(intervalMs >= 0) || !Number.isFinite(intervalMs))
    throw new RangeError(`flushIntervalMs: expected a finite number >= 0, got ${intervalMs}`);
  if (!Number.isInteger(maxBuffered) || maxBuffered < 1)
    throw new RangeError(`maxBuffered: expected an integer >= 1, got ${maxBuffered}`);
  // One batch per source and attribute set, in drain order.
  let waiting: { records: ForwardSpanRecord[]; attributes: ForwardSpanAttributes }[] = [];
  let buffered = 0;
  const recordWaiting = () => {
    const batches = waiting;
    waiting = [];
    buffered = 0;
    for (const b of batches) recordForwardSpans(tracer, b.records, b.attributes, ROOT_CONTEXT);
  };
  // performance.now() when the previous batch (timer, flush() or stop()) finished
  let flushedAt = performance.now();
  let stopped = false;
  const flush = (always = false) => {
    if (stopped) return;
    if (always || !(collector.lastDrainMs > flushedAt)) collector.drainNow();
    recordWaiting();
    flushedAt = performance.now();
  };
  const unsubscribe = collector.onDrainRecord((record, source) => {
    if (record.spanCount === 0) return;
    const spans = record.spans();
    const attributes: ForwardSpanAttributes = {
      modelName: source.modelName,
      layerId: source.layerId,
      numExperts: record.numExperts,
      backend: source.backend,
    };
    const last = waiting[waiting.length - 1];
    if (last && sameAttributes(last.attributes, attributes)) for (const r of spans) last.records.push(r);
    else waiting.push({ records: spans, attributes });
    buffered += spans.length;
    if (intervalMs === 0 || buffered >= maxBuffered) recordWaiting();
  });
  // (Node fires longer timers at once: cap them at its limit, about 24.8 days)
  const timer = intervalMs > 0 ? setInterval(flush, Math.min(intervalMs, 2 ** 31 - 1)) : undefined;
  timer?.unref();
  const stop = () => {
    if (stopped) return;
    if (timer) clearInterval(timer);
    // The last batch always drains: the calls since the latest scrape have no later drain to wait for. (Still
    // listening: the records of that drain are recorded too.)
    flush(true);
    stopped = true;
    unsubscribe();
  };
  return Object.assign(stop, { stop, flush: () => flush() });
}

function sameAttributes(a: ForwardSpanAttributes, b: ForwardSpanAttributes): boolean {
  return (
    a.modelName === b.modelName && a.layerId === b.layerId && a.numExperts === b.numExperts && a.backend === b.backend
  );
}
