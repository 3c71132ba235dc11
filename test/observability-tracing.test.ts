/**
 * Spans through the real OpenTelemetry SDK with its in-memory exporter: moe.forward and its three children with
 * parent/child ids and the explicit times of the native records (converted from the steady clock to epoch time),
 * the guide's attributes, sampling, the traceSpan/traceFunction helpers, spans drained through a collector, and
 * spans of a real MoELayer forward.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { context, SpanStatusCode, trace } from '@opentelemetry/api';
import { MoELayer, Router } from '../lib';
import {
  initializeTracing,
  MetricsCollector,
  recordForwardSpans,
  RouterTracing,
  spanRecordFromForward,
  steadyNsToHrTime,
  traceDrainedSpans,
  traceFunction,
  traceSpan,
  TracingSetupError,
  type TracingHandle,
} from '../lib/observability';
import { FakeTelemetrySource } from './helpers/fake-telemetry';
import { freshSeed, randn } from './helpers/random';

const SEED = freshSeed();
console.log(`observability-tracing.test seed ${SEED}`);

const exporter = new InMemorySpanExporter();
let handle: TracingHandle;

const toNs = (t: [number, number]) => BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]);
const byName = (spans: ReadableSpan[], name: string) => spans.filter((s) => s.name === name);
const parentId = (s: ReadableSpan) => s.parentSpanContext?.spanId;

/** A collector observing a fake layer source, with the exporter emptied and a count of its moe.forward spans. */
function drainedRig(modelName: string, layerId: number) {
  exporter.reset();
  const collector = new MetricsCollector(modelName, { defaultMetrics: false });
  const src = new FakeTelemetrySource(8, 4, 'layer');
  collector.observe(src, { layerId });
  const roots = () => byName(exporter.getFinishedSpans(), 'moe.forward').length;
  return { collector, src, roots };
}

test.before(() => {
  handle = initializeTracing({
    serviceName: 'trace-test',
    serviceVersion: '1.2.3',
    environment: 'test',
    spanExporter: exporter,
    sampleRate: 1,
  });
});
test.before.each(() => exporter.reset());
test.after(async () => {
  await handle.shutdown();
});

test('moe.forward has the three children with the native stage times', () => {
  const src = new FakeTelemetrySource(8, 4, 'layer');
  const record = src.call({
    ks: [2, 3],
    stageSeconds: { gating: 1e-4, dispatch: 2e-5, expert_gemm: 3e-3, combine: 5e-5 },
    flopsComputed: 500,
    flopsStatic: 1000,
  });
  const n = recordForwardSpans(
    handle.tracer,
    { ...record, complexityStartNs: record.startNs - 40_000 },
    { modelName: 'm', layerId: 4, numExperts: 8, backend: 'cpu' },
  );
  assert.is(n, 1);
  const spans = exporter.getFinishedSpans();
  assert.equal(spans.map((s) => s.name).sort(), [
    'moe.forward',
    'router.complexity_estimation',
    'router.expert_computation',
    'router.expert_selection',
  ]);
  const [root] = byName(spans, 'moe.forward');
  const [complexity] = byName(spans, 'router.complexity_estimation');
  const [selection] = byName(spans, 'router.expert_selection');
  const [computation] = byName(spans, 'router.expert_computation');
  for (const child of [complexity, selection, computation]) {
    assert.is(parentId(child), root.spanContext().spanId, `${child.name} is a child of moe.forward`);
    assert.is(child.spanContext().traceId, root.spanContext().traceId);
  }
  assert.is(parentId(root), undefined, 'moe.forward is a root here');
  // explicit times: exactly the record's steady timestamps, shifted by one constant offset
  const offset = toNs(root.startTime) - BigInt(record.startNs - 40_000);
  const at = (steadyNs: number) => BigInt(Math.round(steadyNs)) + offset;
  assert.is(toNs(complexity.startTime), at(record.startNs - 40_000));
  assert.is(toNs(complexity.endTime), at(record.startNs));
  assert.is(toNs(selection.startTime), at(record.startNs));
  assert.is(toNs(selection.endTime), at(record.gatingEndNs));
  assert.is(toNs(computation.startTime), at(record.gatingEndNs));
  assert.is(toNs(computation.endTime), at(record.combineEndNs));
  assert.is(toNs(root.endTime), at(record.combineEndNs));
  // ...and that offset puts them at the wall-clock time they happened
  const wallNowNs = BigInt(Date.now()) * 1_000_000n;
  assert.ok(
    wallNowNs - toNs(root.startTime) < 2_000_000_000n && toNs(root.startTime) - wallNowNs < 2_000_000_000n,
    'epoch time within 2 s of now',
  );
  // every attribute, exactly (the stage seconds as the record's timestamps give them)
  assert.equal(root.attributes, {
    'moe.tokens': 2,
    'moe.avg_experts_per_token': 2.5,
    'moe.flops_computed': 500,
    'moe.flops_static': 1000,
    'moe.flop_reduction': 0.5,
    'moe.kind': 'layer',
    'model.name': 'm',
    'moe.layer_id': '4',
    'router.num_experts': 8,
    'moe.backend': 'cpu',
  });
  assert.equal(complexity.attributes, { component: 'complexity_estimator', 'input.tokens': 2 });
  // 5 assignments over experts 0..4 of 8: shares 0.2 x 5 and 0 x 3 around their mean 0.125
  const cv = Math.sqrt((5 * (0.2 - 0.125) ** 2 + 3 * 0.125 ** 2) / 8) / 0.125;
  assert.ok(Math.abs(record.loadBalanceCv! - cv) < 1e-12, `fake record cv ${record.loadBalanceCv}`);
  assert.equal(selection.attributes, {
    component: 'expert_router',
    'router.num_experts': 8,
    'routing.avg_experts_per_token': 2.5,
    'routing.tokens': 2,
    'routing.active_experts': 5,
    'routing.load_balance_cv': record.loadBalanceCv,
  });
  assert.equal(computation.attributes, {
    component: 'expert_network',
    'moe.dispatch_seconds': (record.dispatchEndNs - record.gatingEndNs) / 1e9,
    'moe.expert_gemm_seconds': (record.expertEndNs - record.dispatchEndNs) / 1e9,
    'moe.combine_seconds': (record.combineEndNs - record.expertEndNs) / 1e9,
    'moe.flops_computed': 500,
  });
  assert.ok(Math.abs((computation.attributes['moe.expert_gemm_seconds'] as number) - 3e-3) < 1e-9);
  // without a known expert count no span claims one
  exporter.reset();
  recordForwardSpans(handle.tracer, record);
  for (const span of exporter.getFinishedSpans())
    assert.not.ok('router.num_experts' in span.attributes, `${span.name} has no router.num_experts`);
});

test('a router-only record has no expert_computation; moe.forward nests under the active span', () => {
  const src = new FakeTelemetrySource(8, 2, 'router');
  const record = src.call({ ks: [1, 2] });
  traceSpan('request', () => recordForwardSpans(handle.tracer, [record]));
  const spans = exporter.getFinishedSpans();
  assert.equal(spans.map((s) => s.name).sort(), ['moe.forward', 'request', 'router.expert_selection']);
  const [request] = byName(spans, 'request');
  const [root] = byName(spans, 'moe.forward');
  assert.is(parentId(root), request.spanContext().spanId);
  assert.is(root.attributes['moe.kind'], 'router');
});

test('steady-clock conversion is monotonic and matches Date.now()', () => {
  const a = toNs(steadyNsToHrTime(process.hrtime.bigint()));
  const wall = BigInt(Date.now()) * 1_000_000n;
  const b = toNs(steadyNsToHrTime(process.hrtime.bigint()));
  assert.ok(b >= a);
  assert.ok(a - wall < 5_000_000n && wall - a < 5_000_000n, 'within 5 ms of Date.now()');
  // Numbers and bigints agree to the nanosecond, across every carry of the nanosecond field (fixed times below
  // 2^53 ns, where a number is exact: hrtime itself passes that after 104 days of uptime).
  const now = 1_234_567_890_123_456n;
  for (const step of [0n, 1n, 999_999_999n, 1_000_000_000n, 123_456_789_123n]) {
    const t = now + step;
    const hr = steadyNsToHrTime(Number(t));
    assert.equal(hr, steadyNsToHrTime(t));
    assert.ok(hr[1] >= 0 && hr[1] < 1e9 && Number.isInteger(hr[0]) && Number.isInteger(hr[1]));
    assert.is(toNs(hr) - toNs(steadyNsToHrTime(now)), step);
  }
});

test('unsampled: sampleRate 0 records nothing and builds no children', async () => {
  const local = new InMemorySpanExporter();
  const off = initializeTracing({ spanExporter: local, sampleRate: 0, register: false });
  const src = new FakeTelemetrySource();
  const n = recordForwardSpans(off.tracer, [src.call({ ks: [1] }), src.call({ ks: [2] })]);
  assert.is(n, 0);
  assert.is(local.getFinishedSpans().length, 0);
  await off.shutdown();
  assert.throws(() => initializeTracing({ sampleRate: 2 }), /sampleRate/);
});

test('traceSpan and traceFunction: sync, async, errors recorded with status ERROR', async () => {
  const double = traceFunction('double', { op: 'x2' })((x: number) => x * 2);
  assert.is(double(21), 42);
  const value = await traceSpan('async-op', async (span) => {
    span.setAttribute('processed_items', 3);
    await new Promise((r) => setTimeout(r, 2));
    return traceSpan('inner', () => 'ok');
  });
  assert.is(value, 'ok');
  assert.throws(
    () =>
      traceSpan('fails', () => {
        throw new Error('boom');
      }),
    /boom/,
  );
  try {
    await traceSpan('rejects', async () => {
      throw new TypeError('nope');
    });
    assert.unreachable('should reject');
  } catch (error) {
    assert.instance(error, TypeError);
  }
  const spans = exporter.getFinishedSpans();
  const [dbl] = byName(spans, 'double');
  assert.is(dbl.attributes.op, 'x2');
  assert.is(dbl.attributes['function.name'], 'double', "an anonymous function takes the span's name");
  assert.type(dbl.attributes['function.duration_seconds'], 'number');
  const [outer] = byName(spans, 'async-op');
  const [inner] = byName(spans, 'inner');
  assert.is(parentId(inner), outer.spanContext().spanId, 'context crosses the await');
  assert.is(outer.attributes.processed_items, 3);
  for (const name of ['fails', 'rejects']) {
    const [s] = byName(spans, name);
    assert.is(s.status.code, SpanStatusCode.ERROR);
    assert.is(s.events[0]?.name, 'exception');
  }
  assert.is(trace.getSpan(context.active()), undefined, 'no span leaks into the outer context');
});

test("RouterTracing: the guide's three stage helpers, with attributes from inputs and results", async () => {
  const x = randn(3 * 4, SEED + 9);
  const scores = RouterTracing.traceComplexityEstimation(
    (input: Float32Array, scale: number) => {
      const out = new Float32Array(input.length / 4);
      for (let t = 0; t < out.length; t++) out[t] = Math.abs(input[t * 4]) * scale;
      return out;
    },
    x,
    0.1,
  );
  const rows = [
    [0, 1],
    [1, -1],
    [3, 1],
  ];
  const selected = RouterTracing.traceExpertSelection(
    (c: Float32Array, E: number) => [rows, c.map(() => 1 / E)] as const,
    scores,
    4,
  );
  assert.is(selected[0], rows);
  const out = await RouterTracing.traceExpertComputation(
    async (input: { shape: number[] }, indices: number[][]) => new Float32Array(indices.length * input.shape[1]),
    { shape: [3, 4] },
    rows,
    undefined,
  );
  assert.is(out.length, 12);
  assert.throws(
    () =>
      RouterTracing.traceComplexityEstimation(() => {
        throw new RangeError('bad input');
      }, x),
    /bad input/,
  );
  assert.throws(() => RouterTracing.traceExpertSelection(() => [[], []] as const, scores, 0), /numExperts/);
  // results it cannot describe never turn a stage's success into a failure
  const odd = RouterTracing.traceExpertSelection(() => undefined as unknown as [number[], number[]], scores, 4);
  assert.is(odd, undefined);
  const big = RouterTracing.traceComplexityEstimation(() => [new Float32Array(300_000).fill(0.5)], x);
  assert.is(big[0].length, 300_000);

  const spans = exporter.getFinishedSpans();
  const [estimation, failed, bigSpan] = byName(spans, 'router.complexity_estimation');
  assert.is(
    bigSpan.attributes['complexity.mean'],
    0.5,
    'a nested row of 300k numbers is read without recursion limits',
  );
  const values = Array.from(scores);
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const std = Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / values.length);
  assert.is(estimation.attributes.component, 'complexity_estimator');
  assert.is(estimation.attributes['input.shape'], '[12]');
  assert.is(estimation.attributes['output.shape'], '[3]');
  assert.ok(Math.abs((estimation.attributes['complexity.mean'] as number) - mean) < 1e-12);
  assert.ok(Math.abs((estimation.attributes['complexity.std'] as number) - std) < 1e-12);
  assert.is(estimation.attributes['complexity.min'], Math.min(...values));
  assert.is(estimation.attributes['complexity.max'], Math.max(...values));
  assert.is(failed.status.code, SpanStatusCode.ERROR);

  const [selection] = byName(spans, 'router.expert_selection');
  // shares of experts 0..3 over the 5 chosen slots (-1 is an empty slot)
  const counts = [0, 0, 0, 0];
  for (const e of rows.flat()) if (e >= 0) counts[e]++;
  const shares = counts.map((c) => c / 5);
  const cv = Math.sqrt(shares.reduce((a, v) => a + (v - 0.25) ** 2, 0) / 4) / 0.25;
  assert.is(selection.attributes['router.num_experts'], 4);
  assert.is(selection.attributes['complexity.shape'], '[3]');
  assert.is(selection.attributes['routing.active_experts'], counts.filter((c) => c > 0).length);
  assert.ok(Math.abs((selection.attributes['routing.load_balance_cv'] as number) - cv) < 1e-12);
  assert.ok(Math.abs((selection.attributes['routing.avg_experts_per_token'] as number) - 5 / 3) < 1e-12);

  const [computation] = byName(spans, 'router.expert_computation');
  assert.is(computation.attributes['input.shape'], '[3, 4]');
  assert.is(computation.attributes['expert_indices.shape'], '[3, 2]');
  assert.is(computation.attributes['output.shape'], '[12]', 'set when the promise resolved');
});

test('spans drained at scrape time through a collector', async () => {
  const { collector, src } = drainedRig('drained', 2);
  const stop = traceDrainedSpans(collector, handle.tracer);
  src.call({ ks: [1] });
  src.call({ ks: [2] });
  await collector.metrics();
  await collector.metrics();
  stop();
  const roots = byName(exporter.getFinishedSpans(), 'moe.forward');
  assert.is(roots.length, 2, 'each record once');
  assert.is(roots[0].attributes['moe.layer_id'], '2');
  assert.is(roots[0].attributes['model.name'], 'drained');
});

test('drained spans wait for their batch: interval, size bound, flush and stop', async () => {
  const { collector, src, roots } = drainedRig('batched', 1);
  const tracing = traceDrainedSpans(collector, handle.tracer, { flushIntervalMs: 60_000, maxBuffered: 3 });
  src.call({ ks: [1] });
  src.call({ ks: [2] });
  await collector.metrics();
  assert.is(roots(), 0, 'records wait for the batch');
  tracing.flush();
  assert.is(roots(), 2, 'flush() records them');
  for (let i = 0; i < 4; i++) src.call({ ks: [1] });
  await collector.metrics();
  assert.is(roots(), 6, 'a drain that reaches maxBuffered flushes at once');
  src.call({ ks: [3] });
  await collector.metrics();
  assert.is(roots(), 6);
  tracing.stop();
  assert.is(roots(), 7, 'stop() records what waits');
  src.call({ ks: [1] });
  await collector.metrics();
  assert.is(roots(), 7, 'nothing after stop');

  const timed = traceDrainedSpans(collector, handle.tracer, { flushIntervalMs: 20 });
  src.call({ ks: [2] });
  await collector.metrics();
  await new Promise((r) => setTimeout(r, 80));
  assert.is(roots(), 8, 'the interval records them');
  timed();
  const immediate = traceDrainedSpans(collector, handle.tracer, { flushIntervalMs: 0 });
  src.call({ ks: [2] });
  await collector.metrics();
  assert.is(roots(), 9, 'flushIntervalMs 0 records at every drain');
  immediate();
  assert.throws(() => traceDrainedSpans(collector, handle.tracer, { flushIntervalMs: -1 }), /flushIntervalMs/);
  assert.throws(() => traceDrainedSpans(collector, handle.tracer, { maxBuffered: 0 }), /maxBuffered/);
});

test('drained spans need no scrape: a batch with no drain since the previous one drains first', async () => {
  const { collector, src, roots } = drainedRig('unscraped', 3);
  const tracing = traceDrainedSpans(collector, handle.tracer, { flushIntervalMs: 60_000 });
  src.call({ ks: [1] });
  src.call({ ks: [2] });
  tracing.flush();
  assert.is(roots(), 2, 'flush() drained the collector itself');
  src.call({ ks: [1] });
  await collector.metrics();
  src.call({ ks: [3] });
  tracing.flush();
  assert.is(roots(), 3, 'a scrape drained since the previous flush: no drain of its own (the last call waits)');
  src.call({ ks: [1] });
  await collector.metrics();
  src.call({ ks: [2] });
  tracing.stop();
  assert.is(roots(), 6, 'stop() always drains: the calls after the latest scrape are recorded too');
  src.call({ ks: [2] });
  tracing.flush();
  tracing.stop();
  assert.is(roots(), 6, 'nothing after stop, and a second stop is a no-op');

  const timed = traceDrainedSpans(collector, handle.tracer, { flushIntervalMs: 20 });
  await new Promise((r) => setTimeout(r, 80));
  assert.is(roots(), 7, "the interval's batch drained the call that waited in the source");
  timed();
});

test('a missing exporter package: warning or TracingSetupError, never a crash', async () => {
  assert.throws(
    () => initializeTracing({ exporterType: 'otlp', onMissing: 'throw', register: false }),
    (e: unknown) => e instanceof TracingSetupError && /exporter-trace-otlp-http/.test((e as Error).message),
  );
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  const h = initializeTracing({ exporterType: 'otlp', register: false });
  await new Promise((r) => setImmediate(r));
  process.off('warning', onWarning);
  assert.is(h.enabled, false);
  assert.ok(warnings.some((w) => w.includes('npm install @opentelemetry/exporter-trace-otlp-http')));
  // the guide's 'jaeger': OTLP/HTTP to Jaeger (the same package), never its legacy Thrift collector
  assert.throws(
    () => initializeTracing({ exporterType: 'jaeger', onMissing: 'throw', register: false }),
    (e: unknown) => e instanceof TracingSetupError && /exporter-trace-otlp-http/.test((e as Error).message),
  );
  assert.throws(
    () => initializeTracing({ exporterType: 'jaeger', jaegerEndpoint: 'http://jaeger:14268/api/traces' }),
    /legacy Thrift collector.*http:\/\/jaeger:4318\/v1\/traces/,
  );
  assert.throws(() => initializeTracing({ exporterType: 'jaeger', jaegerEndpoint: 'not a url' }), /jaegerEndpoint/);
  assert.throws(() => initializeTracing({ exporterType: 'zipkin' as 'otlp' }), /exporterType/);
});

test('a record without the expert spread (a source of its own) gets no spread attributes', () => {
  const record = new FakeTelemetrySource(8, 4, 'router').call({ ks: [1, 2] });
  delete record.activeExperts;
  record.loadBalanceCv = NaN;
  recordForwardSpans(handle.tracer, record, { numExperts: 8 });
  const [selection] = byName(exporter.getFinishedSpans(), 'router.expert_selection');
  assert.equal(Object.keys(selection.attributes).sort(), [
    'component',
    'router.num_experts',
    'routing.avg_experts_per_token',
    'routing.tokens',
  ]);
});

test('spans of a real MoELayer forward, from its returned stats', () => {
  const E = 8,
    d = 16,
    f = 8,
    T = 4;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED),
    selection: { kind: 'topk', k: 2 },
  });
  const layer = new MoELayer({
    router,
    experts: {
      stacked: true,
      w1: randn(E * f * d, SEED + 1, 0.2),
      w3: randn(E * f * d, SEED + 2, 0.2),
      w2: randn(E * d * f, SEED + 3, 0.2),
    },
  });
  const before = BigInt(Date.now()) * 1_000_000n;
  const result = layer.forward(randn(T * d, SEED + 4));
  const after = BigInt(Date.now()) * 1_000_000n;
  recordForwardSpans(handle.tracer, spanRecordFromForward(result), { numExperts: E });
  const spans = exporter.getFinishedSpans();
  const [root] = byName(spans, 'moe.forward');
  const [computation] = byName(spans, 'router.expert_computation');
  const [selection] = byName(spans, 'router.expert_selection');
  assert.ok(root && computation && selection);
  const slackNs = 2_000_000n; // Date.now() has 1 ms resolution
  assert.ok(
    toNs(root.startTime) >= before - slackNs && toNs(root.endTime) <= after + slackNs,
    'the spans lie within the call',
  );
  const rootSeconds = Number(toNs(root.endTime) - toNs(root.startTime)) / 1e9;
  assert.ok(Math.abs(rootSeconds - result.stats.stageSeconds.total) < 1e-6, 'moe.forward lasts the native total');
  assert.is(root.attributes['moe.tokens'], T);
  assert.is(root.attributes['moe.avg_experts_per_token'], 2);
  assert.is(root.attributes['moe.flops_computed'], result.stats.flopsComputed);
  // the expert spread from the returned counts is what the native record of the same call holds
  const drained = layer.drainTelemetry().spans.at(-1)!;
  const active = Array.from(result.routing.stats.expertCounts).filter((c) => c > 0).length;
  assert.is(selection.attributes['routing.active_experts'], active);
  assert.is(drained.activeExperts, active);
  const cv = selection.attributes['routing.load_balance_cv'] as number;
  assert.ok(cv >= 0 && Math.abs(cv - drained.loadBalanceCv!) < 1e-7, `cv ${cv} vs drained ${drained.loadBalanceCv}`);
  layer.dispose();
});

test('spans of real forwards drained from the native ring at scrape time', async () => {
  const E = 8,
    d = 16,
    f = 8,
    T = 3;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED + 5),
    selection: { kind: 'topk', k: 2 },
  });
  const layer = new MoELayer({
    router,
    experts: {
      stacked: true,
      w1: randn(E * f * d, SEED + 6, 0.2),
      w3: randn(E * f * d, SEED + 7, 0.2),
      w2: randn(E * d * f, SEED + 8, 0.2),
    },
  });
  const collector = new MetricsCollector('ring', { defaultMetrics: false });
  collector.observe(layer, { layerId: 0 });
  await collector.metrics();
  exporter.reset();
  const stop = traceDrainedSpans(collector, handle.tracer);
  const before = BigInt(Date.now()) * 1_000_000n;
  const totals: number[] = [];
  for (let i = 0; i < 3; i++) totals.push(layer.forward(randn(T * d, SEED + 9 + i)).stats.stageSeconds.total);
  const after = BigInt(Date.now()) * 1_000_000n;
  await collector.metrics();
  stop();
  const spans = exporter.getFinishedSpans();
  const roots = byName(spans, 'moe.forward').sort((a, b) => Number(toNs(a.startTime) - toNs(b.startTime)));
  assert.is(roots.length, 3);
  assert.is(byName(spans, 'router.expert_computation').length, 3);
  const slackNs = 2_000_000n;
  roots.forEach((root, i) => {
    assert.ok(toNs(root.startTime) >= before - slackNs && toNs(root.endTime) <= after + slackNs, 'within the calls');
    const seconds = Number(toNs(root.endTime) - toNs(root.startTime)) / 1e9;
    assert.ok(Math.abs(seconds - totals[i]) < 1e-6, `forward ${i} lasts its native total`);
    assert.is(root.attributes['moe.tokens'], T);
  });
  layer.dispose();
});

test('initializeTracing again replaces the provider; shutting the old one down leaves the new one', async () => {
  const one = new InMemorySpanExporter();
  const two = new InMemorySpanExporter();
  const first = initializeTracing({ spanExporter: one });
  traceSpan('one', () => {});
  const second = initializeTracing({ spanExporter: two });
  traceSpan('two', () => {});
  // (an in-memory exporter forgets its spans when its provider shuts down)
  assert.equal(
    one.getFinishedSpans().map((s) => s.name),
    ['one'],
  );
  await first.shutdown();
  traceSpan('three', () => {});
  assert.equal(
    two.getFinishedSpans().map((s) => s.name),
    ['two', 'three'],
  );
  await second.shutdown();
  for (const bad of ['0.5', NaN, -0.1])
    assert.throws(() => initializeTracing({ sampleRate: bad as number }), /sampleRate/, String(bad));
});

test.run();
