/**
 * bench/gpt-oss: what gpt-oss's experts cost over plain SwiGLU ones — the bias terms and the clamped activation in
 * the gate/up epilogue, the down bias before the store. Two layers of the same shape and seeded weights, one as
 * gpt-oss's (biases, clamped SwiGLU) and one plain, interleaved in one run. Per (dtype, T): each layer's median
 * forward and the paired ratio (median over rounds of that round's gpt-oss / plain medians: load swings hit both).
 * Default shape: gpt-oss-20b's experts (d = f = 2880, E = 32, k = 4).
 *
 *   npx tsx bench/gpt-oss.ts [--dtypes fp32,bf16] [--tokens 1,32,512] [--rounds 5] [--E 32] [--threads N]
 */
import { buildLayer, type LayerShape } from '../lib/bench/layer';
import { median } from '../lib/bench/stats';
import type { WeightDType } from '../lib';
import { native } from '../lib/native';
import { benchArg } from '../lib/bench/args';

function main(): void {
  const threads = Number(benchArg('threads', String(native().backendInfo().threads)));
  const rounds = Number(benchArg('rounds', '5'));
  const dtypes = benchArg('dtypes', 'fp32,bf16').split(',') as WeightDType[];
  const tokens = benchArg('tokens', '1,32,512').split(',').map(Number);
  const E = Number(benchArg('E', '32'));
  const shape: LayerShape = { name: 'gpt-oss-20b', d: 2880, f: 2880, E, k: 4, tokens };
  console.log(
    `# gpt-oss experts against plain SwiGLU: ${shape.name} experts (E = ${E}), ${native().backendInfo().isa}, ${threads} threads`,
  );
  console.log('| Workload | dtype | plain ms | gpt-oss ms | gpt-oss / plain (paired) |');
  console.log('|---|---|---|---|---|');
  for (const dtype of dtypes) {
    const layers = [buildLayer(shape, dtype, threads, 1, false), buildLayer(shape, dtype, threads, 1, true)];
    for (const T of tokens) {
      const x = new Float32Array(T * shape.d);
      native().bench.fillNormal(x, 7, 1);
      for (const layer of layers) for (let i = 0; i < 2; i++) layer.forward(x); // warm-up
      const times = layers.map(() => [] as number[]);
      const ratios: number[] = [];
      for (let round = 0; round < rounds; round++) {
        const perRound = layers.map(() => [] as number[]);
        for (let call = 0; call < 5; call++)
          layers.forEach((layer, i) => {
            const t0 = process.hrtime.bigint();
            layer.forward(x);
            perRound[i].push(Number(process.hrtime.bigint() - t0) / 1e6);
          });
        perRound.forEach((ms, i) => times[i].push(...ms));
        ratios.push(median(perRound[1]) / median(perRound[0]));
      }
      console.log(
        `| ${shape.name} T=${T} | ${dtype} | ${median(times[0]).toFixed(2)} | ${median(times[1]).toFixed(2)} | ` +
          `${median(ratios).toFixed(3)} |`,
      );
    }
    for (const layer of layers) layer.dispose();
  }
}

main();
