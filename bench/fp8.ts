/**
 * bench/fp8: layers of dtype 'fp8' (E4M3 weights, a scale per row and 128 inputs, fp32 activations) against 'bf16'
 * (and, with --fp32, 'fp32') of the same shapes and seeded weights, interleaved in one run, with the streaming-read
 * bandwidth measured before every round. Per (shape, T): each dtype's median forward, the paired speed-up over bf16
 * (median over rounds of that round's bf16 / fp8 medians: load swings hit both alike), and the fp8 layer's weight
 * stream: the bytes of the experts it ran (their share of weightBytes) over its median time, as a share of the
 * round's stream bandwidth (1.0: at the memory floor of its own bytes).
 *
 *   npx tsx bench/fp8.ts [--models olmoe,mixtral] [--tokens 1,8,32] [--rounds 5] [--fp32] [--threads N]
 */
import { buildLayer, SHAPES, type LayerShape } from '../lib/bench/layer';
import { measureStreamGBs } from '../lib/bench/roofline';
import { median } from '../lib/bench/stats';
import type { MoELayer, WeightDType } from '../lib';
import { native } from '../lib/native';
import { benchArg } from '../lib/bench/args';

const TOKENS: Record<string, number[]> = { OLMoE: [1, 8, 32, 512], Mixtral: [1, 8, 32, 256] };

function main(): void {
  const threads = Number(benchArg('threads', String(native().backendInfo().threads)));
  const rounds = Number(benchArg('rounds', '5'));
  const models = benchArg('models', 'olmoe,mixtral').split(',');
  const dtypes: WeightDType[] = process.argv.includes('--fp32') ? ['fp8', 'bf16', 'fp32'] : ['fp8', 'bf16'];
  console.log(`# fp8 against ${dtypes.slice(1).join(' and ')}: ${native().backendInfo().isa}, ${threads} threads`);
  console.log(
    '| Workload | ' + dtypes.map((d) => `${d} ms`).join(' | ') + ' | bf16 / fp8 (paired) | fp8 weight stream |',
  );
  console.log('|---|' + dtypes.map(() => '---|').join('') + '---|---|');
  for (const shape of SHAPES.filter((s: LayerShape) => models.includes(s.name.toLowerCase()))) {
    const layers = dtypes.map((dtype) => buildLayer(shape, dtype, threads));
    const tokens = process.argv.includes('--tokens')
      ? benchArg('tokens', '1').split(',').map(Number)
      : TOKENS[shape.name];
    for (const T of tokens) {
      const x = new Float32Array(T * shape.d);
      native().bench.fillNormal(x, 7, 1);
      for (const layer of layers) for (let i = 0; i < 2; i++) layer.forward(x); // warm-up
      const hit = new Set(layers[0].forward(x).routing.indices).size;
      const times = layers.map(() => [] as number[]);
      const ratios: number[] = [];
      const streamShares: number[] = [];
      for (let round = 0; round < rounds; round++) {
        const streamGBs = measureStreamGBs(threads, 1 << 29, 3);
        const perRound = layers.map(() => [] as number[]);
        for (let call = 0; call < 5; call++) {
          layers.forEach((layer: MoELayer, i) => {
            const t0 = process.hrtime.bigint();
            layer.forward(x);
            perRound[i].push(Number(process.hrtime.bigint() - t0) / 1e6);
          });
        }
        perRound.forEach((ms, i) => times[i].push(...ms));
        ratios.push(median(perRound[1]) / median(perRound[0]));
        const bytes = (layers[0].weightBytes * hit) / shape.E;
        streamShares.push(bytes / (median(perRound[0]) / 1e3) / 1e9 / streamGBs);
      }
      const cells = times.map((t) => median(t).toFixed(2));
      console.log(
        `| ${shape.name} T=${T} | ${cells.join(' | ')} | ${median(ratios).toFixed(2)} | ` +
          `${median(streamShares).toFixed(2)} of the stream |`,
      );
    }
    for (const layer of layers) layer.dispose();
  }
}

main();
