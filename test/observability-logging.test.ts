/**
 * Structured logs: every record is one JSON line of exactly the guide's shape; the 17 event types; correlation ids
 * that follow async work and never leak between concurrent requests; levels; the pretty format; a user's pino
 * logger; and the periodic performance.measurement summary instead of per-call records.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import {
  clearCorrelationId,
  configureLogging,
  getCorrelationId,
  getLogger,
  LogEvent,
  MetricsCollector,
  PerformanceSummaryLogger,
  setCorrelationId,
  withCorrelationId,
} from '../lib/observability';
import { ExpertDispatchError } from '../lib';
import { FakeTelemetrySource } from './helpers/fake-telemetry';

/** A pino destination that keeps the lines written to it. */
function capture() {
  const lines: string[] = [];
  return {
    lines,
    records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
    destination: { write: (s: string) => void lines.push(...s.split('\n').filter(Boolean)) },
  };
}

const REQUIRED = ['timestamp', 'level', 'service', 'event', 'process', 'correlation_id', 'data'];

test('records are JSON lines of exactly the guide shape', () => {
  const out = capture();
  configureLogging({
    level: 'info',
    serviceName: 'svc',
    serviceVersion: '9.9.9',
    environment: 'test',
    destination: out.destination,
  });
  const log = getLogger('router');
  log.info(LogEvent.ROUTING_COMPLETE, 'Dynamic routing completed', {
    data: { performance: { duration_seconds: 0.15, tokens_processed: 128 } },
  });
  log.error(LogEvent.ROUTING_ERROR, 'Routing failed', { error: new RangeError('bad k') });
  // the guide's option names: extra= and exception=
  log.warning(LogEvent.ROUTING_ERROR, 'Retried', { extra: { attempt: 2 }, exception: new TypeError('flaky') });
  const [ok, failed, guideNames] = out.records();
  assert.equal(guideNames.data, { attempt: 2 });
  assert.equal((guideNames.exception as { type: string }).type, 'TypeError');
  assert.is(guideNames.level, 'WARNING');
  assert.equal(Object.keys(ok).sort(), [...REQUIRED, 'module'].sort());
  assert.equal(Object.keys(failed).sort(), [...REQUIRED, 'exception', 'module'].sort());
  assert.equal(ok.service, { name: 'svc', version: '9.9.9', environment: 'test' });
  assert.equal(ok.event, { type: 'routing.complete', message: 'Dynamic routing completed' });
  assert.equal(ok.process, { pid: process.pid });
  assert.is(ok.level, 'INFO', "the guide's Python level names");
  assert.is(ok.module, 'router');
  assert.is(ok.correlation_id, null);
  assert.equal(ok.data, { performance: { duration_seconds: 0.15, tokens_processed: 128 } });
  assert.ok(
    !Number.isNaN(Date.parse(ok.timestamp as string)) && /Z$/.test(ok.timestamp as string),
    'ISO 8601 UTC timestamp',
  );
  const exception = failed.exception as { type: string; message: string; stack: string };
  assert.is(failed.level, 'ERROR');
  assert.is(exception.type, 'RangeError');
  assert.is(exception.message, 'bad k');
  assert.match(exception.stack, /RangeError: bad k/);
});

test('LogEvent has the 17 event types of the guide', () => {
  assert.is(LogEvent.AUTHENTICATION, LogEvent.AUTH_ATTEMPT, "the guide's Python name is an alias");
  assert.equal([...new Set(Object.values(LogEvent))].sort(), [
    'auth.attempt',
    'complexity.estimation',
    'expert.computation',
    'expert.selection',
    'flop.computation',
    'health.check',
    'memory.warning',
    'model.error',
    'model.inference',
    'model.load',
    'performance.measurement',
    'routing.complete',
    'routing.error',
    'routing.start',
    'security.warning',
    'system.shutdown',
    'system.start',
  ]);
});

test('correlation ids follow awaits and timers and do not leak between concurrent requests', async () => {
  const out = capture();
  configureLogging({ destination: out.destination });
  const log = getLogger('requests');
  const request = (id: string, delayMs: number) =>
    withCorrelationId(id, async () => {
      log.info(LogEvent.ROUTING_START, `start ${id}`);
      await new Promise((r) => setTimeout(r, delayMs));
      await Promise.resolve();
      setImmediate(() => log.info(LogEvent.EXPERT_SELECTION, `immediate ${id}`));
      await new Promise((r) => setImmediate(r));
      log.info(LogEvent.ROUTING_COMPLETE, `end ${id}`);
    });
  await Promise.all([request('req-a', 15), request('req-b', 1), request('req-c', 8)]);
  const records = out.records();
  assert.is(records.length, 9);
  for (const r of records) {
    const message = (r.event as { message: string }).message;
    assert.is(r.correlation_id, message.split(' ')[1], message);
  }
  log.info(LogEvent.SYSTEM_START, 'outside');
  assert.is(out.records()[9].correlation_id, null);
});

test('setCorrelationId / clearCorrelationId, also through the logger methods of the guide', async () => {
  const out = capture();
  configureLogging({ destination: out.destination });
  const log = getLogger('manual');
  await withCorrelationId('outer', async () => {
    log.setCorrelationId('replaced');
    await new Promise((r) => setTimeout(r, 1));
    assert.is(getCorrelationId(), 'replaced');
    log.info(LogEvent.ROUTING_START, 'a');
    log.clearCorrelationId();
    log.info(LogEvent.ROUTING_COMPLETE, 'b');
  });
  await new Promise<void>((resolve) =>
    setImmediate(() => {
      setCorrelationId('entered');
      setTimeout(() => {
        log.info(LogEvent.MODEL_LOAD, 'c');
        clearCorrelationId();
        resolve();
      }, 1);
    }),
  );
  assert.equal(
    out.records().map((r) => r.correlation_id),
    ['replaced', null, 'entered'],
  );
});

test('setCorrelationId in concurrent requests: each keeps its own id, also over one set at startup', async () => {
  const tick = () => new Promise((r) => setImmediate(r));
  await withCorrelationId('startup', async () => {
    // each request sets its id at its start, after the other has set its own, then reads it back after a wait
    const request = async (id: string, before: number, after: number) => {
      for (let i = 0; i < before; i++) await tick();
      setCorrelationId(id);
      for (let i = 0; i < after; i++) await tick();
      const seen = getCorrelationId();
      clearCorrelationId();
      return [seen, getCorrelationId()];
    };
    const results = await Promise.all([request('A', 1, 4), request('B', 2, 1)]);
    assert.equal(results, [
      ['A', undefined],
      ['B', undefined],
    ]);
    assert.is(getCorrelationId(), 'startup', 'the requests did not change the id of the scope that started them');
  });
});

test('levels filter records; the guide names WARNING and CRITICAL work', () => {
  const out = capture();
  configureLogging({ level: 'WARNING', destination: out.destination });
  const log = getLogger('levels');
  assert.not.ok(log.isLevelEnabled('info'));
  log.debug(LogEvent.MODEL_INFERENCE, 'hidden');
  log.info(LogEvent.MODEL_INFERENCE, 'hidden');
  log.warning(LogEvent.MEMORY_WARNING, 'shown');
  log.critical(LogEvent.MODEL_ERROR, 'shown');
  assert.equal(
    out.records().map((r) => r.level),
    ['WARNING', 'CRITICAL'],
  );
  assert.throws(() => configureLogging({ level: 'loud' as 'info' }), /level/);
});

test('file output: JSON lines appended to the file, folder created', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-log-'));
  try {
    const file = path.join(dir, 'nested', 'router.log');
    configureLogging({ file, serviceName: 'file-test' });
    const log = getLogger('file');
    log.info(LogEvent.SYSTEM_START, 'one');
    log.info(LogEvent.SYSTEM_SHUTDOWN, 'two');
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    assert.is(lines.length, 2);
    assert.equal(
      lines.map((l) => (JSON.parse(l) as { event: { type: string } }).event.type),
      ['system.start', 'system.shutdown'],
    );
  } finally {
    configureLogging({ destination: { write: () => {} } });
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('pretty format writes one readable line per record', () => {
  const lines: string[] = [];
  configureLogging({ format: 'pretty', destination: { write: (s: string) => void lines.push(s) } });
  withCorrelationId('cid-1', () =>
    getLogger('pretty').info(LogEvent.HEALTH_CHECK, 'all good', { data: { checks: 3 } }),
  );
  assert.is(lines.length, 1);
  assert.match(lines[0], /^\d{4}-\d\d-\d\dT.*Z INFO     health\.check \[pretty\] all good \(cid-1\) \{"checks":3\}\n$/);
});

test('a failing log destination never throws into callers nor crashes the process; files are closed on reconfigure', async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-log-'));
  try {
    // a full disk: the synchronous write fails inside pino
    configureLogging({ file: '/dev/full' });
    getLogger('full').info(LogEvent.SYSTEM_START, 'one');
    getLogger('full').info(LogEvent.SYSTEM_START, 'two');
    await new Promise((r) => setImmediate(r)); // (warnings are emitted on the next tick)
    assert.is(warnings.filter((w) => /writing log records failed.*ENOSPC/.test(w)).length, 1, warnings.join('; '));
    // a path that cannot be opened: an error of configureLogging in either mode (not an 'error' event later)
    for (const sync of [true, false])
      assert.throws(
        () => configureLogging({ file: '/dev/null/not-a-folder/x.log', sync }),
        /cannot open the log file \/dev\/null\/not-a-folder\/x\.log/,
      );
    // an asynchronous write that fails: an 'error' event nobody else listens to
    warnings.length = 0;
    configureLogging({ file: '/dev/full', sync: false });
    getLogger('full-async').info(LogEvent.SYSTEM_START, 'lost');
    await new Promise((r) => setTimeout(r, 100));
    getLogger('full-async').info(LogEvent.SYSTEM_START, 'dropped');
    assert.is(warnings.filter((w) => /writing log records failed.*ENOSPC/.test(w)).length, 1, warnings.join('; '));
    // reconfiguring closes the file opened before (20 set-ups, not 20 descriptors)
    const fds = () => fs.readdirSync('/proc/self/fd').length;
    const file = path.join(dir, 'again.log');
    configureLogging({ file });
    const before = fds();
    for (let i = 0; i < 20; i++) configureLogging({ file });
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(fds() <= before + 1, `${fds()} descriptors after 20 set-ups, ${before} before`);
  } finally {
    process.off('warning', onWarning);
    configureLogging({ destination: { write: () => {} } });
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('pretty format: a line break in a message stays on its line', () => {
  const lines: string[] = [];
  configureLogging({ format: 'pretty', destination: { write: (s: string) => void lines.push(s) } });
  getLogger('pretty').warn(LogEvent.SECURITY_WARNING, 'first\nINFO forged\r\nrecord');
  assert.is(lines.length, 1);
  assert.is(lines[0].split('\n').length, 2, JSON.stringify(lines[0]));
  assert.match(lines[0], /first\\nINFO forged\\r\\nrecord/);
});

test("a user's pino logger is used, with .child({ module }) made once per module", () => {
  const lines: string[] = [];
  const user = pino({ base: null, timestamp: false }, { write: (s: string) => void lines.push(s) });
  let children = 0;
  const originalChild = user.child.bind(user);
  const counted = Object.assign(Object.create(user) as typeof user, {
    child: (...args: Parameters<typeof user.child>) => {
      children++;
      return originalChild(...args);
    },
  });
  configureLogging({ logger: counted, serviceName: 'user-app', environment: 'prod' });
  const a = getLogger('a');
  const rootChildren = children;
  a.info(LogEvent.AUTH_ATTEMPT, 'x');
  a.info(LogEvent.AUTH_ATTEMPT, 'y');
  getLogger('a').info(LogEvent.SECURITY_WARNING, 'z');
  const r = JSON.parse(lines[0]) as Record<string, unknown>;
  assert.equal(r.service, { name: 'user-app', version: '0.1.0', environment: 'prod' });
  assert.is(r.module, 'a');
  assert.is(lines.length, 3);
  assert.is(rootChildren, 1, 'the service bindings child');
});

/** Logging captured, a fake layer source, and a collector (no default metrics) observing it as layer 0. */
function summaryRig(modelName: string) {
  const out = capture();
  configureLogging({ destination: out.destination });
  const src = new FakeTelemetrySource(8, 4);
  const collector = new MetricsCollector(modelName, { defaultMetrics: false });
  collector.observe(src, { layerId: 0 });
  return { out, src, collector };
}

test('PerformanceSummaryLogger logs one performance.measurement per interval, not per call', async () => {
  const { out, src, collector } = summaryRig('summary-model');
  const summary = new PerformanceSummaryLogger({ collector, intervalMs: 40 }).start();
  for (let i = 0; i < 50; i++) src.call({ ks: [2, 4], durationSeconds: 0.002, flopsComputed: 600, flopsStatic: 800 });
  for (const deadline = Date.now() + 5000; out.lines.length === 0 && Date.now() < deadline;)
    await new Promise((r) => setTimeout(r, 5));
  const first = out.records().filter((r) => (r.event as { type: string }).type === 'performance.measurement');
  assert.is(first.length, 1, 'one summary for 50 calls');
  const perf = (first[0].data as { performance: Record<string, number>; model: { name: string } }).performance;
  assert.is(perf.calls, 50);
  assert.is(perf.tokens_processed, 100);
  assert.is(perf.experts_used, 3);
  assert.is(perf.flop_reduction, 0.25);
  assert.is(perf.duration_seconds_p95, 0.0025);
  assert.ok(Math.abs(perf.duration_seconds_mean - 0.002) < 1e-12);
  assert.ok(Math.abs(perf.duration_seconds - 50 * 0.002) < 1e-9, "the guide's duration_seconds: time in calls");
  assert.is((first[0].data as { model: { name: string } }).model.name, 'summary-model');
  await new Promise((r) => setTimeout(r, 100));
  assert.is(out.records().length, 1, 'idle intervals log nothing');
  src.call({ ks: [1] });
  summary.stop();
  assert.is(out.records().length, 2, 'stop() flushes the last interval');
  const metrics = await collector.metrics();
  assert.match(
    metrics,
    /dynamic_moe_routing_requests_total\{model_name="summary-model",backend="cpu",status="success"\} 51/,
  );
});

test('a collector serving two models logs one summary per model, each under its own name', () => {
  const { out, src, collector } = summaryRig('model-a');
  const other = new FakeTelemetrySource(8, 4);
  collector.observe(other, { layerId: 0, modelName: 'model-b' });
  const summary = new PerformanceSummaryLogger({ collector, intervalMs: 60_000 }).start();
  for (let i = 0; i < 3; i++)
    src.call({ ks: [2, 2], durationSeconds: 0.001, flopsComputed: 100, flopsStatic: 400, loadBalance: 0.9 });
  other.call({ ks: [1, 1, 1, 1, 1], durationSeconds: 0.3, flopsComputed: 300, flopsStatic: 400, loadBalance: 0.4 });
  const all = summary.logNow();
  assert.is(all?.calls, 4, 'logNow returns every model together');
  assert.is(all?.tokens_processed, 11);
  assert.is(all?.load_balance, 0.4, 'the lowest of both');
  const records = out.records().filter((r) => (r.event as { type: string }).type === 'performance.measurement');
  const byModel = new Map(
    records.map((r) => {
      const data = r.data as { performance: Record<string, number>; model: { name: string } };
      return [data.model.name, data.performance];
    }),
  );
  assert.equal([...byModel.keys()].sort(), ['model-a', 'model-b']);
  assert.is(byModel.get('model-a')!.calls, 3);
  assert.is(byModel.get('model-a')!.tokens_processed, 6);
  assert.is(byModel.get('model-a')!.flop_reduction, 0.75);
  assert.is(byModel.get('model-a')!.duration_seconds_p95, 0.001);
  assert.is(byModel.get('model-a')!.load_balance, 0.9, "its own layers' only");
  assert.is(byModel.get('model-b')!.calls, 1);
  assert.is(byModel.get('model-b')!.experts_used, 1);
  assert.is(byModel.get('model-b')!.flop_reduction, 0.25);
  assert.is(byModel.get('model-b')!.duration_seconds_p95, 0.5);
  assert.is(byModel.get('model-b')!.load_balance, 0.4);
  other.call({ ks: [3] });
  summary.logNow();
  const later = out.records().slice(records.length);
  assert.is(later.length, 1, 'an idle model logs nothing');
  assert.is((later[0].data as { model: { name: string } }).model.name, 'model-b');
  summary.stop(false);
  const named = new PerformanceSummaryLogger({ collector, intervalMs: 60_000, modelName: 'both' }).start();
  src.call({ ks: [1] });
  other.call({ ks: [2], loadBalance: 0.3 });
  named.logNow();
  const last = out.records().slice(records.length + 1);
  assert.is(last.length, 1, 'an explicit modelName: one record for every source');
  assert.is((last[0].data as { model: { name: string } }).model.name, 'both');
  assert.is((last[0].data as { performance: { calls: number } }).performance.calls, 2);
  collector.unobserve(other);
  src.call({ ks: [1] });
  assert.is(named.logNow()?.load_balance, 0.9, "a detached layer's score no longer counts");
  const perf = (out.records().at(-1)!.data as { performance: { load_balance: number } }).performance;
  assert.is(perf.load_balance, 0.9, 'the record under the explicit name: every attached layer');
  named.stop(false);
});

test('with logWhenIdle, only models with attached sources log, and a detached one stops after its last calls', () => {
  const out = capture();
  configureLogging({ destination: out.destination });
  const collector = new MetricsCollector('collector-name', { defaultMetrics: false });
  const summary = new PerformanceSummaryLogger({ collector, intervalMs: 60_000, logWhenIdle: true }).start();
  const names = () => {
    const records = out.records().filter((r) => (r.event as { type: string }).type === 'performance.measurement');
    out.lines.length = 0;
    return records.map((r) => (r.data as { model: { name: string } }).model.name);
  };
  summary.logNow();
  assert.equal(names(), ['collector-name'], 'nothing observed yet: one idle record under the collector name');
  const src = new FakeTelemetrySource(8, 4);
  collector.observe(src, { layerId: 0, modelName: 'served' });
  summary.logNow();
  assert.equal(names(), ['served'], 'no record for a model nothing was observed under');
  src.call({ ks: [1, 2] });
  collector.unobserve(src); // drains its last call
  assert.is(summary.logNow()?.calls, 1);
  assert.equal(names(), ['served'], 'the last calls of a detached model');
  summary.logNow();
  assert.equal(names(), ['collector-name'], 'then no more records for it');
  summary.stop(false);
});

test("the periodic summary takes a scrape's recent drain instead of draining again", () => {
  const { out, src, collector } = summaryRig('fresh');
  const summary = new PerformanceSummaryLogger({ collector, intervalMs: 60_000 }).start();
  src.call({ ks: [1, 2], durationSeconds: 0.004 });
  collector.drainNow(); // a scrape
  src.call({ ks: [3], durationSeconds: 0.5 });
  const first = summary.logNow({ drain: 'ifStale' });
  assert.is(first?.calls, 1, 'the call after the scrape waits for the next summary');
  assert.is(first?.tokens_processed, 2);
  assert.ok(Math.abs(first!.duration_seconds_mean - 0.004) < 1e-12);
  assert.is(first?.duration_seconds_p95, 0.005);
  // the latest drain is the one the first summary ended at: not fresh for this window, so it drains
  const second = summary.logNow({ drain: 'ifStale' });
  assert.is(second?.calls, 1);
  assert.is(second?.tokens_processed, 1);
  assert.ok(Math.abs(second!.duration_seconds_mean - 0.5) < 1e-12);
  assert.is(second?.duration_seconds_p95, 0.5, "the first window's buckets were reset");
  src.call({ ks: [1, 1, 1] });
  collector.drainNow();
  src.call({ ks: [1] });
  assert.is(summary.logNow()?.calls, 2, 'logNow() drains by default');
  assert.is(out.records().length, 3);
  summary.stop(false);
});

test('a periodic summary drains again once the latest scrape is older than a tenth of its interval', async () => {
  const { out, src, collector } = summaryRig('stale');
  // a tenth of 1 s: a scrape older than 100 ms is stale (the timer's own first summary comes at 1 s)
  const summary = new PerformanceSummaryLogger({ collector, intervalMs: 1000 });
  summary.start();
  src.call({ ks: [1] });
  collector.drainNow();
  src.call({ ks: [2] });
  await new Promise((r) => setTimeout(r, 150));
  const s = summary.logNow({ drain: 'ifStale' });
  assert.is(s?.calls, 2, 'a stale scrape: the summary drains the second call itself');
  summary.stop(false);
});

test('PerformanceSummaryLogger can drain a source directly', () => {
  const out = capture();
  configureLogging({ destination: out.destination });
  const src = new FakeTelemetrySource(8, 4, 'router');
  const summary = new PerformanceSummaryLogger({ source: src, intervalMs: 10_000, modelName: 'direct' });
  src.call({ ks: [1, 1, 1] });
  const s = summary.logNow();
  assert.is(s?.calls, 1);
  assert.is(s?.flop_reduction, 0);
  assert.is(out.records().length, 1);
  assert.throws(() => new PerformanceSummaryLogger({}), /exactly one/);
});

test('a source-mode summary: a disposed source ends it, another failure is a warning, a collector loses no call', async () => {
  const out = capture();
  configureLogging({ destination: out.destination });
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  try {
    const src = new FakeTelemetrySource(8, 4, 'layer');
    const collector = new MetricsCollector('shared-drain', { defaultMetrics: false });
    collector.observe(src, { layerId: 0 });
    const summary = new PerformanceSummaryLogger({ source: src, intervalMs: 20, modelName: 'direct' }).start();
    src.call({ ks: [1, 2] });
    assert.is(summary.logNow()?.calls, 1);
    const text = await collector.metrics();
    assert.match(
      text,
      /dynamic_moe_routing_requests_total\{[^}]*status="success"[^}]*\} 1\n/,
      'the call also in /metrics',
    );
    src.throwOnDrain = new Error('flaky');
    await new Promise((r) => setTimeout(r, 70));
    assert.ok(
      warnings.some((w) => w.includes('performance summary failed: flaky')),
      warnings.join('; '),
    );
    src.throwOnDrain = new ExpertDispatchError('MoELayer: this layer was disposed');
    await new Promise((r) => setTimeout(r, 70));
    const drains = src.drains;
    await new Promise((r) => setTimeout(r, 70));
    assert.is(src.drains, drains, 'no drain after the source was found disposed: the timer stopped');
    summary.stop(); // nothing left to do, and no throw
  } finally {
    process.off('warning', onWarning);
  }
});

test.run();
