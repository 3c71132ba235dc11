/**
 * The HTTP endpoints on real sockets (port 0): /metrics, /health (200 or 503), /ready (503 until ready), 404 and
 * 405, a shared port, a port in use, and malformed requests that must not take the server down.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as net from 'node:net';
import {
  BaseHealthCheck,
  HealthMonitor,
  MetricsCollector,
  startObservabilityServer,
  type CheckOutcome,
  type HealthStatusValue,
} from '../lib/observability';
import { FakeTelemetrySource } from './helpers/fake-telemetry';

class SettableCheck extends BaseHealthCheck {
  status: HealthStatusValue = 'healthy';
  protected performCheck(): CheckOutcome {
    return { status: this.status, message: this.status };
  }
}

async function get(url: string, method = 'GET') {
  const res = await fetch(url, { method, signal: AbortSignal.timeout(5000) });
  return {
    status: res.status,
    type: res.headers.get('content-type') ?? '',
    allow: res.headers.get('allow'),
    body: await res.text(),
  };
}

async function rejects(fn: () => Promise<unknown>, pattern: RegExp): Promise<void> {
  try {
    await fn();
  } catch (error) {
    assert.match(
      String((error as Error)?.message ?? error) + String((error as { cause?: { code?: string } })?.cause?.code ?? ''),
      pattern,
    );
    return;
  }
  assert.unreachable(`expected a rejection matching ${pattern}`);
}

/** Sends raw bytes and returns whatever comes back before the server closes (or 2 s pass). */
function raw(port: number, bytes: string, waitMs = 2000): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let data = '';
    const timer = setTimeout(() => socket.destroy(), waitMs);
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (d) => (data += d.toString()));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data);
    });
    socket.on('error', () => {});
  });
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((r) => server.close(r));
  return port;
}

test('separate random ports: /metrics, /health, /ready, 404, 405', async () => {
  const collector = new MetricsCollector('served', { defaultMetrics: false });
  const src = new FakeTelemetrySource();
  collector.observe(src, { layerId: 0 });
  src.call({ ks: [2, 2] });
  const check = new SettableCheck('settable');
  let ready = false;
  const server = await startObservabilityServer({
    metricsPort: 0,
    healthPort: 0,
    collector,
    healthMonitor: new HealthMonitor().addCheck(check),
    ready: async () => ready, // a promise works too
  });
  try {
    assert.match(server.metricsUrl, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    assert.is.not(new URL(server.metricsUrl).port, new URL(server.healthUrl).port);
    const metrics = await get(server.metricsUrl);
    assert.is(metrics.status, 200);
    assert.is(metrics.type, collector.registry.contentType);
    assert.match(
      metrics.body,
      /dynamic_moe_routing_requests_total\{model_name="served",backend="cpu",status="success"\} 1/,
    );
    assert.is((await get(server.metricsUrl + '?x=1')).status, 200, 'a query string is ignored');

    let health = await get(server.healthUrl);
    assert.is(health.status, 200);
    assert.is(health.type, 'application/json');
    assert.is(JSON.parse(health.body).status, 'healthy');
    check.status = 'degraded';
    assert.is((await get(server.healthUrl)).status, 200, 'degraded still serves');
    check.status = 'unhealthy';
    health = await get(server.healthUrl);
    assert.is(health.status, 503);
    assert.is(JSON.parse(health.body).checks.settable.status, 'unhealthy');

    assert.is((await get(server.readyUrl)).status, 503);
    ready = true;
    const r = await get(server.readyUrl);
    assert.is(r.status, 200);
    assert.equal(JSON.parse(r.body), { status: 'ready' });

    assert.is((await get(server.metricsUrl.replace('/metrics', '/nope'))).status, 404);
    assert.is(
      (await get(server.metricsUrl.replace('/metrics', '/health'))).status,
      404,
      'health is not on the metrics port',
    );
    const post = await get(server.metricsUrl, 'POST');
    assert.is(post.status, 405);
    assert.is(post.allow, 'GET, HEAD');
    assert.is((await get(server.healthUrl, 'DELETE')).status, 405);
    const head = await get(server.metricsUrl, 'HEAD');
    assert.equal(
      [head.status, head.type, head.body],
      [200, collector.registry.contentType, ''],
      'HEAD as GET, no body',
    );
    assert.is((await get(server.healthUrl + '/')).status, 503, 'one trailing slash is the same path');
    assert.is((await get(server.readyUrl + '/?probe=1')).status, 200);
    assert.is((await get(server.metricsUrl + '//')).status, 404);
  } finally {
    await server.close();
  }
  await rejects(() => fetch(server.metricsUrl, { signal: AbortSignal.timeout(2000) }), /fetch failed|ECONNREFUSED/);
});

test('equal ports share one server; a port in use rejects', async () => {
  const port = await freePort();
  const collector = new MetricsCollector('shared', { defaultMetrics: false });
  const server = await startObservabilityServer({ metricsPort: port, healthPort: port, collector });
  try {
    assert.is(new URL(server.metricsUrl).port, String(port));
    assert.is(new URL(server.healthUrl).port, String(port));
    assert.is((await get(server.metricsUrl)).status, 200);
    assert.is((await get(server.healthUrl)).status, 200);
    assert.is((await get(server.readyUrl)).status, 200, 'ready by default');
    await rejects(() => startObservabilityServer({ metricsPort: port, healthPort: 0 }), /EADDRINUSE/);
  } finally {
    await server.close();
  }
  await rejects(() => startObservabilityServer({ metricsPort: 70000 }), /metricsPort/);
});

test('without a collector /metrics is 404; a throwing ready() is 503', async () => {
  const server = await startObservabilityServer({
    metricsPort: 0,
    healthPort: 0,
    ready: () => {
      throw new Error('x');
    },
  });
  try {
    assert.is((await get(server.metricsUrl)).status, 404);
    assert.is((await get(server.readyUrl)).status, 503);
  } finally {
    await server.close();
  }
});

test('malformed requests get 400 and the server keeps serving', async () => {
  const collector = new MetricsCollector('robust', { defaultMetrics: false });
  const server = await startObservabilityServer({ metricsPort: 0, healthPort: 0, collector });
  const port = Number(new URL(server.metricsUrl).port);
  try {
    assert.match(await raw(port, 'NOT HTTP AT ALL\r\n\r\n'), /^HTTP\/1\.1 400/);
    assert.match(
      await raw(port, 'GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n'),
      /^HTTP\/1\.1 400/,
    );
    assert.match(
      await raw(port, 'GET http://evil.example/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
      /^HTTP\/1\.1 404/,
    );
    assert.match(
      await raw(port, 'GET /metrics/../metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
      /^HTTP\/1\.1 404/,
    );
    await raw(port, 'GET /metr', 100); // a client that gives up mid-request
    assert.is((await get(server.metricsUrl)).status, 200, 'still serving');
  } finally {
    await server.close();
  }
});

test('a scrape while a large /metrics response is still being written does not touch its bytes', async () => {
  // ~20 MB of text: more than loopback's socket buffers take at once
  const collector = new MetricsCollector('big'.repeat(700), { defaultMetrics: false });
  for (let e = 0; e < 10_000; e++) collector.recordExpertFailure(e, 'timeout');
  const server = await startObservabilityServer({ metricsPort: 0, healthPort: 0, collector });
  const socket = net.connect(Number(new URL(server.metricsUrl).port), '127.0.0.1');
  try {
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.pause(); // a slow scraper: the server cannot hand all of it to the kernel at once
    socket.write('GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await new Promise((resolve) => setTimeout(resolve, 300));
    const before = await collector.metrics();
    collector.recordExpertFailure(9999, 'timeout'); // the next text differs at its end: a shared buffer would be overwritten
    const during = await get(server.metricsUrl);
    assert.is(during.status, 200);
    assert.is(during.body, await collector.metrics());
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    const closed = new Promise((resolve) => socket.once('close', resolve));
    socket.resume();
    await closed;
    const response = Buffer.concat(chunks).toString('utf8');
    assert.is(response.slice(response.indexOf('\r\n\r\n') + 4), before, 'the slow response is the text of its scrape');
    assert.is((await get(server.metricsUrl)).body, await collector.metrics(), 'the buffer is used again afterwards');
  } finally {
    socket.destroy();
    await server.close();
  }
});

test('a failing scrape answers 500 and does not crash', async () => {
  const collector = new MetricsCollector('failing', { defaultMetrics: false });
  collector.onDrain(() => {
    throw new Error('listener');
  });
  collector.registry.registerMetric({
    name: 'broken_metric',
    help: 'x',
    type: 'gauge',
    get: async () => {
      throw new Error('cannot read');
    },
    reset: () => {},
  } as unknown as Parameters<typeof collector.registry.registerMetric>[0]);
  const server = await startObservabilityServer({ metricsPort: 0, healthPort: 0, collector });
  try {
    const r = await get(server.metricsUrl);
    assert.is(r.status, 500);
    assert.match(r.body, /cannot read/);
  } finally {
    await server.close();
  }
});

test.run();
