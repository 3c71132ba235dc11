/**
 * bench/layer: the six workloads of the layer issue (OLMoE d=2048 f=1024 E=64 k=8 at T=1/32/512; Mixtral
 * d=4096 f=14336 E=8 k=2 at T=1/32/256), fp32 and bf16, random normal weights. For each: median ms, GFLOP/s,
 * GB/s of expert weights read, and the ratio to the roofline floor measured in this same run.
 * Run it with `npx tsx bench/layer.ts` or `moe-router bench layer`.
 */
import { MoELayer, type WeightDType } from '../layer';
import { Router } from '../router';
import { native } from '../native';
import type { AnchorSample, AnchorSampler, Roofline } from './roofline';
import { median } from './stats';

export interface LayerShape {
  name: string;
  d: number;
  f: number;
  E: number;
  k: number;
  tokens: number[];
}

export const SHAPES: LayerShape[] = [
  { name: 'OLMoE', d: 2048, f: 1024, E: 64, k: 8, tokens: [1, 32, 512] },
  { name: 'Mixtral', d: 4096, f: 14336, E: 8, k: 2, tokens: [1, 32, 256] },
];

export interface LayerRow {
  workload: string;
  dtype: 'fp32' | 'bf16';
  /** Bytes of expert weights the forward had to read (experts hit × bytes per expert). */
  bytes: number;
  flops: number;
  tokens: number;
  ms: number;
  gflops: number;
  weightGBs: number;
  floorMs: number;
  /** ms over the floor of the run's best anchors (a median against bests: noise only makes it larger). */
  ratio: number;
  /**
   * The median over rounds of (this round's median ms / the floor of the anchors measured right before the
   * round): load swings of the host hit both sides of each ratio alike.
   */
  pairedRatio: number;
  rounds: number;
  bound: 'memory' | 'compute';
  expertsHit: number;
}

/**
 * Builds a layer with seeded normal weights, generated natively one expert at a time. `gptOss`: the same weights as
 * gpt-oss's experts, with bias terms (seeded too) and its clamped SwiGLU.
 */
export function buildLayer(shape: LayerShape, dtype: WeightDType, threads: number, seed = 1, gptOss = false): MoELayer {
  const { d, f, E, k } = shape;
  const fill = native().bench.fillNormal;
  const gate = new Float32Array(E * d);
  fill(gate, seed, 0.02);
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: gate,
    selection: { kind: 'topk', k },
    normalize: true,
    threads,
  });
  const bias = (n: number, at: number) => {
    const b = new Float32Array(n);
    fill(b, at, 0.1);
    return b;
  };
  return new MoELayer({
    router,
    dtype,
    threads,
    activation: gptOss ? { kind: 'gptOss' } : undefined,
    experts: (e) => {
      const w1 = new Float32Array(f * d);
      const w3 = new Float32Array(f * d);
      const w2 = new Float32Array(d * f);
      fill(w1, seed * 1000 + 3 * e + 1, 1 / Math.sqrt(d));
      fill(w3, seed * 1000 + 3 * e + 2, 1 / Math.sqrt(d));
      fill(w2, seed * 1000 + 3 * e + 3, 1 / Math.sqrt(f));
      if (!gptOss) return { w1, w3, w2 };
      const at = seed * 1000 + 500 + 3 * e;
      return { w1, w3, w2, b1: bias(f, at), b3: bias(f, at + 1), b2: bias(d, at + 2) };
    },
  });
}

/**
 * Times one burst of forwards of a workload: one untimed forward (the anchors or another workload ran just before),
 * then at least `minReps` timed ones and as many more as fit in `budgetSeconds` (at most 100). Callers interleave
 * the bursts of several workloads (see benchShape), so a minute of heavy load from another tenant of the machine
 * spreads over all of them instead of ruining one. Returns every timed sample.
 */
export function timeForward(layer: MoELayer, x: Float32Array, budgetSeconds: number, minReps = 3): number[] {
  const times: number[] = [];
  layer.forward(x);
  const start = Date.now();
  while (times.length < minReps || (Date.now() - start) / 1000 < budgetSeconds) {
    const t0 = process.hrtime.bigint();
    layer.forward(x);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (times.length >= 100) break;
  }
  return times;
}

/** `max(bytes / stream rate, flops / dense GEMM rate)` in ms, and which side bounds it. */
export function floorOf(bytes: number, flops: number, streamGBs: number, gemmGflops: number) {
  const memMs = (bytes / (streamGBs * 1e9)) * 1e3;
  const computeMs = (flops / (gemmGflops * 1e9)) * 1e3;
  return {
    floorMs: Math.max(memMs, computeMs),
    bound: memMs >= computeMs ? ('memory' as const) : ('compute' as const),
  };
}

type Measured = Pick<
  LayerRow,
  'workload' | 'dtype' | 'tokens' | 'ms' | 'bytes' | 'flops' | 'expertsHit' | 'pairedRatio' | 'rounds'
>;

/**
 * Times a shape's token counts in `rounds` rounds. Each round first samples the anchors (a streaming read and a
 * dense GEMM of the dtype), then runs a short burst of every token count, so each round's layer times have a floor
 * measured seconds before them. Returns the measured rows (ratios to the run's best anchors are applied by the
 * caller, see applyRoofline) and the anchors sampled.
 */
export function benchShape(
  shape: LayerShape,
  dtype: 'fp32' | 'bf16',
  sampler: AnchorSampler,
  onStep: (label: string) => void = () => {},
  rounds = 5,
  burstSeconds = 0.6,
): { measured: Measured[]; anchors: AnchorSample[] } {
  const layer = buildLayer(shape, dtype, sampler.threads);
  const bytesPerExpert = 3 * shape.d * shape.f * (dtype === 'fp32' ? 4 : 2);
  const inputs = shape.tokens.map((T, i) => {
    const x = new Float32Array(T * layer.hiddenSize);
    native().bench.fillNormal(x, 11 + i, 1);
    return x;
  });
  const first = inputs.map((x) => layer.forward(x));
  const cost = first.map((r) => {
    const expertsHit = Array.from(r.stats.expertCounts).filter((c) => c > 0).length;
    return { expertsHit, bytes: expertsHit * bytesPerExpert, flops: r.stats.flopsComputed };
  });
  const samples = inputs.map(() => [] as number[]);
  const roundRatios = inputs.map(() => [] as number[]);
  const anchors: AnchorSample[] = [];
  for (let round = 0; round < rounds; round++) {
    const a = sampler.sample(dtype);
    anchors.push(a);
    inputs.forEach((x, i) => {
      const times = timeForward(layer, x, burstSeconds);
      samples[i].push(...times);
      roundRatios[i].push(median(times) / floorOf(cost[i].bytes, cost[i].flops, a.streamGBs, a.gemmGflops).floorMs);
    });
  }
  const measured = shape.tokens.map((T, i): Measured => {
    const row = {
      workload: `${shape.name} T=${T}`,
      dtype,
      tokens: T,
      ms: median(samples[i]),
      ...cost[i],
      pairedRatio: median(roundRatios[i]),
      rounds,
    };
    onStep(`${shape.name} ${dtype} T=${T}: ${row.ms.toFixed(2)} ms, ${row.pairedRatio.toFixed(3)}x floor (paired)`);
    return row;
  });
  layer.dispose();
  return { measured, anchors };
}

/** The row of a measured workload against a roofline: `max(bytes / stream rate, flops / dense GEMM rate)`. */
export function applyRoofline(m: Measured, roof: Roofline): LayerRow {
  const { floorMs, bound } = floorOf(m.bytes, m.flops, roof.streamGBs, roof.gemmGflops[m.dtype]);
  return {
    ...m,
    gflops: m.flops / (m.ms / 1e3) / 1e9,
    weightGBs: m.bytes / (m.ms / 1e3) / 1e9,
    floorMs,
    ratio: m.ms / floorMs,
    bound,
  };
}

/** The better of two anchor measurements: the machine's limit is what it reached at its best in the run. */
export function bestRoofline(a: Roofline, b: Roofline): Roofline {
  return {
    streamGBs: Math.max(a.streamGBs, b.streamGBs),
    gemmGflops: {
      fp32: Math.max(a.gemmGflops.fp32, b.gemmGflops.fp32),
      bf16: Math.max(a.gemmGflops.bf16, b.gemmGflops.bf16),
    },
    gemmSize: a.gemmSize,
    threads: a.threads,
  };
}

export function layerTable(rows: LayerRow[], roof: Roofline): string {
  const lines = [
    `Roofline (best of the anchors measured before the layers and before each of their rounds, ${roof.threads} threads): stream ${roof.streamGBs.toFixed(1)} GB/s, ` +
      `dense ${roof.gemmSize}³ GEMM fp32 ${roof.gemmGflops.fp32.toFixed(0)} GFLOP/s, bf16 ${roof.gemmGflops.bf16.toFixed(0)} GFLOP/s`,
    '',
    'ratio to floor: the median ms over the floor of those best anchors. paired ratio: the median over rounds of each',
    "round's median ms over the floor of the anchors measured right before that round.",
    '',
    '| Workload | dtype | ms (median) | GFLOP/s | weight GB/s | floor ms | bound | ratio to floor | paired ratio |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.workload} | ${r.dtype} | ${r.ms.toFixed(2)} | ${r.gflops.toFixed(1)} | ${r.weightGBs.toFixed(1)} | ${r.floorMs.toFixed(2)} | ${r.bound} | ${r.ratio.toFixed(3)} | ${r.pairedRatio.toFixed(3)} |`,
    );
  }
  return lines.join('\n');
}
