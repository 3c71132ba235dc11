/**
 * MetricsCollector: the guide's families and labels after traffic, scrape-time draining by delta (nothing counted
 * twice, nothing lost), one drain per source per scrape, natively bucketed histograms, the manual methods, and —
 * once Router/MoELayer have drainTelemetry — the same on the real classes.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Counter, Gauge, register as globalRegistry, Registry } from 'prom-client';
import { ExpertDispatchError, MoELayer, Router } from '../lib';
import {
  ExpertBalanceHealthCheck,
  METRIC_LABELS,
  MetricName,
  MetricsCollector,
  type TelemetrySource,
} from '../lib/observability';
import { decodeTelemetry, encodeTelemetry } from '../lib/observability/telemetry-types';
import { registryText } from '../lib/observability/exposition';
import { SeriesFamily } from '../lib/observability/series-family';
import { FakeTelemetrySource } from './helpers/fake-telemetry';
import { buildLayer } from './helpers/layer';
import { find, parseExposition, value } from './helpers/prom-text';
import { freshSeed, randn } from './helpers/random';

const SEED = freshSeed();
console.log(`observability-metrics.test seed ${SEED}`);

async function scrape(c: MetricsCollector) {
  return parseExposition(await c.metrics());
}

test('every family of the guide is exposed with its exact label set after traffic', async () => {
  const c = new MetricsCollector('test-model', { defaultMetrics: false });
  const src = new FakeTelemetrySource(8, 4);
  c.observe(src, { layerId: 3 });
  src.call({ ks: [2, 3, 4], complexity: [0.15, 0.5, 0.95], flopsComputed: 900, flopsStatic: 1200 });
  src.error('validation');
  c.recordExpertFailure(5, 'timeout');
  const exp = await scrape(c);
  const types: Record<string, string> = {
    [MetricName.ROUTING_REQUESTS]: 'counter',
    [MetricName.ROUTING_DURATION]: 'histogram',
    [MetricName.EXPERTS_USED_PER_TOKEN]: 'histogram',
    [MetricName.LOAD_BALANCE_SCORE]: 'gauge',
    [MetricName.FLOPS_COMPUTED]: 'counter',
    [MetricName.FLOPS_SAVED]: 'counter',
    [MetricName.MEMORY_USAGE]: 'gauge',
    [MetricName.ROUTING_ERRORS]: 'counter',
    [MetricName.EXPERT_FAILURES]: 'counter',
    [MetricName.COMPLEXITY_SCORE]: 'histogram',
    [MetricName.EXPERT_TOKENS]: 'counter',
    [MetricName.STAGE_DURATION]: 'histogram',
  };
  for (const [name, type] of Object.entries(types)) {
    assert.is(exp.types.get(name), type, `TYPE of ${name}`);
    assert.ok(exp.help.get(name), `HELP of ${name}`);
    const sampleName = type === 'histogram' ? `${name}_count` : name;
    const samples = find(exp, sampleName);
    assert.ok(samples.length > 0, `${name} has samples`);
    const expected = [...METRIC_LABELS[name as keyof typeof METRIC_LABELS]].sort();
    for (const s of samples) assert.equal(Object.keys(s.labels).sort(), expected, `labels of ${name}`);
    for (const s of samples) assert.is(s.labels.model_name, 'test-model');
  }
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { backend: 'cpu', status: 'success' }), 1);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { backend: 'cpu', status: 'error' }), 1);
  assert.is(value(exp, MetricName.ROUTING_ERRORS, { error_type: 'validation' }), 1);
  assert.is(value(exp, MetricName.FLOPS_COMPUTED, { layer_type: 'moe' }), 900);
  assert.is(value(exp, MetricName.FLOPS_SAVED), 300);
  assert.is(value(exp, MetricName.LOAD_BALANCE_SCORE, { layer_id: '3' }), 0.9);
  assert.is(value(exp, MetricName.MEMORY_USAGE, { component: 'expert_weights' }), 1 << 20);
  assert.is(value(exp, MetricName.EXPERT_FAILURES, { expert_id: '5', failure_type: 'timeout' }), 1);
  assert.is(value(exp, `${MetricName.COMPLEXITY_SCORE}_count`, { estimator_type: 'none' }), 3);
});

test('the one-pass exposition writes exactly what prom-client writes, awkward label values included', async () => {
  const c = new MetricsCollector('mo"del\\ name\nline', { defaultMetrics: false });
  const src = new FakeTelemetrySource(8, 4);
  c.observe(src, { layerId: 'layer "7"', estimatorType: 'router_entropy' });
  src.call({ ks: [1, 2, 4, 4], complexity: [0.05, 0.5, 0.95, 1], flopsComputed: 900, flopsStatic: 1200 });
  src.call({ ks: [3], complexity: [0.4], flopsComputed: 10, flopsStatic: 10 });
  src.error('non_finite');
  c.recordExpertFailure(5, 'time\nout');
  c.recordRoutingRequest('cu"da', 'error');
  c.recordRoutingDuration(0.003, 'cu"da');
  c.updateMemoryUsage(Number.POSITIVE_INFINITY, 'kv_cache');
  c.updateMemoryUsage(Number.NaN, 'scratch');
  // A family of the user's, with its own collect callback, is left to prom-client and still collected.
  let collected = 0;
  new Gauge({
    name: 'user_gauge',
    help: 'a user family',
    registers: [c.registry],
    collect() {
      collected++;
      this.set(collected);
    },
  });
  const fast = await c.metrics();
  const reference = await c.registry.metrics(); // prom-client's own writer; nothing new to drain in between
  assert.is(fast, reference.replace('user_gauge 2', 'user_gauge 1'));
  assert.ok(fast.includes('model_name="mo\\"del\\\\ name\\nline"'), 'label values escaped');
  assert.ok(fast.includes('user_gauge 1'), "the user's collect callback ran");
});

test("SeriesFamily prints what prom-client's own Counter and Gauge print after the same operations", async () => {
  const ours = new Registry();
  const theirs = new Registry();
  const labelNames = ['model_name', 'expert_id'] as const;
  const counters = [
    new SeriesFamily({ name: 'c_total', help: 'a\\counter\nhelp', type: 'counter', labelNames, registers: [ours] }),
    new Counter({ name: 'c_total', help: 'a\\counter\nhelp', labelNames, registers: [theirs] }),
  ] as const;
  const gauges = [
    new SeriesFamily({ name: 'g', help: 'gauge', type: 'gauge', labelNames, registers: [ours] }),
    new Gauge({ name: 'g', help: 'gauge', labelNames, registers: [theirs] }),
  ] as const;
  const handle = counters[0].handle({ model_name: 'm"\\\n', expert_id: 3 });
  counters[1].inc({ model_name: 'm"\\\n', expert_id: 3 }, 0);
  const values = randn(20, SEED, 1e6);
  for (let i = 0; i < 20; i++) {
    const v = Math.abs(values[i]);
    const labels = { model_name: 'x', expert_id: String(i % 3) };
    counters[0].inc(labels, v);
    counters[1].inc(labels, v);
    counters[0].add(handle, 1);
    counters[1].inc({ model_name: 'm"\\\n', expert_id: '3' });
    gauges[0].set(labels, i === 5 ? NaN : i === 6 ? -Infinity : v);
    gauges[1].set(labels, i === 5 ? NaN : i === 6 ? -Infinity : v);
  }
  counters[0].remove({ model_name: 'x', expert_id: '1' });
  counters[1].remove({ model_name: 'x', expert_id: '1' });
  const expected = await theirs.metrics();
  assert.is(await registryText(ours), expected);
  assert.is(await ours.metrics(), expected, "prom-client's writer prints our families the same way");
  // A kept handle survives a reset: the next add brings its series back, as prom-client's inc does.
  ours.resetMetrics();
  theirs.resetMetrics();
  counters[0].add(handle, 2);
  counters[1].inc({ model_name: 'm"\\\n', expert_id: '3' }, 2);
  assert.is(await registryText(ours), await theirs.metrics());
  assert.is(handle.removed, false, 'the kept handle is live again, not a stale one looked up at every add');
  assert.throws(() => counters[0].add(handle, -1), /cannot decrease/);
  // Labels are checked on every lookup, also for a series that exists already (model_name 'x', expert_id '0').
  assert.throws(() => counters[0].inc({ model_name: 'x', expert_id: '0', stage: 'y' } as never), /unknown label stage/);
  assert.throws(() => counters[0].inc({ model_name: 'x', stage: 'y' } as never), /missing label expert_id/);
  assert.throws(() => counters[0].inc({ model_name: 'x' }), /missing label expert_id/);
});

test("a registry with default labels is written by prom-client's own writer, labels included", async () => {
  const registry = new Registry();
  registry.setDefaultLabels({ region: 'eu-1' });
  const c = new MetricsCollector('labelled', { registry, defaultMetrics: false });
  const src = new FakeTelemetrySource(4, 2);
  c.observe(src, { layerId: 0 });
  src.call({ ks: [1, 2], experts: [0, 1, 3] });
  let drains = 0;
  const unsubscribe = c.onDrain(() => drains++);
  const text = await c.metrics();
  unsubscribe();
  assert.is(drains, 1, "one drain per scrape, also when prom-client's writer calls every family's collect hook");
  assert.ok(
    text.includes(
      `${MetricName.ROUTING_REQUESTS}{model_name="labelled",backend="cpu",status="success",region="eu-1"} 1`,
    ),
    text.split('\n').find((l) => l.startsWith(MetricName.ROUTING_REQUESTS)),
  );
  assert.is(text, await registry.metrics(), 'nothing new to drain in between');
});

test('the collector uses its own registry, never the global one', async () => {
  const c = new MetricsCollector('own-registry', { defaultMetrics: false });
  assert.ok(c.registry !== globalRegistry);
  assert.is(globalRegistry.getSingleMetric(MetricName.ROUTING_REQUESTS), undefined);
  const shared = new Registry();
  const d = new MetricsCollector('given', { registry: shared, defaultMetrics: true });
  assert.is(d.registry, shared);
  assert.ok(shared.getSingleMetric('process_cpu_user_seconds_total'), 'default process metrics on the same registry');
  assert.ok(shared.getSingleMetric('nodejs_heap_size_used_bytes'), 'default metrics are unprefixed');
});

test('default metrics of a collector-owned registry follow the families, refreshed at most once per interval', async () => {
  const c = new MetricsCollector('defaults', { defaultMetricsIntervalMs: 60_000 });
  assert.is(c.registry.getSingleMetric('process_cpu_user_seconds_total'), undefined, 'kept off the families registry');
  const defaultsOf = (text: string) => text.slice(text.indexOf('# HELP process_cpu_user_seconds_total'));
  const first = await c.metrics();
  assert.ok(first.includes('# TYPE nodejs_heap_size_used_bytes gauge'), 'default metrics exposed');
  assert.ok(first.indexOf(MetricName.ROUTING_REQUESTS) < first.indexOf('process_cpu_user_seconds_total'));
  await new Promise((resolve) => setTimeout(resolve, 20));
  const second = await c.metrics();
  assert.is(defaultsOf(second), defaultsOf(first), 'cached within the interval');
  const fresh = new MetricsCollector('fresh', { defaultMetricsIntervalMs: 0 });
  const a = defaultsOf(await fresh.metrics());
  for (let i = 0; i < 2e5; i++) Math.sqrt(i); // some CPU time for process_cpu_user_seconds_total to move
  const b = defaultsOf(await fresh.metrics());
  assert.ok(a.includes('process_cpu_user_seconds_total') && b.includes('process_cpu_user_seconds_total'));
});

test('scrapes drain by delta: repeated scrapes never count a call twice', async () => {
  const c = new MetricsCollector('delta', { defaultMetrics: false });
  const src = new FakeTelemetrySource(4, 2);
  c.observe(src, { layerId: 'L0' });
  for (let i = 0; i < 3; i++) src.call({ ks: [1, 2], experts: [0, 1, 2] });
  let exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 3);
  assert.is(value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_count`), 6);
  assert.is(value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_sum`), 9);
  exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 3, 'second scrape adds nothing');
  assert.is(value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_count`), 6);
  src.call({ ks: [2, 2] });
  src.call({ ks: [1, 1] });
  exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 5);
  assert.is(value(exp, `${MetricName.ROUTING_DURATION}_count`, { backend: 'cpu' }), 5);
  // experts 0,1,2 cycled over 3 assignments x 3 calls = 3 each, then 0..3 and 0..1 from the default cycle
  assert.is(value(exp, MetricName.EXPERT_TOKENS, { layer_id: 'L0', expert_id: '0' }), 5);
  assert.is(value(exp, MetricName.EXPERT_TOKENS, { layer_id: 'L0', expert_id: '3' }), 1);
});

test('one collector serves several models: the series of each source carry its modelName', async () => {
  const c = new MetricsCollector('olmoe', { defaultMetrics: false });
  const a = new FakeTelemetrySource(4, 2, 'layer', 1000);
  const b = new FakeTelemetrySource(4, 2, 'layer', 3000);
  const seen: string[] = [];
  c.onDrainRecord((record, source) => void (record.calls > 0 && seen.push(source.modelName)));
  c.observe(a, { layerId: 0 });
  c.observe(b, { layerId: 0, modelName: 'mixtral' });
  assert.throws(() => c.observe(new FakeTelemetrySource(), { layerId: 1, modelName: '' }), /modelName/);
  a.call({ ks: [1, 2], experts: [0], loadBalance: 0.5 });
  b.call({ ks: [2], experts: [3], loadBalance: 0.75 });
  b.call({ ks: [1], experts: [3], loadBalance: 0.75 });
  let exp = await scrape(c);
  assert.equal(seen.sort(), ['mixtral', 'olmoe']);
  const requests = (model_name: string) => value(exp, MetricName.ROUTING_REQUESTS, { model_name, status: 'success' });
  assert.is(requests('olmoe'), 1);
  assert.is(requests('mixtral'), 2);
  const tokens = (model_name: string, expert_id: string) =>
    find(exp, MetricName.EXPERT_TOKENS, { model_name, layer_id: '0', expert_id })[0]?.value ?? 0;
  assert.equal(
    [tokens('olmoe', '0'), tokens('olmoe', '3'), tokens('mixtral', '0'), tokens('mixtral', '3')],
    [3, 0, 0, 3],
  );
  const balance = (model_name: string) => find(exp, MetricName.LOAD_BALANCE_SCORE, { model_name, layer_id: '0' });
  assert.is(balance('olmoe')[0].value, 0.5);
  assert.is(balance('mixtral')[0].value, 0.75);
  assert.is(c.latestLoadBalanceScore(0), 0.5);
  assert.is(c.latestLoadBalanceScore(0, 'mixtral'), 0.75);
  assert.is(c.latestLoadBalanceScore(), 0.5, 'the lowest over every layer of every model');
  const memory = (model_name: string) =>
    find(exp, MetricName.MEMORY_USAGE, { model_name, component: 'expert_weights' })[0]?.value;
  assert.equal([memory('olmoe'), memory('mixtral')], [1000, 3000]);
  // detaching one model's source takes its gauges (load balance, memory), not the other's
  c.unobserve(b);
  exp = await scrape(c);
  assert.is(balance('mixtral').length, 0);
  assert.is(balance('olmoe').length, 1);
  assert.equal([memory('olmoe'), memory('mixtral')], [1000, undefined]);
  assert.is(requests('mixtral'), 2, 'its counters stay');
  assert.ok(Number.isNaN(c.latestLoadBalanceScore(0, 'mixtral')));
});

test('one drain per source per scrape, and reading a single family alone still drains', async () => {
  const c = new MetricsCollector('once', { defaultMetrics: false });
  const a = new FakeTelemetrySource();
  const b = new FakeTelemetrySource();
  c.observe(a, { layerId: 0 });
  c.observe(b, { layerId: 1 });
  await c.metrics();
  assert.is(a.drains, 1);
  assert.is(b.drains, 1);
  await c.metrics();
  assert.is(a.drains, 2);
  a.call({ ks: [3] });
  const single = await c.registry.getSingleMetric(MetricName.FLOPS_COMPUTED)!.get();
  assert.ok(single);
  assert.is(a.drains, 3);
  const exp = await scrape(c);
  assert.is(
    value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }),
    1,
    'the single-family read did not lose the call',
  );
});

test('natively bucketed histograms keep exact bucket counts', async () => {
  const c = new MetricsCollector('buckets', { defaultMetrics: false });
  const src = new FakeTelemetrySource(8, 6);
  c.observe(src, { layerId: 0 });
  src.call({ ks: [0, 1, 1, 3, 6, 6, 6], durationSeconds: 0.003, stageSeconds: { gating: 2e-5, expert_gemm: 0.002 } });
  src.call({ ks: [2], durationSeconds: 7, stageSeconds: { gating: 2e-5, expert_gemm: 0.002 } });
  const exp = await scrape(c);
  const k = (le: string) => value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_bucket`, { le });
  assert.is(k('0'), 1);
  assert.is(k('1'), 3);
  assert.is(k('2'), 4);
  assert.is(k('5'), 5);
  assert.is(k('6'), 8);
  assert.is(k('+Inf'), 8);
  const d = (le: string) => value(exp, `${MetricName.ROUTING_DURATION}_bucket`, { le });
  assert.is(d('0.0025'), 0);
  assert.is(d('0.005'), 1);
  assert.is(d('5'), 1);
  assert.is(d('+Inf'), 2);
  assert.is(value(exp, `${MetricName.STAGE_DURATION}_bucket`, { stage: 'gating', le: '0.00001' }), 0);
  assert.is(value(exp, `${MetricName.STAGE_DURATION}_bucket`, { stage: 'gating', le: '0.000025' }), 2);
  assert.is(value(exp, `${MetricName.STAGE_DURATION}_bucket`, { stage: 'expert_gemm', le: '0.001' }), 0);
  assert.is(value(exp, `${MetricName.STAGE_DURATION}_bucket`, { stage: 'expert_gemm', le: '0.0025' }), 2);
  assert.is(
    find(exp, `${MetricName.STAGE_DURATION}_count`, { stage: 'complexity' }).length,
    0,
    'no complexity stage without dynamic routing',
  );
});

test('the manual methods of the guide write the same families', async () => {
  const c = new MetricsCollector('manual', { defaultMetrics: false });
  c.recordRoutingRequest('torch', 'success');
  c.recordRoutingDuration(0.15, 'torch');
  c.recordExpertsUsed(3.2);
  c.recordLoadBalance(0.42, 7);
  c.recordFlops(1_000_000, 350_000, 'moe');
  c.updateMemoryUsage(512 * 1024 * 1024, 'model');
  c.recordError('complexity_estimation_failed');
  c.recordComplexityScore(0.33, 'router_entropy');
  c.recordComplexity(0.93, 'router_entropy');
  const exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { backend: 'torch', status: 'success' }), 1);
  assert.is(value(exp, `${MetricName.ROUTING_DURATION}_bucket`, { backend: 'torch', le: '0.25' }), 1);
  assert.is(value(exp, `${MetricName.ROUTING_DURATION}_bucket`, { backend: 'torch', le: '0.1' }), 0);
  assert.is(value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_bucket`, { le: '4' }), 1);
  assert.is(value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_bucket`, { le: '3' }), 0);
  assert.is(value(exp, MetricName.LOAD_BALANCE_SCORE, { layer_id: '7' }), 0.42);
  assert.is(value(exp, MetricName.FLOPS_SAVED), 350_000);
  assert.is(value(exp, MetricName.MEMORY_USAGE, { component: 'model' }), 512 * 1024 * 1024);
  assert.is(value(exp, MetricName.ROUTING_ERRORS, { error_type: 'complexity_estimation_failed' }), 1);
  assert.is(value(exp, `${MetricName.COMPLEXITY_SCORE}_bucket`, { estimator_type: 'router_entropy', le: '0.4' }), 1);
  assert.is(value(exp, `${MetricName.COMPLEXITY_SCORE}_count`, { estimator_type: 'router_entropy' }), 2, 'alias');
  assert.is(c.latestLoadBalanceScore(7), 0.42);
});

test('enableDetailedMetrics: false keeps a scrape to the guide families', async () => {
  const scraped = async (enableDetailedMetrics: boolean) => {
    const c = new MetricsCollector('detail', { defaultMetrics: false, enableDetailedMetrics });
    const src = new FakeTelemetrySource(8, 4, 'layer');
    c.observe(src, { layerId: 0 });
    src.call({ ks: [2, 3], stageSeconds: { gating: 1e-4, expert_gemm: 2e-3 } });
    return scrape(c);
  };
  const detailed = await scraped(true);
  const lean = await scraped(false);
  const names = (exp: Awaited<ReturnType<typeof scrape>>) => new Set(exp.samples.map((s) => s.name));
  assert.ok(names(detailed).has(MetricName.EXPERT_TOKENS));
  assert.ok(names(detailed).has(`${MetricName.STAGE_DURATION}_count`));
  for (const name of [MetricName.EXPERT_TOKENS, `${MetricName.STAGE_DURATION}_count`])
    assert.not.ok(names(lean).has(name), name);
  assert.is(value(lean, MetricName.ROUTING_REQUESTS, { status: 'success' }), 1);
  assert.is(value(lean, `${MetricName.EXPERTS_USED_PER_TOKEN}_count`), 2);
});

test('a source that cannot be drained any more is detached and counted once', async () => {
  const c = new MetricsCollector('broken', { defaultMetrics: false });
  const src = new FakeTelemetrySource();
  c.observe(src, { layerId: 0 });
  src.throwOnDrain = new Error('disposed');
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  await c.metrics();
  await c.metrics();
  await new Promise((r) => setImmediate(r));
  process.off('warning', onWarning);
  const exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_ERRORS, { error_type: 'telemetry_drain_failed' }), 1);
  assert.is(src.drains, 1);
  assert.ok(warnings.some((w) => w.includes('detached')));
});

test('unobserve drains one last time; drain listeners see every delta once', async () => {
  const c = new MetricsCollector('listeners', { defaultMetrics: false });
  const src = new FakeTelemetrySource();
  const stop = c.observe(src, { layerId: 0 });
  const seen: number[] = [];
  c.onDrain((d) => seen.push(d.calls));
  src.call({ ks: [1] });
  await c.metrics();
  assert.is(c.latestLoadBalanceScore(0), 0.9);
  src.call({ ks: [1] });
  src.call({ ks: [1] });
  stop();
  await c.metrics();
  assert.equal(seen, [1, 2]);
  const exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 3);
  assert.is(find(exp, MetricName.LOAD_BALANCE_SCORE).length, 0, "a detached layer's load balance is gone");
  assert.ok(Number.isNaN(c.latestLoadBalanceScore()));
});

test('observe rejects what is not a telemetry source, a missing layerId and a second attach', () => {
  const c = new MetricsCollector('checks', { defaultMetrics: false });
  assert.throws(() => c.observe({} as TelemetrySource, { layerId: 0 }), /drainTelemetry/);
  const src = new FakeTelemetrySource();
  assert.throws(() => c.observe(src, {} as { layerId: number }), /layerId/);
  c.observe(src, { layerId: 0 });
  assert.throws(() => c.observe(src, { layerId: 1 }), /already attached/);
});

test('the native drain record decodes consistently, and a stale or truncated record is refused', () => {
  const E = 12;
  const d = 24;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED + 5, 0.3),
    selection: { kind: 'topp', p: 0.7, maxK: 4 },
  });
  const T = [3, 17, 1];
  const results = T.map((t) => router.route(randn(t * d, SEED + t)));
  const flat = router.handle.drainTelemetry();
  const delta = decodeTelemetry(flat);
  assert.is(delta.kind, 'router');
  assert.is(delta.numExperts, E);
  assert.is(delta.calls, T.length);
  assert.is(delta.tokens, 21);
  assert.is(delta.spans.length, T.length);
  assert.equal(
    delta.spans.map((s) => s.tokens),
    T,
  );
  assert.is(
    delta.expertTokens.reduce((a, b) => a + b, 0),
    delta.assignments,
    'tokens per expert add up to the assignments',
  );
  const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
  assert.is(sum(delta.expertsPerToken.counts), 21, 'one k per token');
  assert.is(delta.expertsPerToken.count, 21);
  assert.is(delta.expertsPerToken.sum, delta.assignments);
  assert.is(delta.durationSeconds.count, T.length);
  assert.is(delta.stageSeconds.gating.count, T.length);
  for (const h of [delta.durationSeconds, delta.stageSeconds.combine, delta.complexity])
    assert.is(h.counts.length, h.bounds.length + 1);
  assert.ok(delta.spans.every((s) => s.complexityStartNs === undefined && s.gatingEndNs >= s.startNs));
  // each call's spread over the experts, against its own expert counts (plain float64 sums of the shares)
  results.forEach(({ stats: { expertCounts } }, i) => {
    const counts = Array.from(expertCounts);
    const shares = counts.map((c) => c / sum(counts));
    const cv = Math.sqrt(sum(shares.map((p) => (p - 1 / E) ** 2)) / E) * E;
    assert.is(delta.spans[i].activeExperts, counts.filter((c) => c > 0).length, `call ${i}: active experts`);
    assert.ok(
      Math.abs(delta.spans[i].loadBalanceCv! - cv) < 1e-7,
      `call ${i}: cv ${delta.spans[i].loadBalanceCv} vs ${cv}`,
    );
  });
  // a source of its own whose span records lack the spread: it stays absent (not 0) through encode and decode
  const bare = { ...delta.spans[0] };
  delete bare.activeExperts;
  delete bare.loadBalanceCv;
  const [again] = decodeTelemetry(encodeTelemetry({ ...delta, spans: [bare] })).spans;
  assert.equal(again, bare);
  const stale = flat.slice();
  stale[0] = 99;
  assert.throws(() => decodeTelemetry(stale), /layout version 99, expected 2/);
  assert.throws(() => decodeTelemetry(flat.subarray(0, flat.length - 1)), /record of \d+ values/);
  assert.throws(() => decodeTelemetry(flat.subarray(0, 5)), /record of 5 values ends early/);
});

const hasNativeTelemetry =
  typeof (Router.prototype as unknown as { drainTelemetry?: unknown }).drainTelemetry === 'function';

test('the drained load balance judges the expert tokens of at least E assignments, never one decode token', () => {
  const E = 8;
  const d = 16;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED + 41, 0.5),
    selection: { kind: 'topk', k: 2 },
  });
  // float64 reference: entropy of the pooled counts over log(E)
  const balanceOf = (counts: number[]) => {
    const n = counts.reduce((a, b) => a + b, 0);
    return -counts.reduce((h, c) => (c ? h + (c / n) * Math.log(c / n) : h), 0) / Math.log(E);
  };
  const pooled = new Array<number>(E).fill(0);
  const seen: number[] = [];
  // single-token calls (2 assignments each), one drain after each: no value until 8 assignments have pooled
  for (let call = 1; call <= 6; call++) {
    const r = router.route(randn(d, SEED + 100 + call));
    for (let j = 0; j < r.k[0]; j++) pooled[r.indices[j]]++;
    const balance = router.drainTelemetry().loadBalance;
    if (call < 4) assert.ok(Number.isNaN(balance), `call ${call}: too few assignments to judge`);
    else if (call === 4) {
      assert.ok(Math.abs(balance - balanceOf(pooled)) < 1e-12, `${balance} against ${balanceOf(pooled)}`);
      seen.push(balance);
      pooled.fill(0);
    } else assert.ok(Number.isNaN(balance), 'a new window starts after each value');
  }
  // a large call is judged alone (after what pooled before it)
  const r = router.route(randn(64 * d, SEED + 200));
  for (let t = 0; t < 64; t++) for (let j = 0; j < r.k[t]; j++) pooled[r.indices[t * 2 + j]]++;
  const balance = router.drainTelemetry().loadBalance;
  assert.ok(Math.abs(balance - balanceOf(pooled)) < 1e-12, `${balance} against ${balanceOf(pooled)}`);
  assert.ok(balance > 0.5, `64 random tokens over 8 experts are far from one-sided (${balance})`);
  assert.ok(seen[0] <= 1 && seen[0] > 0);
});

test('calls counted on several threads, drained in between, add up to every call once', async () => {
  // The native counters are sharded per thread and a drain reads the shards written so far: async calls land on
  // the libuv pool's threads, sync ones on the main thread, errors on either.
  const E = 8,
    d = 16,
    T = 3;
  const router = new Router({ numExperts: E, hiddenSize: d, gateWeight: randn(E * d, SEED + 40), threads: 1 });
  let calls = 0,
    tokens = 0,
    errors = 0;
  const drain = () => {
    const t = router.drainTelemetry();
    calls += t.calls;
    tokens += t.tokens;
    errors += Object.values(t.errors).reduce((a, b) => a + b, 0);
  };
  drain();
  for (let round = 0; round < 6; round++) {
    const pending = Array.from({ length: 4 }, (_, i) => router.routeAsync(randn(T * d, SEED + 50 + 10 * round + i)));
    router.route(randn(T * d, SEED + 49 - round));
    if (round % 2 === 0) drain();
    await Promise.all(pending);
    await router.routeAsync(new Float32Array(T * d).fill(NaN)).catch(() => undefined);
    if (round % 3 === 0) drain();
  }
  drain();
  assert.is(calls, 6 * 5, 'successful calls');
  assert.is(tokens, 6 * 5 * T);
  assert.is(errors, 6, 'one error per round');
});

/**
 * The two scrapes after a source observed by `c` made two calls and was disposed: both calls reach the first,
 * nothing is counted twice, and the source is detached quietly at the drain after its last record (a dispose is
 * no routing error: HighErrorRate would fire on a model reloaded layer by layer), its weights gone from the gauge.
 */
async function twoScrapesAfterDispose(c: MetricsCollector, weightsComponent: string): Promise<void> {
  const warnings: string[] = [];
  const onWarning = (warning: Error) => warnings.push(warning.message);
  process.on('warning', onWarning);
  let exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 2, 'both calls after the last scrape');
  exp = await scrape(c);
  await new Promise((r) => setImmediate(r));
  process.off('warning', onWarning);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 2, 'nothing counted twice');
  assert.is(find(exp, MetricName.ROUTING_ERRORS, { error_type: 'telemetry_drain_failed' }).length, 0);
  assert.equal(warnings, []);
  assert.is(find(exp, MetricName.MEMORY_USAGE, { component: weightsComponent }).length, 0, 'detached: no weights');
}

test('a layer disposed between scrapes: its last calls reach the next scrape, then it is detached', async () => {
  const d = 8,
    T = 3;
  const { layer } = buildLayer({ E: 4, d, f: 4, selection: { kind: 'topk', k: 2 }, seed: SEED + 60 });
  const c = new MetricsCollector('disposed', { defaultMetrics: false });
  c.observe(layer, { layerId: 0 });
  await c.metrics();
  layer.forward(randn(T * d, SEED + 64));
  const pending = layer.forwardAsync(randn(T * d, SEED + 65));
  layer.dispose(); // the async call completes, then the weights go
  await pending;
  await new Promise((r) => setImmediate(r));
  await twoScrapesAfterDispose(c, 'expert_weights');
});

test('a router disposed between scrapes: its last calls reach the next scrape, then it is detached, as a layer is', async () => {
  const d = 8,
    E = 4,
    T = 3;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED + 70),
    selection: { kind: 'topk', k: 2 },
  });
  const c = new MetricsCollector('disposed-router', { defaultMetrics: false });
  c.observe(router, { layerId: 0 });
  await c.metrics();
  router.route(randn(T * d, SEED + 71));
  const pending = router.routeAsync(randn(T * d, SEED + 72));
  router.dispose(); // the async call completes, then its counters are drained one last time
  await pending;
  await new Promise((r) => setImmediate(r));
  await twoScrapesAfterDispose(c, 'router_weights');
  // directly: after the last record, drains are refused with the package's error class
  const other = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED + 73),
    selection: { kind: 'topk', k: 1 },
  });
  other.route(randn(T * d, SEED + 74));
  other.dispose();
  assert.is(other.drainTelemetry().calls, 1, 'the final record');
  assert.throws(
    () => other.drainTelemetry(),
    (e: unknown) => e instanceof ExpertDispatchError && /disposed/.test((e as Error).message),
  );
});

test('a scrape while forwards pending at dispose() still run: they are counted, the layer stays attached', async () => {
  const d = 32,
    T = 64;
  const { layer } = buildLayer({ E: 4, d, f: 64, selection: { kind: 'topk', k: 2 }, seed: SEED + 70 });
  const c = new MetricsCollector('retiring', { defaultMetrics: false });
  c.observe(layer, { layerId: 0 });
  await c.metrics();
  const x = randn(T * d, SEED + 74);
  const pending = [layer.forwardAsync(x), layer.forwardAsync(x), layer.forwardAsync(x)];
  layer.dispose();
  const warnings: string[] = [];
  const onWarning = (warning: Error) => warnings.push(warning.message);
  process.on('warning', onWarning);
  try {
    c.drainNow(); // the calls have not run yet: the retired handle is drained, not refused
    await Promise.all(pending);
    await new Promise((r) => setImmediate(r));
    const exp = await scrape(c);
    assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 3, 'all three calls');
    assert.is(warnings.filter((m) => m.includes('detached')).length, 0, 'not detached while its calls ran');
    assert.throws(
      () => layer.drainTelemetry(),
      (e: Error) => /disposed/.test(e.message),
      'freed once they ran',
    );
  } finally {
    process.off('warning', onWarning);
  }
});

test('memory gauge: packed weights shared by withRouter layers are counted once', async () => {
  const E = 4,
    d = 16,
    f = 32;
  const { layer: owner } = buildLayer({ E, d, f, selection: { kind: 'topk', k: 2 }, seed: SEED + 80 });
  const sharer = owner.withRouter(new Router({ numExperts: E, hiddenSize: d, gateWeight: randn(E * d, SEED + 90) }));
  const weights = owner.weightBytes;
  assert.ok(weights >= 3 * E * f * d * 4);
  const sharerOwn = sharer.drainTelemetry().memoryBytes - weights; // its arena and router weights
  assert.ok(sharerOwn > 0 && sharerOwn < weights);
  const c = new MetricsCollector('shared', { defaultMetrics: false });
  const gauge = async () => value(await scrape(c), MetricName.MEMORY_USAGE, { component: 'expert_weights' });
  c.observe(owner, { layerId: 0 });
  const alone = await gauge();
  c.observe(sharer, { layerId: 1 });
  assert.is(await gauge(), alone + sharerOwn, 'the shared weights once');
  c.unobserve(owner);
  assert.is(await gauge(), weights + sharerOwn, 'the sharer counts them once the owner is gone');
  owner.dispose();
  sharer.dispose();
});

test('one collector per source: a second is refused; a balance check draining the source loses no call', async () => {
  const src = new FakeTelemetrySource(8, 2, 'router');
  const c = new MetricsCollector('first', { defaultMetrics: false });
  c.observe(src, { layerId: 0 });
  const other = new MetricsCollector('second', { defaultMetrics: false });
  assert.throws(
    () => other.observe(src, { layerId: 0 }),
    (e: Error) => /attached to another MetricsCollector \(model first\)/.test(e.message),
  );
  src.call({ ks: [2, 2, 1] });
  src.call({ ks: [1] });
  const check = new ExpertBalanceHealthCheck(src, 0.1);
  const result = await check.run();
  assert.ok(Number.isFinite(result.details?.balance_score as number), JSON.stringify(result));
  assert.is(src.drains, 1, 'the check drained the source');
  const exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 2, 'both calls reached /metrics');
  c.unobserve(src);
  other.observe(src, { layerId: 0 }); // free again once detached
});

test('label values that differ only where a separator could hide stay separate series', async () => {
  const c = new MetricsCollector('labels', { defaultMetrics: false });
  c.recordExpertFailure('a\u0000b', 'c');
  c.recordExpertFailure('a', 'b\u0000c');
  c.recordComplexityScore(0.5, 'x\u0000');
  c.recordComplexityScore(0.5, 'x');
  const exp = await scrape(c);
  assert.is(find(exp, MetricName.EXPERT_FAILURES, {}).length, 2);
  assert.is(find(exp, `${MetricName.COMPLEXITY_SCORE}_count`, {}).length, 2);
});

test('real Router and MoELayer: counts after traffic match the calls', async () => {
  const E = 8,
    d = 16,
    k = 2,
    T = 5;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED),
    selection: { kind: 'topk', k },
  });
  const c = new MetricsCollector('real', { defaultMetrics: false });
  c.observe(router, { layerId: 'router' });
  await c.metrics(); // start from a clean delta
  for (let i = 0; i < 4; i++) router.route(randn(T * d, SEED + i + 1));
  assert.throws(() => router.route(new Float32Array(T * d).fill(NaN)));
  let exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 4);
  assert.is(value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_count`), 4 * T);
  assert.is(value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_bucket`, { le: String(k - 1) }), 0);
  assert.is(value(exp, `${MetricName.EXPERTS_USED_PER_TOKEN}_bucket`, { le: String(k) }), 4 * T);
  const tokensPerExpert = find(exp, MetricName.EXPERT_TOKENS).reduce((a, s) => a + s.value, 0);
  assert.is(tokensPerExpert, 4 * T * k);
  const lb = value(exp, MetricName.LOAD_BALANCE_SCORE, { layer_id: 'router' });
  assert.ok(lb >= 0 && lb <= 1);
  assert.ok(value(exp, MetricName.ROUTING_REQUESTS, { status: 'error' }) >= 1, 'the NaN input was counted as an error');
  exp = await scrape(c);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 4, 'no double counting on the real source');

  const f = 8;
  const layer = new MoELayer({
    router,
    experts: {
      stacked: true,
      w1: randn(E * f * d, SEED + 10, 0.2),
      w3: randn(E * f * d, SEED + 11, 0.2),
      w2: randn(E * d * f, SEED + 12, 0.2),
    },
  });
  const lc = new MetricsCollector('real-layer', { defaultMetrics: false });
  lc.observe(layer, { layerId: 0 });
  await lc.metrics();
  let flops = 0;
  for (let i = 0; i < 3; i++) flops += layer.forward(randn(T * d, SEED + 20 + i)).stats.flopsComputed;
  exp = await scrape(lc);
  assert.is(value(exp, MetricName.ROUTING_REQUESTS, { status: 'success' }), 3);
  assert.is(value(exp, MetricName.FLOPS_COMPUTED, { layer_type: 'moe' }), flops);
  assert.ok(value(exp, MetricName.MEMORY_USAGE, { component: 'expert_weights' }) >= 3 * E * f * d * 4);
  for (const stage of ['gating', 'dispatch', 'expert_gemm', 'combine']) {
    assert.is(value(exp, `${MetricName.STAGE_DURATION}_count`, { stage }), 3, `stage ${stage}`);
  }
  layer.dispose();
});

test.run();
