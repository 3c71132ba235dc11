/**
 * `moe-router serve`: loads a checkpoint layer (or the demo layer) and serves /metrics, /health and /ready, with
 * optional synthetic traffic. SIGINT/SIGTERM stop it cleanly with a `system.shutdown` log record.
 */
import { MoELayer } from '../layer';
import { HealthMonitor, MemoryHealthCheck, ModelHealthCheck } from '../observability/health';
import { LogEvent } from '../observability/log-events';
import { configureLogging } from '../observability/logging';
import { MetricsCollector } from '../observability/metrics';
import { PerformanceSummaryLogger } from '../observability/performance-summary';
import { startObservabilityServer } from '../observability/server';
import { intOption, parseOptions, parseSelection, portOption, UsageError, dtypeOption } from './args';
import { layerSource, syntheticInput, syntheticLayer } from './synthetic';

export const SERVE_USAGE = `moe-router serve [--model DIR --layer N | --synthetic olmoe|mixtral] [--selection RULE]
                 [--dtype fp32|bf16|fp8] [--host 127.0.0.1] [--metrics-port 8000] [--health-port 8080]
                 [--load N] [--tokens T] [--duration S] [--log-format json|pretty]

Serves /metrics (Prometheus), /health and /ready (ready once the layer is loaded). --load N drives N synthetic
forwards of T tokens (default 32) per second. Stops on SIGINT/SIGTERM, or after S seconds with --duration.`;

export async function serveCommand(argv: string[]): Promise<void> {
  const v = parseOptions(argv, {
    model: { type: 'string' },
    layer: { type: 'string' },
    synthetic: { type: 'string' },
    selection: { type: 'string' },
    dtype: { type: 'string' },
    host: { type: 'string' },
    'metrics-port': { type: 'string' },
    'health-port': { type: 'string' },
    load: { type: 'string' },
    tokens: { type: 'string' },
    duration: { type: 'string' },
    'log-format': { type: 'string' },
  });
  if (v.help) {
    console.log(SERVE_USAGE);
    return;
  }
  const dtype = dtypeOption(v);
  const format = v['log-format'] ?? 'json';
  if (format !== 'json' && format !== 'pretty') throw new UsageError(`--log-format ${format}: expected json or pretty`);
  const load = intOption(v, 'load', 0, 0)!;
  const tokens = intOption(v, 'tokens', 32, 1)!;
  const duration = intOption(v, 'duration', undefined, 1);
  const selection = typeof v.selection === 'string' ? parseSelection(v.selection) : undefined;
  // (every argument is checked before a port is bound or a model is read)
  const metricsPort = portOption(v, 'metrics-port', 8000);
  const healthPort = portOption(v, 'health-port', 8080);
  const source = layerSource(v);
  const log = configureLogging({ format, serviceName: 'moe-router-serve' });

  let loaded = false;
  const collector = new MetricsCollector(typeof v.model === 'string' ? v.model : `synthetic-${v.synthetic ?? 'olmoe'}`);
  const health = new HealthMonitor().addCheck(new MemoryHealthCheck());
  const server = await startObservabilityServer({
    host: typeof v.host === 'string' ? v.host : '127.0.0.1',
    metricsPort,
    healthPort,
    collector,
    healthMonitor: health,
    ready: () => loaded,
  });
  log.info(LogEvent.SYSTEM_START, 'observability endpoints up', {
    data: { metrics: server.metricsUrl, health: server.healthUrl, ready: server.readyUrl },
  });
  console.error(`serving ${server.metricsUrl}, ${server.healthUrl} and ${server.readyUrl}`);

  const disposables: MoELayer[] = [];
  let layer: MoELayer;
  const t0 = Date.now();
  try {
    if (source.model !== undefined) {
      layer = MoELayer.fromPretrained(source.model, { layer: source.layer, dtype, selection });
    } else {
      const { base, withRule } = syntheticLayer(source.shape, dtype);
      disposables.push(base);
      layer = withRule(selection ?? { kind: 'topk', k: source.shape.k });
    }
  } catch (err) {
    log.error(LogEvent.MODEL_ERROR, 'model load failed', { error: err });
    await server.close();
    throw err;
  }
  disposables.push(layer);
  collector.observe(layer, { layerId: 0, backend: 'cpu' });
  health.addCheck(new ModelHealthCheck(layer));
  loaded = true;
  log.info(LogEvent.MODEL_LOAD, 'layer loaded', {
    data: { seconds: (Date.now() - t0) / 1e3, weightBytes: layer.weightBytes, dtype },
  });
  const summary = new PerformanceSummaryLogger({ collector, logger: log, intervalMs: 10_000 }).start();

  let traffic: NodeJS.Timeout | undefined;
  if (load > 0) {
    const x = syntheticInput(tokens, layer.hiddenSize, 31337);
    let busy = false;
    traffic = setInterval(() => {
      if (busy) return; // never queue work faster than it completes
      busy = true;
      layer
        .forwardAsync(x)
        .catch((err) => log.error(LogEvent.MODEL_ERROR, 'synthetic forward failed', { error: err }))
        .finally(() => (busy = false));
    }, 1000 / load);
  }

  await new Promise<void>((resolve) => {
    const stop = (reason: string) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      clearTimeout(timer);
      if (traffic) clearInterval(traffic);
      summary.stop(); // its last summary comes before the shutdown record
      log.info(LogEvent.SYSTEM_SHUTDOWN, `stopping: ${reason}`, { data: { uptimeSeconds: (Date.now() - t0) / 1e3 } });
      resolve();
    };
    const onInt = () => stop('SIGINT');
    const onTerm = () => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    const timer = duration ? setTimeout(() => stop(`--duration ${duration}s elapsed`), duration * 1000) : undefined;
  });
  await server.close();
  for (const l of disposables) l.dispose();
}
