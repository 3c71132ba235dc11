/**
 * Health checks: the guide's JSON shape, the status precedence (unhealthy > degraded > unknown > healthy),
 * timeouts and exceptions, and each built-in check against a real thing: system memory, a real file system, a
 * real HTTP server, a real Router and MoELayer forward, and load balance from a collector. Also the profiler.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as http from 'node:http';
import * as os from 'node:os';
import type { AddressInfo } from 'node:net';
import { MoELayer, Router } from '../lib';
import {
  BaseHealthCheck,
  DiskSpaceHealthCheck,
  ExpertBalanceHealthCheck,
  ExternalServiceHealthCheck,
  HealthMonitor,
  MemoryHealthCheck,
  MetricsCollector,
  ModelHealthCheck,
  overallStatus,
  PerformanceProfiler,
  type CheckOutcome,
  type HealthStatusValue,
} from '../lib/observability';
import { FakeTelemetrySource } from './helpers/fake-telemetry';
import { freshSeed, randn } from './helpers/random';

const SEED = freshSeed();
console.log(`observability-health.test seed ${SEED}`);

class FixedCheck extends BaseHealthCheck {
  constructor(
    name: string,
    private readonly outcome: CheckOutcome | (() => Promise<CheckOutcome>),
    timeoutMs?: number,
  ) {
    super(name, timeoutMs);
  }
  protected performCheck(): Promise<CheckOutcome> | CheckOutcome {
    return typeof this.outcome === 'function' ? this.outcome() : this.outcome;
  }
}

const fixed = (name: string, status: HealthStatusValue) =>
  new FixedCheck(name, { status, message: status, details: { n: 1 } });

test('the report has exactly the guide shape', async () => {
  const monitor = new HealthMonitor()
    .addCheck(fixed('a', 'healthy'))
    .addCheck(fixed('b', 'degraded'))
    .addCheck(fixed('c', 'healthy'));
  const before = Date.now() / 1000;
  const report = await monitor.getOverallHealth();
  assert.equal(Object.keys(report).sort(), ['checks', 'status', 'summary', 'timestamp']);
  assert.is(report.status, 'degraded');
  assert.ok(report.timestamp >= before - 1e-3 && report.timestamp <= Date.now() / 1000 + 1e-3, 'epoch seconds');
  assert.equal(report.summary, { total_checks: 3, healthy: 2, degraded: 1, unhealthy: 0 });
  assert.equal(Object.keys(report.checks), ['a', 'b', 'c']);
  for (const result of Object.values(report.checks)) {
    assert.equal(Object.keys(result).sort(), ['details', 'duration_ms', 'message', 'status']);
    assert.type(result.duration_ms, 'number');
    assert.ok(result.duration_ms >= 0);
  }
  assert.equal(report.checks.b.details, { n: 1 });
  assert.equal(JSON.parse(JSON.stringify(report)), report, 'plain JSON');
});

test('overall precedence: unhealthy > degraded > unknown > healthy', async () => {
  assert.is(overallStatus(['healthy', 'unknown', 'degraded', 'unhealthy']), 'unhealthy');
  assert.is(overallStatus(['healthy', 'unknown', 'degraded']), 'degraded');
  assert.is(overallStatus(['unknown', 'healthy']), 'unknown');
  assert.is(overallStatus(['healthy', 'healthy']), 'healthy');
  assert.is(overallStatus([]), 'healthy');
  const monitor = new HealthMonitor().addCheck(fixed('u', 'unknown')).addCheck(fixed('h', 'healthy'));
  assert.is((await monitor.getOverallHealth()).status, 'unknown');
  monitor.addCheck(fixed('x', 'unhealthy'));
  const report = await monitor.getOverallHealth();
  assert.is(report.status, 'unhealthy');
  assert.equal(report.summary, { total_checks: 3, healthy: 1, degraded: 0, unhealthy: 1 });
  assert.throws(() => monitor.addCheck(fixed('x', 'healthy')), /already exists/);
});

test('a throwing check is unhealthy, a hanging one times out', async () => {
  const monitor = new HealthMonitor()
    .addCheck(
      new FixedCheck('throws', async () => {
        throw new RangeError('broken');
      }),
    )
    .addCheck(new FixedCheck('hangs', () => new Promise<CheckOutcome>(() => {}), 50));
  const started = Date.now();
  const report = await monitor.getOverallHealth();
  assert.ok(Date.now() - started < 2000);
  assert.is(report.checks.throws.status, 'unhealthy');
  assert.match(report.checks.throws.message, /broken/);
  assert.is(report.checks.throws.details.error_type, 'RangeError');
  assert.is(report.checks.hangs.status, 'unhealthy');
  assert.match(report.checks.hangs.message, /timed out after 50 ms/);
});

test('MemoryHealthCheck: real numbers, and the 0.8 / 0.95 thresholds', async () => {
  const real = await new MemoryHealthCheck().run();
  assert.ok(['healthy', 'degraded', 'unhealthy'].includes(real.status));
  assert.is(real.details.total_bytes, os.totalmem());
  assert.ok((real.details.usage_percent as number) > 0 && (real.details.usage_percent as number) < 1);
  const at = (usage: number) =>
    new MemoryHealthCheck(0.8, 0.95, () => ({ totalBytes: 1000, availableBytes: 1000 * (1 - usage) })).run();
  assert.is((await at(0.5)).status, 'healthy');
  assert.match((await at(0.652)).message, /Memory usage normal: 65\.2%/);
  assert.is((await at(0.85)).status, 'degraded');
  assert.is((await at(0.97)).status, 'unhealthy');
});

test('DiskSpaceHealthCheck reads a real file system; a missing path is unhealthy', async () => {
  const r = await new DiskSpaceHealthCheck(os.tmpdir()).run();
  assert.ok(['healthy', 'degraded', 'unhealthy'].includes(r.status));
  assert.ok((r.details.total_bytes as number) > 0);
  const missing = await new DiskSpaceHealthCheck('/definitely/not/here', 0.8, 0.95, 'disk_missing').run();
  assert.is(missing.status, 'unhealthy');
});

test('ExternalServiceHealthCheck against a real HTTP server: 200, 500, timeout, refused', async () => {
  const server = http.createServer((req, res) => {
    if (req.url === '/ok') res.end('ok');
    else if (req.url === '/fail') {
      res.statusCode = 500;
      res.end('fail');
    } // '/slow' never answers
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const okCheck = new ExternalServiceHealthCheck('svc', `${base}/ok`);
    assert.is(okCheck.name, 'external_svc', "the guide's key");
    const ok = await okCheck.run();
    assert.is(ok.status, 'healthy');
    assert.is(ok.details.status_code, 200);
    const failing = await new ExternalServiceHealthCheck('svc', `${base}/fail`).run();
    assert.is(failing.status, 'degraded', 'up but answering 500: degraded, not a reason to restart this process');
    assert.is(failing.details.status_code, 500);
    const slow = await new ExternalServiceHealthCheck('svc', `${base}/slow`, 100).run();
    assert.is(slow.status, 'unhealthy');
    assert.match(slow.message, /within 100 ms/);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
  const refused = await new ExternalServiceHealthCheck('svc', base + '/ok', 1000).run();
  assert.is(refused.status, 'unhealthy');
  assert.match(refused.message, /unreachable/);
  assert.throws(() => new ExternalServiceHealthCheck('x', 'ftp://host/'), /http/);
});

test('ExternalServiceHealthCheck: a deadline for the whole exchange, no body downloaded, no credentials shown', async () => {
  const open = new Set<import('node:net').Socket>();
  let bodyBytes = 0;
  const server = http.createServer((req, res) => {
    if (req.url === '/endless') {
      res.writeHead(200);
      const pump = () => {
        while (res.write(Buffer.alloc(64 * 1024, 1))) bodyBytes += 64 * 1024;
      };
      res.on('drain', pump);
      pump();
    } else if (req.url === '/trickle') {
      // headers a byte at a time: an idle timeout alone is reset forever
      const socket = res.socket!;
      const bytes = 'HTTP/1.1 200 OK\r\nX-Slow: ' + 'a'.repeat(200);
      let i = 0;
      const timer = setInterval(() => (i < bytes.length ? socket.write(bytes[i++]) : clearInterval(timer)), 20);
      socket.on('close', () => clearInterval(timer));
    } else res.end('ok');
  });
  server.on('connection', (socket) => {
    open.add(socket);
    socket.on('close', () => open.delete(socket));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const endless = await new ExternalServiceHealthCheck('svc', `${base}/endless`, 1000).run();
    assert.is(endless.status, 'healthy');
    const trickle = await new ExternalServiceHealthCheck('svc', `${base}/trickle`, 150).run();
    assert.is(trickle.status, 'unhealthy');
    assert.match(trickle.message, /within 150 ms/);
    assert.ok(trickle.duration_ms < 1000, `${trickle.duration_ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
    assert.is(open.size, 0, 'every connection closed');
    assert.ok(bodyBytes < 16 << 20, `${bodyBytes} body bytes sent before the check hung up`);
    const secret = await new ExternalServiceHealthCheck('svc', base.replace('//', '//user:hunter2@') + '/ok').run();
    assert.is(secret.status, 'healthy');
    assert.not.match(JSON.stringify(secret), /hunter2|user:/);
    assert.is(secret.details.url, `${base}/ok`);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
  for (const bad of [0, -1, NaN, Infinity, '100' as unknown as number])
    assert.throws(() => new ExternalServiceHealthCheck('x', base, bad), /requestTimeoutMs/, String(bad));
});

test('a check: bad timeouts refused; a result without a valid status or with unwritable details is unhealthy', async () => {
  for (const bad of [0, -1, NaN, Infinity, 2 ** 31])
    assert.throws(() => new FixedCheck('t', { status: 'healthy', message: '' }, bad), /timeoutMs/, String(bad));
  const model = { hiddenSize: 4, route: () => ({ weights: new Float32Array(1) }) } as never;
  for (const tokens of [0, -1, 1.5, 1e6])
    assert.throws(() => new ModelHealthCheck(model, { tokens }), /tokens: expected an integer/, String(tokens));
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  const monitor = new HealthMonitor()
    .addCheck(fixed('good', 'healthy'))
    .addCheck(new FixedCheck('nothing', (async () => undefined) as unknown as () => Promise<CheckOutcome>))
    .addCheck(new FixedCheck('great', { status: 'great' as HealthStatusValue, message: 'all great' }))
    .addCheck(new FixedCheck('cyclic', { status: 'healthy', message: 'ok', details: cyclic }))
    .addCheck(new FixedCheck('bigint', { status: 'healthy', message: 'ok', details: { n: 1n } }));
  const report = await monitor.getOverallHealth();
  JSON.stringify(report); // writable
  assert.is(report.status, 'unhealthy');
  assert.equal(report.summary, { total_checks: 5, healthy: 1, degraded: 0, unhealthy: 4 });
  assert.match(report.checks.nothing.message, /no valid status/);
  assert.match(report.checks.great.message, /no valid status.*great/);
  assert.match(report.checks.cyclic.message, /cannot be written as JSON/);
  assert.match(report.checks.bigint.message, /cannot be written as JSON/);
});

test('ModelHealthCheck runs a real route and a real layer forward', async () => {
  const E = 8,
    d = 16,
    f = 8;
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, SEED),
    selection: { kind: 'topk', k: 2 },
  });
  const routed = await new ModelHealthCheck(router, { name: 'router', tokens: 3 }).run();
  assert.is(routed.status, 'healthy', routed.message);
  assert.is(routed.details.tokens, 3);
  const layer = new MoELayer({
    router,
    experts: {
      stacked: true,
      w1: randn(E * f * d, SEED + 1, 0.2),
      w3: randn(E * f * d, SEED + 2, 0.2),
      w2: randn(E * d * f, SEED + 3, 0.2),
    },
  });
  const forward = await new ModelHealthCheck(layer).run();
  assert.is(forward.status, 'healthy', forward.message);
  assert.is(new ModelHealthCheck(layer).name, 'model');
  assert.is(new ModelHealthCheck(layer, { modelName: 'my-model' }).name, 'model_my-model', "the guide's key");
  assert.type(forward.details.latency_ms, 'number');
  const slow = await new ModelHealthCheck(layer, { maxLatencyMs: -1 }).run();
  assert.is(slow.status, 'degraded');
  layer.dispose();
  const broken = await new ModelHealthCheck(layer).run();
  assert.is(broken.status, 'unhealthy', 'a disposed layer fails its check');
  assert.match(broken.message, /disposed/);
  assert.throws(() => new ModelHealthCheck({} as Router), /MoELayer or a Router/);
});

test('ModelHealthCheck on the dynamic rule: estimators that need context pass, calibration is untouched', async () => {
  const E = 8,
    d = 16;
  const dynamic = (estimator: 'perplexity_proxy' | 'router_entropy') =>
    new Router({
      numExperts: E,
      hiddenSize: d,
      gateWeight: randn(E * d, SEED + 7),
      selection: { kind: 'dynamic', minK: 1, maxK: 3, estimator },
    });
  // perplexity_proxy needs LM logits a probe does not have: the probe gives a complexity instead
  const needsContext = await new ModelHealthCheck(dynamic('perplexity_proxy'), { tokens: 2 }).run();
  assert.is(needsContext.status, 'healthy', needsContext.message);
  // the running z-score of router_entropy never sees the probes' random input
  const router = dynamic('router_entropy');
  router.route(randn(4 * d, SEED + 8));
  const before = Array.from(router.estimator!.calibrator.deviceState()!.state);
  for (let i = 0; i < 3; i++) assert.is((await new ModelHealthCheck(router).run()).status, 'healthy');
  assert.equal(Array.from(router.estimator!.calibrator.deviceState()!.state), before);
  // what the probe passes can be given
  let asked = 0;
  const given = await new ModelHealthCheck(router, {
    tokens: 3,
    routeOptions: (T) => {
      asked = T;
      return { complexity: new Float32Array(T).fill(1) };
    },
  }).run();
  assert.is(given.status, 'healthy', given.message);
  assert.is(asked, 3);
});

test('ExpertBalanceHealthCheck from a function, a collector, or a source', async () => {
  assert.is((await new ExpertBalanceHealthCheck(() => 0.3).run()).status, 'degraded');
  assert.is((await new ExpertBalanceHealthCheck(async () => 0.8).run()).status, 'healthy');
  assert.is((await new ExpertBalanceHealthCheck(() => NaN).run()).status, 'unknown');
  const collector = new MetricsCollector('balance', { defaultMetrics: false });
  const src = new FakeTelemetrySource();
  collector.observe(src, { layerId: 0 });
  const check = new ExpertBalanceHealthCheck(collector, 0.5);
  assert.is(check.name, 'expert_balance_balance', "the guide's key: expert_balance_<model name>");
  assert.is((await check.run()).status, 'unknown', 'no call yet');
  src.call({ ks: [1], loadBalance: 0.2 });
  const r = await check.run();
  assert.is(r.status, 'degraded');
  assert.equal(r.details, { balance_score: 0.2, threshold: 0.5 });
  assert.match(r.message, /Expert load imbalance: 0\.20/);
  const direct = new FakeTelemetrySource();
  const directCheck = new ExpertBalanceHealthCheck(direct, 0.5, 'direct');
  direct.call({ ks: [1], loadBalance: 0.9 });
  assert.is((await directCheck.run()).status, 'healthy');
  assert.is((await directCheck.run()).status, 'healthy', 'keeps the last score between calls');
});

test('PerformanceProfiler: duration, memory delta and sampled peak', async () => {
  const profiler = new PerformanceProfiler({ sampleIntervalMs: 1 });
  profiler.startProfile('alloc');
  let held: Buffer | undefined = Buffer.alloc(64 * 1024 * 1024, 1);
  await new Promise((r) => setTimeout(r, 20));
  const peakWhileHeld = process.memoryUsage.rss();
  held = undefined;
  const p = profiler.endProfile('alloc');
  assert.is(held, undefined);
  assert.ok(p.duration >= 0.015 && p.duration < 10, `duration ${p.duration}`);
  assert.ok(p.peakMemory >= peakWhileHeld * 0.99, 'peak includes the sampled allocation');
  assert.type(p.memoryDelta, 'number');
  assert.throws(() => profiler.endProfile('alloc'), /not started/);
  profiler.startProfile('x');
  assert.throws(() => profiler.startProfile('x'), /already running/);
  profiler.endProfile('x');
  const { result, profile } = await profiler.profile('wrapped', async () => 7);
  assert.is(result, 7);
  assert.is(profile.name, 'wrapped');
  assert.equal(profiler.running, []);
});

test('PerformanceProfiler(collector), as in the guide: each ended section sets its memory gauge', async () => {
  const collector = new MetricsCollector('profiled', { defaultMetrics: false });
  const profiler = new PerformanceProfiler(collector, { sampleIntervalMs: 5 });
  profiler.startProfile('inference');
  const rssBefore = process.memoryUsage.rss();
  const p = profiler.endProfile('inference');
  const rssAfter = process.memoryUsage.rss();
  const text = await collector.metrics();
  const line = text
    .split('\n')
    .find((l) => l.startsWith('dynamic_moe_memory_usage_bytes{') && l.includes('component="inference"'));
  assert.ok(line, text);
  const bytes = Number(line!.split(' ').pop());
  assert.ok(bytes >= Math.min(rssBefore, rssAfter) * 0.9 && bytes <= Math.max(rssBefore, rssAfter) * 1.1, `${bytes}`);
  assert.is(p.name, 'inference');
  assert.throws(() => new PerformanceProfiler(collector, { sampleIntervalMs: 0 }), /sampleIntervalMs/);
});

test.run();
