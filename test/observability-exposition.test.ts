/**
 * The native metrics text (native/telemetry/exposition_text.h through lib/observability/text-plan.ts): numbers
 * written exactly as String(number) writes them, untrusted plans refused, metricsBuffer() byte for byte equal to
 * metrics(), and the flat drain record read in place (TelemetryRecord, encodeTelemetry) agreeing with the decoded
 * delta.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Gauge, Registry } from 'prom-client';
import { native } from '../lib/native';
import { BucketedHistogram, MetricsCollector } from '../lib/observability';
import { SeriesFamily } from '../lib/observability/series-family';
import { SeriesStore } from '../lib/observability/series-store';
import { TextPlan } from '../lib/observability/text-plan';
import { registryText } from '../lib/observability/exposition';
import {
  decodeTelemetry,
  encodeTelemetry,
  RecordHistogram,
  TelemetryRecord,
} from '../lib/observability/telemetry-types';
import { FakeTelemetrySource } from './helpers/fake-telemetry';
import { buildLayer } from './helpers/layer';
import { freshSeed, randn, rng } from './helpers/random';

const SEED = freshSeed();
console.log(`observability-exposition.test seed ${SEED}`);
const exposition = native().exposition;

test('numbers are written as String(number) writes them (prom-client spells NaN Nan, infinities +Inf / -Inf)', () => {
  const expected = (x: number) =>
    Number.isNaN(x) ? 'Nan' : x === Infinity ? '+Inf' : x === -Infinity ? '-Inf' : String(x);
  const special = [0, -0, 1, -1, 0.1, 0.3, 1e21, 1e-7, 1e-6, 123e-20, 2 ** 53, 2 ** 53 + 2, 2 ** 64, 1e20];
  special.push(
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    2.225073858507201e-308,
    1.4859217929224e-310,
    Number.MAX_VALUE,
    -Number.MAX_VALUE,
    0.1 + 0.2,
    1 / 3,
    1e300 * 10,
    NaN,
    -Infinity,
  );
  // every power of two, whose interval of doubles reading back is narrower below than above
  for (let e = -1074; e <= 1023; e++) special.push(2 ** e, -(2 ** e));
  for (const x of special) assert.is(exposition.formatNumber(x), expected(x), `x = ${x}`);
  const random = rng(SEED);
  const bits = new Float64Array(1);
  const words = new Uint32Array(bits.buffer);
  let mismatches = 0;
  for (let i = 0; i < 20_000; i++) {
    words[0] = (random() * 2 ** 32) >>> 0;
    words[1] = (random() * 2 ** 32) >>> 0;
    const any = bits[0]; // any bit pattern: NaNs, huge and tiny exponents
    words[1] &= 0x800fffff; // a subnormal: fewer significant bits, so a wider interval that reads back
    const subnormal = bits[0];
    // next to a short decimal: where the digits needed jump from few to 16 or 17
    bits[0] = Number((random() * 10 ** Math.floor(random() * 40 - 20)).toPrecision(1 + (i % 17)));
    words[0] += (i % 3) - 1;
    const values = [
      any,
      subnormal,
      bits[0],
      random() * 10 ** Math.floor(random() * 44 - 22),
      Math.round(random() * 1e6) / 1000, // the sums of a duration histogram
      Math.floor(random() * 2 ** 53), // counters
    ];
    for (const x of values) if (exposition.formatNumber(x) !== expected(x) && mismatches++ < 5) console.log(x);
  }
  assert.is(mismatches, 0);
});

test('a plan renders fixed text and values, into a string or a buffer; untrusted plans are refused', () => {
  const plan = TextPlan.build((sink) => {
    sink.text('# HELP é\n');
    sink.value('a{x="ü"} ', 1);
    sink.value('\nb ', 0);
    sink.text('\n');
  });
  const values = Float64Array.of(-Infinity, 0.25);
  const text = '# HELP é\na{x="ü"} 0.25\nb -Inf\n';
  assert.is(plan.render(values), text);
  const out = Buffer.alloc(200, 0x2a);
  const n = plan.renderInto(values, out);
  assert.is(n, Buffer.byteLength(text));
  assert.is(out.subarray(0, n).toString('utf8'), text);
  const small = Buffer.alloc(10, 0x2a);
  assert.ok(plan.renderInto(values, small) < -10, 'minus the bytes it may need');
  assert.ok(
    small.every((b) => b === 0x2a),
    'nothing written into a buffer that may be too small',
  );
  assert.throws(() => plan.render(new Float64Array(1)), /outside the blob or the values/);
  const blob = new Uint8Array(4);
  assert.throws(() => exposition.renderText(blob, Uint32Array.of(2, 3, 0xffffffff), values), /outside/);
  assert.throws(() => exposition.renderText(blob, Uint32Array.of(0, 4), values), /triples/);
  assert.throws(() => exposition.renderText(blob, Uint32Array.of(0xffffffff, 2, 0), values), /outside/);
  assert.throws(() => exposition.renderText(blob, new Float64Array(3) as never, values), /Uint32Array/);
  const detached = new Float64Array(4);
  structuredClone(detached.buffer, { transfer: [detached.buffer as ArrayBuffer] });
  assert.throws(() => exposition.renderText(blob, Uint32Array.of(0, 1, 0), detached), /detached/);
});

test('series give their slots back: removed series are zeroed and reused, histograms keep cumulative blocks', () => {
  const store = new SeriesStore();
  const c = new SeriesFamily({ name: 'c_total', help: 'h', type: 'counter', labelNames: ['x'], store });
  const h = new BucketedHistogram({ name: 'h', help: 'h', labelNames: ['x'], buckets: [1, 2, 4], store });
  c.inc({ x: 'a' }, 5);
  const slot = c.handle({ x: 'a' }).slot;
  c.remove({ x: 'a' });
  c.inc({ x: 'b' }, 2);
  assert.is(c.handle({ x: 'b' }).slot, slot, 'the freed slot is reused');
  assert.ok(c.text().endsWith('c_total{x="b"} 2'), 'and starts from 0');
  const random = rng(SEED + 1);
  const observed: number[] = [];
  for (let i = 0; i < 50; i++) {
    const v = random() * 5;
    observed.push(v);
    h.observe({ x: 'a' }, v);
  }
  h.addDelta({ x: 'a' }, { bounds: [2, 4], counts: [3, 1, 2], sum: 7, count: 6 });
  const snap = h.snapshot({ x: 'a' })!;
  const per = [0, 0, 0, 0];
  for (const v of observed) per[v <= 1 ? 0 : v <= 2 ? 1 : v <= 4 ? 2 : 3]++;
  per[1] += 3; // (.., 2] goes to the bucket of bound 2
  per[2] += 1;
  per[3] += 2;
  assert.equal(snap.counts, per);
  assert.is(snap.count, 56);
  const sum = observed.reduce((a, b) => a + b, 0) + 7;
  assert.ok(Math.abs(snap.sum - sum) < 1e-9 * sum);
  assert.match(
    h.text(),
    new RegExp(`h_bucket\\{le="\\+Inf",x="a"\\} 56\\nh_sum\\{x="a"\\} [0-9.]+\\nh_count\\{x="a"\\} 56$`),
  );
});

test('metricsBuffer() is metrics() as bytes, from a reused buffer; a registry with other metrics gets a copy', async () => {
  const c = new MetricsCollector('buf "model"', { defaultMetrics: true });
  const src = new FakeTelemetrySource(16, 4);
  c.observe(src, { layerId: 'ü' });
  const random = rng(SEED + 2);
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 5; i++)
      src.call({
        ks: [1, 2, 3, 4].map(() => 1 + Math.floor(random() * 4)),
        complexity: [random(), random(), random(), random()],
      });
    c.recordRoutingDuration(random(), 'cpu');
    const bytes = await c.metricsBuffer();
    const text = await c.metrics(); // drains nothing new
    assert.is(bytes.toString('utf8'), text);
  }
  const first = await c.metricsBuffer();
  const second = await c.metricsBuffer();
  assert.is(first.buffer, second.buffer, 'one buffer, reused');
  new Gauge({ name: 'user_gauge', help: 'a user family', registers: [c.registry] }).set(3);
  const copy = await c.metricsBuffer();
  assert.ok(copy.buffer !== second.buffer);
  assert.is(copy.toString('utf8'), await c.metrics());
  assert.ok(copy.toString('utf8').includes('user_gauge 3'));
});

test('the drain record read in place agrees with the decoded delta; encode is its inverse', () => {
  const d = 16;
  const { layer } = buildLayer({ E: 8, d, f: 8, selection: { kind: 'topp', p: 0.6, maxK: 3 }, seed: SEED + 3 });
  for (const T of [1, 7, 3]) layer.forward(randn(T * d, SEED + T));
  const small = new Float64Array(8);
  const fresh = layer.drainTelemetryRecord(small);
  assert.ok(fresh instanceof Float64Array, 'a record that does not fit comes back as a new array');
  const delta = decodeTelemetry(fresh as Float64Array);
  assert.is(delta.calls, 3);
  assert.equal(decodeTelemetry(encodeTelemetry(delta)), delta, 'encode, then decode: the same delta');
  for (const T of [2, 5]) layer.forward(randn(T * d, SEED + 10 + T));
  const buffer = new Float64Array(4096).fill(-7);
  const n = layer.drainTelemetryRecord(buffer);
  assert.type(n, 'number');
  const record = new TelemetryRecord().load(buffer, n as number);
  const decoded = decodeTelemetry(buffer.slice(0, n as number));
  assert.equal(record.toDelta(), decoded);
  assert.is(record.calls, 2);
  assert.is(record.tokens, 7);
  assert.is(record.histogramCount(RecordHistogram.Duration), 2);
  assert.equal(record.histogram(RecordHistogram.ExpertsPerToken), decoded.expertsPerToken);
  assert.equal(record.spans(), decoded.spans);
  let tokens = 0;
  for (let e = 0; e < record.expertCount; e++) tokens += record.expertTokens(e);
  assert.is(tokens, decoded.assignments);
  assert.throws(() => new TelemetryRecord().load(buffer, (n as number) - 1), /record of \d+ values/);
  assert.throws(() => new TelemetryRecord().load(buffer, 9), /ends early/);
  layer.dispose();
});

test('after a registry reset, drains count only what came after it, in revived series', async () => {
  const c = new MetricsCollector('reset', { defaultMetrics: false });
  const src = new FakeTelemetrySource(6, 3);
  c.observe(src, { layerId: 1 });
  src.call({ ks: [1, 2, 3], experts: [0, 1, 2, 3, 4, 5], complexity: [0.2, 0.5, 0.9] });
  await c.metrics();
  c.registry.resetMetrics();
  src.call({ ks: [2], experts: [4, 5], complexity: [0.7] });
  src.call({ ks: [1], experts: [5], complexity: [0.3] });
  const text = await c.metrics();
  const line = (prefix: string) => text.split('\n').find((l) => l.startsWith(prefix));
  assert.is(
    line('dynamic_moe_routing_requests_total{model_name="reset",backend="cpu",status="success"}'),
    'dynamic_moe_routing_requests_total{model_name="reset",backend="cpu",status="success"} 2',
  );
  assert.is(line('dynamic_moe_expert_tokens_total{model_name="reset",layer_id="1",expert_id="5"}')?.split(' ')[1], '2');
  assert.is(line('dynamic_moe_expert_tokens_total{model_name="reset",layer_id="1",expert_id="4"}')?.split(' ')[1], '1');
  assert.is(line('dynamic_moe_expert_tokens_total{model_name="reset",layer_id="1",expert_id="0"}'), undefined);
  assert.is(line('dynamic_moe_experts_used_per_token_count{model_name="reset"}')?.split(' ')[1], '2');
  assert.is(line('dynamic_moe_experts_used_per_token_sum{model_name="reset"}')?.split(' ')[1], '3');
  src.call({ ks: [3], experts: [0, 1, 2], complexity: [0.1] });
  const after = await c.metrics();
  assert.ok(after.includes('dynamic_moe_experts_used_per_token_count{model_name="reset"} 3'));
  assert.ok(after.includes('dynamic_moe_expert_tokens_total{model_name="reset",layer_id="1",expert_id="0"} 1'));
  assert.ok(after.includes('status="success"} 3'));
});

test('a gauge set on a new series while the store is full keeps its value; an empty registry prints a newline', async () => {
  const store = new SeriesStore();
  const counters = new SeriesFamily({ name: 'c_total', help: 'h', type: 'counter', labelNames: ['i'], store });
  const gauge = new SeriesFamily({ name: 'g', help: 'h', type: 'gauge', labelNames: ['i'], store });
  const capacity = store.values.length;
  for (let i = 0; i < capacity; i++) counters.inc({ i }, i + 1);
  gauge.set({ i: 'x' }, 5); // needs a slot: the values array is replaced
  assert.ok(store.values.length > capacity);
  assert.ok(gauge.text().endsWith('g{i="x"} 5'), gauge.text().slice(-40));
  assert.ok(counters.text().endsWith(`c_total{i="${capacity - 1}"} ${capacity}`));
  const empty = new Registry();
  assert.is(await registryText(empty), await empty.metrics());
});

test('a listener that drains again does not change the record the other listeners read', async () => {
  const c = new MetricsCollector('nested', { defaultMetrics: false });
  const a = new FakeTelemetrySource(4, 2);
  const b = new FakeTelemetrySource(4, 2);
  c.observe(a, { layerId: 'a' });
  c.observe(b, { layerId: 'b' });
  for (let i = 0; i < 3; i++) a.call({ ks: [1] });
  for (let i = 0; i < 5; i++) b.call({ ks: [2] });
  let drainedAgain = false;
  c.onDrainRecord((_record, source) => {
    if (source.layerId === 'a' && !drainedAgain) {
      drainedAgain = true;
      b.call({ ks: [1] });
      c.drainNow(); // drains a (nothing new) and b (6 calls) inside a's drain
    }
  });
  const seen: string[] = [];
  c.onDrainRecord((record, source) => seen.push(`${source.layerId}:${record.calls}`));
  const decoded: string[] = [];
  c.onDrain((delta, source) => decoded.push(`${source.layerId}:${delta.calls}`));
  c.drainNow();
  assert.equal(seen, ['a:0', 'b:6', 'a:3', 'b:0']);
  assert.equal(decoded, ['a:0', 'b:6', 'a:3', 'b:0']);
  const text = await c.metrics();
  assert.ok(text.includes('dynamic_moe_routing_requests_total{model_name="nested",backend="cpu",status="success"} 9'));
});

test.run();
