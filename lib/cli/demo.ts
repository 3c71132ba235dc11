/**
 * `moe-router demo`: the package's main job on an embedded default, with no downloads. An OLMoE-shaped layer
 * (d=2048, f=1024, E=64, top-8; fixed seed) runs the same batches under static top-8, top-p and dynamic k, and a
 * table shows what each rule costs and changes. /metrics and /health are served on loopback meanwhile.
 */
import { MoELayer } from '../layer';
import { HealthMonitor, MemoryHealthCheck, ModelHealthCheck } from '../observability/health';
import { MetricsCollector } from '../observability/metrics';
import { startObservabilityServer } from '../observability/server';
import type { Selection } from '../types';
import { median, relativeError } from '../bench/stats';
import { dtypeOption, intOption, parseOptions, portOption } from './args';
import { syntheticInput, syntheticLayer, syntheticShape } from './synthetic';

export const DEMO_USAGE = `moe-router demo [--tokens T] [--batches N] [--dtype fp32|bf16|fp8] [--port P] [--no-serve]

Builds an OLMoE-shaped layer with seeded weights and compares static top-8 with top-p and dynamic-k routing:
mean experts per token, FLOPs saved, ms per forward and output deviation from static top-k. Serves /metrics and
/health on 127.0.0.1 while it runs (port P, default: a free one).`;

export async function demoCommand(argv: string[]): Promise<void> {
  const v = parseOptions(argv, {
    tokens: { type: 'string' },
    batches: { type: 'string' },
    dtype: { type: 'string' },
    port: { type: 'string' },
    'no-serve': { type: 'boolean' },
  });
  if (v.help) {
    console.log(DEMO_USAGE);
    return;
  }
  const tokens = intOption(v, 'tokens', 32, 1)!;
  const batches = intOption(v, 'batches', 8, 1)!;
  const port = portOption(v, 'port', 0);
  const dtype = dtypeOption(v);

  const shape = syntheticShape('olmoe');
  const started = Date.now();
  const { base, withRule } = syntheticLayer(shape, dtype);
  console.log(
    `built an OLMoE-shaped layer (d=${shape.d}, f=${shape.f}, E=${shape.E}, top-${shape.k}, ${dtype}) in ${((Date.now() - started) / 1e3).toFixed(1)} s`,
  );
  const inputs = Array.from({ length: batches }, (_, b) => syntheticInput(tokens, shape.d, 7000 + b));
  const rules: [string, Selection][] = [
    [`static top-${shape.k}`, { kind: 'topk', k: shape.k }],
    ['top-p 0.6', { kind: 'topp', p: 0.6, maxK: shape.E }],
    ['top-p 0.8', { kind: 'topp', p: 0.8, maxK: shape.E }],
    ['dynamic k 2-8 (router entropy)', { kind: 'dynamic', minK: 2, maxK: shape.k, estimator: 'router_entropy' }],
  ];
  const layers = rules.map(([, selection]) => withRule(selection));
  const collector = new MetricsCollector('demo-olmoe');
  const health = new HealthMonitor().addCheck(new MemoryHealthCheck()).addCheck(new ModelHealthCheck(layers[0]));
  layers.forEach((layer, i) => collector.observe(layer, { layerId: i, backend: 'cpu' }));
  const server = v['no-serve']
    ? undefined
    : await startObservabilityServer({ metricsPort: port, healthPort: port, collector, healthMonitor: health });
  if (server) console.log(`serving ${server.metricsUrl} and ${server.healthUrl} while the demo runs`);
  try {
    const dynamic = layers[3];
    dynamic.router.estimator?.calibrate(
      inputs.map((x) => ({ x, tokens, hiddenSize: shape.d, logits: dynamic.router.logits(x), numExperts: shape.E })),
    );
    const reference = inputs.map((x) => layers[0].forward(x).output);
    console.log('');
    console.log(
      `| rule | mean experts/token | FLOPs saved | ms per forward (T=${tokens}) | deviation from static top-${shape.k} |`,
    );
    console.log('|---|---|---|---|---|');
    rules.forEach(([name], i) => {
      const layer: MoELayer = layers[i];
      layer.forward(inputs[0]);
      const times: number[] = [];
      let assignments = 0;
      let saved = 0;
      let staticFlops = 0;
      let deviation = 0;
      inputs.forEach((x, b) => {
        const t0 = process.hrtime.bigint();
        const r = layer.forward(x);
        times.push(Number(process.hrtime.bigint() - t0) / 1e6);
        assignments += r.routing.stats.assignments;
        saved += r.stats.flopsSaved;
        staticFlops += r.stats.flopsStatic;
        deviation += relativeError(r.output, reference[b]) / batches;
      });
      console.log(
        `| ${name} | ${(assignments / (tokens * batches)).toFixed(2)} | ${((100 * saved) / staticFlops).toFixed(1)}% | ` +
          `${median(times).toFixed(2)} | ${deviation.toExponential(2)} |`,
      );
    });
    console.log('');
    console.log(
      'Deviation is ‖y − y_static‖/‖y_static‖. At small T every expert is still read, so time tracks bytes, not FLOPs.',
    );
    console.log(`finished in ${((Date.now() - started) / 1e3).toFixed(1)} s`);
  } finally {
    await server?.close();
    for (const layer of layers) layer.dispose();
    base.dispose();
  }
}
