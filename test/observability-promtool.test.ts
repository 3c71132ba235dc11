/**
 * Real Prometheus tools against our real output: `promtool check metrics` on a scrape after traffic, the alert
 * rules checked and unit-tested, the config and the dashboard's queries parsed, and a real Prometheus server that
 * scrapes our endpoint so the test can read `dynamic_moe_routing_requests_total` back through its query API.
 * Each test skips, saying why, when promtool or prometheus is not installed (CI installs Debian's `prometheus`).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  MetricName,
  MetricsCollector,
  startObservabilityServer,
  type MetricsCollector as Collector,
} from '../lib/observability';
import { MoELayer, Router } from '../lib';
import { FakeTelemetrySource } from './helpers/fake-telemetry';
import { randn } from './helpers/random';

const ROOT = path.join(__dirname, '..');
const MONITORING = path.join(ROOT, 'monitoring');

function which(bin: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, bin);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

const PROMTOOL = which('promtool');
const PROMETHEUS = which('prometheus');

function skipWithout(bin: string | undefined, name: string): boolean {
  if (bin) return false;
  console.log(`  skipped: ${name} is not installed (apt-get install -y prometheus)`);
  return true;
}

function promtool(args: string[], input?: string) {
  const r = spawnSync(PROMTOOL!, args, { input, encoding: 'utf8', timeout: 60_000, cwd: ROOT });
  return { code: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, error: r.error };
}

/** A collector with traffic from every path: calls, errors, dynamic complexity, manual methods. */
function busyCollector(defaultMetrics: boolean): { collector: Collector; calls: number } {
  const collector = new MetricsCollector('lint-model', { defaultMetrics });
  const layer = new FakeTelemetrySource(8, 4, 'layer');
  const router = new FakeTelemetrySource(16, 6, 'router', 2048);
  collector.observe(layer, { layerId: 0, estimatorType: 'router_entropy' });
  collector.observe(router, { layerId: 1 });
  for (let i = 0; i < 5; i++)
    layer.call({ ks: [1, 2, 4, 3], complexity: [0.05, 0.4, 0.99, 0.7], flopsComputed: 800, flopsStatic: 1000 });
  for (let i = 0; i < 2; i++) router.call({ ks: [6, 0, 2] });
  layer.error('non_finite');
  // and a real MoELayer with its router, so the native deltas are linted too
  const E = 8,
    d = 16,
    f = 8;
  const gate = randn(E * d, 5);
  const real = new MoELayer({
    router: new Router({ numExperts: E, hiddenSize: d, gateWeight: gate, selection: { kind: 'topk', k: 2 } }),
    experts: {
      stacked: true,
      w1: randn(E * f * d, 6, 0.2),
      w3: randn(E * f * d, 7, 0.2),
      w2: randn(E * d * f, 8, 0.2),
    },
  });
  collector.observe(real, { layerId: 2 });
  for (let i = 0; i < 3; i++) real.forward(randn(4 * d, 9 + i));
  collector.recordExpertFailure(3, 'nan_output');
  collector.updateMemoryUsage(1234, 'kv "cache"\\ with\nnewline');
  return { collector, calls: 10 };
}

test('promtool check metrics: our families lint clean on a real scrape after traffic', async () => {
  if (skipWithout(PROMTOOL, 'promtool')) return;
  const { collector } = busyCollector(false);
  const text = await collector.metrics();
  assert.match(text, /dynamic_moe_expert_tokens_total\{/);
  const own = promtool(['check', 'metrics'], text);
  assert.is(own.code, 0, `promtool check metrics:\n${own.out}`);

  // With prom-client's default process metrics on the same registry, only those may draw lint remarks.
  const withDefaults = await busyCollector(true).collector.metrics();
  const all = promtool(['check', 'metrics'], withDefaults);
  const ours = all.out.split('\n').filter((l) => l.startsWith('dynamic_moe_'));
  assert.equal(ours, [], `remarks on dynamic_moe_* families:\n${all.out}`);
  if (all.code !== 0)
    console.log(
      `  (promtool remarks on prom-client's default metrics only: ${all.out
        .trim()
        .split('\n')
        .map((l) => l.split(' ')[0])
        .join(', ')})`,
    );
});

test('promtool check rules and test rules on monitoring/alerts.yml', () => {
  if (skipWithout(PROMTOOL, 'promtool')) return;
  const check = promtool(['check', 'rules', 'monitoring/alerts.yml']);
  assert.is(check.code, 0, check.out);
  assert.match(check.out, /SUCCESS: 5 rules found/);
  const unit = promtool(['test', 'rules', 'monitoring/alerts.test.yml']);
  assert.is(unit.code, 0, unit.out);
  const config = promtool(['check', 'config', 'monitoring/prometheus.yml']);
  assert.is(config.code, 0, config.out);
});

/** Every dynamic_moe_* series name a PromQL text refers to must be one we export (or its histogram series). */
function assertKnownNames(text: string, where: string): void {
  const exported = new Set<string>();
  for (const name of Object.values(MetricName))
    for (const suffix of ['', '_bucket', '_sum', '_count']) exported.add(name + suffix);
  const used = text.match(/dynamic_moe_[a-z_]+/g) ?? [];
  assert.ok(used.length > 0, `${where} uses our metrics`);
  for (const name of used) assert.ok(exported.has(name), `${where}: ${name} is not an exported series`);
}

test('alerts and the dashboard use only exported metric names; every dashboard query parses', () => {
  const alerts = fs.readFileSync(path.join(MONITORING, 'alerts.yml'), 'utf8');
  for (const alert of [
    'HighErrorRate',
    'HighMemoryUsage',
    'ExpertImbalance',
    'HighRoutingLatencyP95',
    'FlopReductionDrop',
  ])
    assert.match(alerts, new RegExp(`alert: ${alert}\\n`));
  assertKnownNames(alerts, 'alerts.yml');
  const dashboard = JSON.parse(fs.readFileSync(path.join(MONITORING, 'grafana-dashboard.json'), 'utf8')) as {
    dashboard: { panels: { title: string; targets: { expr: string }[] }[] };
  };
  const titles = dashboard.dashboard.panels.map((p) => p.title);
  for (const t of [
    'Request Rate',
    'Routing Duration',
    'Experts per Token',
    'FLOP Reduction %',
    'Load Balance',
    'Memory',
    'Errors',
  ]) {
    assert.ok(
      titles.some((title) => title.startsWith(t)),
      `panel ${t}`,
    );
  }
  const exprs = dashboard.dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));
  assertKnownNames(exprs.join('\n'), 'grafana-dashboard.json');
  assert.match(
    exprs.join('\n'),
    /histogram_quantile\(0\.95, sum by \(model_name, backend, le\) \(rate\(dynamic_moe_routing_duration_seconds_bucket/,
  );
  if (skipWithout(PROMTOOL, 'promtool')) return;
  // promtool parses PromQL only inside rule files: wrap each query in a recording rule.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-dash-'));
  try {
    const rules = [
      'groups:',
      '  - name: dashboard',
      '    rules:',
      ...exprs.flatMap((e, i) => [`      - record: dashboard:query_${i}`, `        expr: ${JSON.stringify(e)}`]),
    ];
    fs.writeFileSync(path.join(dir, 'dashboard-rules.yml'), rules.join('\n') + '\n');
    const r = promtool(['check', 'rules', path.join(dir, 'dashboard-rules.yml')]);
    assert.is(r.code, 0, r.out);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Stops a child we started: SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
function stopChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const killer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(killer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

test('a real Prometheus server scrapes /metrics and answers a query for our counter', async () => {
  if (skipWithout(PROMETHEUS, 'prometheus')) return;
  const { collector, calls } = busyCollector(true);
  const server = await startObservabilityServer({ metricsPort: 0, healthPort: 0, collector });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-prometheus-'));
  let child: ChildProcess | undefined;
  let log = '';
  try {
    const target = new URL(server.metricsUrl).host;
    const config = [
      'global:',
      '  scrape_interval: 1s',
      '  evaluation_interval: 1s',
      'scrape_configs:',
      '  - job_name: dynamic-moe-router',
      '    metrics_path: /metrics',
      `    static_configs: [{ targets: ['${target}'] }]`,
    ].join('\n');
    fs.writeFileSync(path.join(dir, 'prometheus.yml'), config + '\n');
    const port = await freePort();
    child = spawn(
      PROMETHEUS!,
      [
        `--config.file=${path.join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${path.join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child.stdout!.on('data', (d) => (log += d));
    child.stderr!.on('data', (d) => (log += d));
    const query = `http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent('dynamic_moe_routing_requests_total{status="success"}')}`;
    let found: { metric: Record<string, string>; value: [number, string] }[] = [];
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && found.length === 0) {
      if (child.exitCode !== null) break;
      try {
        const res = await fetch(query, { signal: AbortSignal.timeout(2000) });
        if (res.ok) {
          const body = (await res.json()) as { status: string; data: { result: typeof found } };
          if (body.status === 'success') found = body.data.result;
        }
      } catch {
        // not listening yet
      }
      if (found.length === 0) await new Promise((r) => setTimeout(r, 250));
    }
    assert.ok(found.length > 0, `Prometheus returned no sample within 60 s; its log:\n${log}`);
    assert.is(found.length, 1);
    assert.is(found[0].metric.__name__, MetricName.ROUTING_REQUESTS);
    assert.is(found[0].metric.model_name, 'lint-model');
    assert.is(found[0].metric.backend, 'cpu');
    assert.is(found[0].metric.job, 'dynamic-moe-router');
    assert.is(Number(found[0].value[1]), calls);
  } finally {
    if (child) await stopChild(child);
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
