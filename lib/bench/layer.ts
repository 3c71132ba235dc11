/**
 * bench/layer: the six workloads of the layer issue (OLMoE d=2048 f=1024 E=64 k=8 at T=1/32/512; Mixtral
 * d=4096 f=14336 E=8 k=2 at T=1/32/256), fp32 and bf16, random normal weights. For each: median ms, GFLOP/s,
 * GB/s of expert weights read, and the ratio to the roofline floor measured in this same run.
 * Run it with `npx tsx bench/layer.ts` or `moe-router bench layer`.
 */
import { MoELayer } from '../layer';
import { Router } from '../router';
import { native } from '../native';
import { measureRoofline, type Roofline } from './roofline';
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
  dtype: string;
  tokens: number;
  ms: number;
  gflops: number;
  weightGBs: number;
  floorMs: number;
  ratio: number;
  bound: 'memory' | 'compute';
  expertsHit: number;
}

/** Builds a layer with seeded normal weights, generated natively one expert at a time. */
export function buildLayer(shape: LayerShape, dtype: 'fp32' | 'bf16', threads: number, seed = 1): MoELayer {
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
  return new MoELayer({
    router,
    dtype,
    threads,
    experts: (e) => {
      const w1 = new Float32Array(f * d);
      const w3 = new Float32Array(f * d);
      const w2 = new Float32Array(d * f);
      fill(w1, seed * 1000 + 3 * e + 1, 1 / Math.sqrt(d));
      fill(w3, seed * 1000 + 3 * e + 2, 1 / Math.sqrt(d));
      fill(w2, seed * 1000 + 3 * e + 3, 1 / Math.sqrt(f));
      return { w1, w3, w2 };
    },
  });
}

/** Times one workload: warm-up, then the median of repeated forwards within a time budget. */
export function timeForward(layer: MoELayer, T: number, budgetSeconds = 3, minReps = 5, seed = 11) {
  const x = new Float32Array(T * layer.hiddenSize);
  native().bench.fillNormal(x, seed, 1);
  const first = layer.forward(x);
  layer.forward(x);
  const times: number[] = [];
  const start = Date.now();
  while (times.length < minReps || (Date.now() - start) / 1000 < budgetSeconds) {
    const t0 = process.hrtime.bigint();
    layer.forward(x);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (times.length >= 200) break;
  }
  return { ms: median(times), result: first };
}

export function benchShape(
  shape: LayerShape,
  dtype: 'fp32' | 'bf16',
  roof: Roofline,
  threads: number,
  onStep: (label: string) => void = () => {},
): LayerRow[] {
  const layer = buildLayer(shape, dtype, threads);
  const bytesPerExpert = 3 * shape.d * shape.f * (dtype === 'fp32' ? 4 : 2);
  const rows: LayerRow[] = [];
  for (const T of shape.tokens) {
    const { ms, result } = timeForward(layer, T);
    const expertsHit = Array.from(result.stats.expertCounts).filter((c) => c > 0).length;
    const bytes = expertsHit * bytesPerExpert;
    const flops = result.stats.flopsComputed;
    const memMs = (bytes / (roof.streamGBs * 1e9)) * 1e3;
    const computeMs = (flops / (roof.gemmGflops[dtype] * 1e9)) * 1e3;
    const floorMs = Math.max(memMs, computeMs);
    rows.push({
      workload: `${shape.name} T=${T}`,
      dtype,
      tokens: T,
      ms,
      gflops: flops / (ms / 1e3) / 1e9,
      weightGBs: bytes / (ms / 1e3) / 1e9,
      floorMs,
      ratio: ms / floorMs,
      bound: memMs >= computeMs ? 'memory' : 'compute',
      expertsHit,
    });
    onStep(`${shape.name} ${dtype} T=${T}: ${ms.toFixed(2)} ms, ${(ms / floorMs).toFixed(3)}x floor`);
  }
  layer.dispose();
  return rows;
}

export function layerTable(rows: LayerRow[], roof: Roofline): string {
  const lines = [
    `Roofline (measured in this run, ${roof.threads} threads): stream ${roof.streamGBs.toFixed(1)} GB/s, ` +
      `dense ${roof.gemmSize}³ GEMM fp32 ${roof.gemmGflops.fp32.toFixed(0)} GFLOP/s, bf16 ${roof.gemmGflops.bf16.toFixed(0)} GFLOP/s`,
    '',
    '| Workload | dtype | ms (median) | GFLOP/s | weight GB/s | floor ms | bound | ratio to floor |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.workload} | ${r.dtype} | ${r.ms.toFixed(2)} | ${r.gflops.toFixed(1)} | ${r.weightGBs.toFixed(1)} | ${r.floorMs.toFixed(2)} | ${r.bound} | ${r.ratio.toFixed(3)} |`,
    );
  }
  return lines.join('\n');
}
