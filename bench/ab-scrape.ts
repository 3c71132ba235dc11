/**
 * bench/ab-scrape: A/B of the metrics scrape in one process. Two OLMoE-shaped layers (T=32, fp32), one observed by
 * the collector of another checkout of lib/observability (A) and one by this checkout's (B); each round runs three
 * forwards under one of them and times its scrape (drain + text), alternating, so the host's load swings hit both
 * alike. End-to-end overhead runs on a shared VM swing by more than most scrape changes; this does not.
 *
 *   git worktree add /tmp/base <commit> && ln -s "$PWD/node_modules" /tmp/base/node_modules
 *   node --import tsx bench/ab-scrape.ts /tmp/base/lib/observability [scrapes=300]
 */
import * as path from 'node:path';
import { buildLayer } from '../lib/bench/layer';
import { native } from '../lib/native';
import * as B from '../lib/observability';

async function main(): Promise<void> {
  const other = process.argv[2];
  if (!other) throw new Error('usage: node --import tsx bench/ab-scrape.ts OTHER/lib/observability [scrapes]');
  const A = require(path.resolve(other)) as typeof B;
  const scrapes = Number(process.argv[3] ?? 300);
  const shape = { name: 'OLMoE', d: 2048, f: 1024, E: 64, k: 8, tokens: [32] };
  const layers = [buildLayer(shape, 'fp32', 2), buildLayer(shape, 'fp32', 2)];
  const x = new Float32Array(32 * layers[0].hiddenSize);
  native().bench.fillNormal(x, 7, 1);
  const collectors = [new A.MetricsCollector('ab'), new B.MetricsCollector('ab')];
  collectors.forEach((c, i) => c.observe(layers[i], { layerId: 0 }));
  const times: number[][] = [[], []];
  for (let it = 0; it < scrapes + 10; it++) {
    for (const i of it % 2 ? [0, 1] : [1, 0]) {
      for (let f = 0; f < 3; f++) layers[i].forward(x);
      const t0 = performance.now();
      await collectors[i].metrics();
      if (it >= 10) times[i].push(performance.now() - t0); // the first ones warm the code up
    }
  }
  const median = (a: number[]) => [...a].sort((p, q) => p - q)[a.length >> 1];
  const mean = (a: number[]) => a.reduce((p, q) => p + q, 0) / a.length;
  ['A (' + other + ')', 'B (this checkout)'].forEach((name, i) =>
    console.log(
      `${name}: scrape median ${(median(times[i]) * 1000).toFixed(0)} µs, mean ${(mean(times[i]) * 1000).toFixed(0)} µs`,
    ),
  );
  layers.forEach((l) => l.dispose());
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
