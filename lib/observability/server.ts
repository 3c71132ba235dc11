/**
 * The HTTP endpoints of the guide on node:http: `/metrics` (Prometheus text, scraped on port 8000 by default) and
 * `/health` and `/ready` (probes, port 8080 by default). Equal ports share one server; port 0 picks a free one.
 * Only GET is served; other paths get 404, other methods 405, and no request can crash the process.
 */
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { finished } from 'node:stream';
import { HealthMonitor, type HealthReport } from './health';
import type { MetricsCollector } from './metrics';

export interface ObservabilityServerOptions {
  /** Port of /metrics. Default 8000; 0 picks a free port. */
  metricsPort?: number;
  /** Port of /health and /ready. Default 8080; 0 picks a free port; equal to metricsPort shares one server. */
  healthPort?: number;
  /** Interface to listen on. Default '127.0.0.1' (use '0.0.0.0' to be reachable from other hosts). */
  host?: string;
  /** Source of /metrics; without one /metrics answers 404. */
  collector?: MetricsCollector;
  /** Source of /health; without one /health reports healthy with no checks. */
  healthMonitor?: HealthMonitor;
  /** /ready answers 200 while this returns true (e.g. once the model is loaded), else 503. Default: always ready. */
  ready?: () => boolean | Promise<boolean>;
}

/** A running server pair. */
export interface ObservabilityServer {
  /** e.g. http://127.0.0.1:8000/metrics */
  readonly metricsUrl: string;
  /** e.g. http://127.0.0.1:8080/health */
  readonly healthUrl: string;
  /** e.g. http://127.0.0.1:8080/ready */
  readonly readyUrl: string;
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

type Route = (response: http.ServerResponse) => Promise<void> | void;

/**
 * Starts the servers.
 * @throws (rejects) when a port cannot be bound, e.g. EADDRINUSE.
 */
export async function startObservabilityServer(opts: ObservabilityServerOptions = {}): Promise<ObservabilityServer> {
  const host = opts.host ?? '127.0.0.1';
  const metricsPort = opts.metricsPort ?? 8000;
  const healthPort = opts.healthPort ?? 8080;
  for (const [name, port] of [
    ['metricsPort', metricsPort],
    ['healthPort', healthPort],
  ] as const) {
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new RangeError(`${name}: expected an integer port in [0, 65535], got ${port}`);
  }
  const monitor = opts.healthMonitor ?? new HealthMonitor();
  const ready = opts.ready ?? (() => true);

  const metricsRoutes: Record<string, Route> = {
    '/metrics': async (res) => {
      const collector = opts.collector;
      if (!collector) return send(res, 404, 'text/plain; charset=utf-8', 'no metrics collector configured\n');
      // The collector's reused text buffer serves one response at a time (over every server of this process): a
      // scrape that arrives while another response still uses it gets a string of its own.
      if (buffersInUse.has(collector)) return send(res, 200, collector.contentType, await collector.metrics());
      buffersInUse.add(collector);
      let body: Buffer;
      try {
        body = await collector.metricsBuffer();
      } catch (error) {
        buffersInUse.delete(collector);
        throw error;
      }
      send(res, 200, collector.contentType, body, () => buffersInUse.delete(collector));
    },
  };
  let pendingHealth: Promise<HealthReport> | undefined;
  const healthRoutes: Record<string, Route> = {
    '/health': async (res) => {
      // Concurrent probes share one run of the checks.
      pendingHealth ??= monitor.getOverallHealth().finally(() => (pendingHealth = undefined));
      const report = await pendingHealth;
      send(res, report.status === 'unhealthy' ? 503 : 200, 'application/json', JSON.stringify(report));
    },
    '/ready': async (res) => {
      let isReady = false;
      try {
        isReady = (await ready()) === true;
      } catch {
        isReady = false;
      }
      send(res, isReady ? 200 : 503, 'application/json', JSON.stringify({ status: isReady ? 'ready' : 'not_ready' }));
    },
  };

  const shared = metricsPort === healthPort && metricsPort !== 0;
  const servers: RunningServer[] = [];
  try {
    if (shared) {
      servers.push(await listen({ ...metricsRoutes, ...healthRoutes }, metricsPort, host));
    } else {
      servers.push(await listen(metricsRoutes, metricsPort, host));
      servers.push(await listen(healthRoutes, healthPort, host));
    }
  } catch (error) {
    await Promise.all(servers.map((s) => s.close()));
    throw error;
  }
  const urlOf = (s: RunningServer, path: string) =>
    `http://${host.includes(':') ? `[${host}]` : host}:${s.port}${path}`;
  const healthServer = servers[servers.length - 1];
  return {
    metricsUrl: urlOf(servers[0], '/metrics'),
    healthUrl: urlOf(healthServer, '/health'),
    readyUrl: urlOf(healthServer, '/ready'),
    close: async () => {
      await Promise.all(servers.map((s) => s.close()));
    },
  };
}

interface RunningServer {
  port: number;
  close(): Promise<void>;
}

/** Collectors whose reused metrics buffer a response is still sending. */
const buffersInUse = new WeakSet<MetricsCollector>();

function listen(routes: Record<string, Route>, port: number, host: string): Promise<RunningServer> {
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    handle(routes, req, res).catch((error: unknown) => {
      if (!res.headersSent)
        send(
          res,
          500,
          'text/plain; charset=utf-8',
          `internal error: ${error instanceof Error ? error.message : String(error)}\n`,
        );
      else res.destroy();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  // Malformed HTTP: answer 400 and drop the connection instead of letting the error surface.
  server.on('clientError', (_error, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    else socket.destroy();
  });
  server.keepAliveTimeout = 5000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      server.on('error', () => {}); // a listening server's later errors must not crash the process
      resolve({
        port: (server.address() as AddressInfo).port,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            for (const socket of sockets) socket.destroy();
          }),
      });
    });
  });
}

async function handle(
  routes: Record<string, Route>,
  req: http.IncomingMessage,
  res: http.ServerResponse,
): Promise<void> {
  req.on('error', () => {});
  res.on('error', () => {});
  const rawUrl = req.url ?? '/';
  const queryAt = rawUrl.search(/[?#]/);
  let path = queryAt >= 0 ? rawUrl.slice(0, queryAt) : rawUrl;
  if (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1); // /metrics/ is /metrics
  const route = Object.prototype.hasOwnProperty.call(routes, path) ? routes[path] : undefined;
  if (!route) return send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
  // HEAD answers as GET does, without the body (node:http leaves it out)
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
  }
  await route(res);
}

/** Answers with `body`; `done` runs once the response is written or has failed (its body may be reused then). */
function send(
  res: http.ServerResponse,
  status: number,
  contentType: string,
  body: string | Buffer,
  done?: () => void,
): void {
  // (finished() also calls back for a response whose client has already gone)
  if (done) finished(res, () => done());
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': typeof body === 'string' ? Buffer.byteLength(body) : body.length,
    'Cache-Control': 'no-store',
  });
  res.end(body);
}
