/**
 * GPU benchmark, run by bench/gpu/check.sh after the correctness tests: the CUDA layer on the Mixtral
 * (d=4096, f=14336, E=8, k=2) and OLMoE (d=2048, f=1024, E=64, k=8) shapes, with random weights generated on the
 * device, against anchors measured in the same call: PyTorch's dense bf16 matmul on the same GEMM shapes and a
 * Hugging Face Mixtral block (bench/gpu/torch_anchors.py, JSON path as argv[2]), and the device copy bandwidth
 * (measured here through the plugin). All times are medians of CUDA-event timings; forwards replay one CUDA
 * graph. Writes the rows as JSON to $OUT/gpu-bench.json when OUT is set, and prints a table last.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { cudaStatus, Router } from '../../lib';
import { native } from '../../lib/native';
import { randn } from '../../test/helpers/random';

interface Anchors {
  device: string;
  copy: { gbps: number };
  dense: Record<string, { tflops: number | null }>;
  hfMixtralBlock: { ms: number; kind: string; tokens: number };
}

const status = cudaStatus();
if (!status.available) {
  console.error(`bench/gpu: no usable CUDA backend: ${status.reason}`);
  process.exit(2);
}
const anchors: Anchors | null = process.argv[2] ? JSON.parse(readFileSync(process.argv[2], 'utf8')) : null;
const addon = native();
const copyBytes = 2 ** 31;
const copyGBps = (2 * copyBytes) / addon.cudaBenchCopy(copyBytes, 20) / 1e9;

// MOE_BENCH_ONLY=shape:T (e.g. olmoe:1) runs one row with few iterations, for profilers (check.sh's ncu step);
// MOE_BENCH_ROWS=shape:T,shape:T,... runs those rows only, with the usual iterations (check.sh's A/B step);
// MOE_BENCH_ITERATIONS sets the iterations of every row (default: 20 for T >= 1024, else 100; 3 with ONLY).
const only = process.env.MOE_BENCH_ONLY;
const rowList = (only ?? process.env.MOE_BENCH_ROWS ?? '')
  .split(',')
  .map((r) => r.trim())
  .filter(Boolean);
const iterationsEnv = Number(process.env.MOE_BENCH_ITERATIONS ?? 0);
const shapes = [
  { name: 'mixtral', E: 8, d: 4096, f: 14336, k: 2, tokens: [1, 4, 8, 32, 64, 4096] },
  { name: 'olmoe', E: 64, d: 2048, f: 1024, k: 8, tokens: [1, 4, 8, 32, 64, 4096] },
]
  .map((s) =>
    rowList.length
      ? { ...s, tokens: rowList.filter((r) => r.split(':')[0] === s.name).map((r) => Number(r.split(':')[1])) }
      : s,
  )
  .filter((s) => s.tokens.length > 0);
for (const s of shapes)
  for (const T of s.tokens)
    if (!Number.isInteger(T) || T < 1)
      throw new Error(`MOE_BENCH_ROWS / MOE_BENCH_ONLY: bad token count in ${s.name}:${T}`);

interface Row {
  shape: string;
  T: number;
  forwardMs: number;
  routeAlignUs: number;
  routeAlignFromXUs: number;
  /** A graph of one empty kernel, timed like route + align: their floor on this machine. */
  emptyGraphUs: number;
  /** The gating kernel alone and the align kernel alone (T <= 16 fuses them into one launch). */
  gatingUs: number;
  alignUs: number;
  /** Route + align from logits, and the empty graph, as the mean of 200 replays issued back to back. */
  routeAlignStreamUs: number;
  emptyGraphStreamUs: number;
  expertMs: number;
  expertTflops: number;
  /** TFLOP/s with each tile forced: 32x128, 128x128, 128x256, 128x128x64, 32x64, 32x64x64, wgmma. */
  tileTflops: number[];
  /** Decode rows (T <= 8): each forced tile's weight stream against the copy bandwidth, same order. */
  tileVsCopy: number[];
  weightGBps: number;
  vsDense?: number;
  vsCopy?: number;
  vsHf?: number;
}
const rows: Row[] = [];
for (const s of shapes) {
  const router = new Router({
    numExperts: s.E,
    hiddenSize: s.d,
    gateWeight: randn(s.E * s.d, 7, 0.02),
    selection: { kind: 'topk', k: s.k },
    normalize: true,
  });
  const layer = new addon.NativeCudaLayer(router.handle, s.k, s.f);
  layer.randomize(11, 0.02);
  for (const T of s.tokens) {
    const r = layer.bench(T, iterationsEnv > 0 ? iterationsEnv : only ? 3 : T >= 1024 ? 20 : 100, true);
    const row: Row = {
      shape: s.name,
      T,
      forwardMs: r.forwardMs,
      routeAlignUs: r.routeAlignMs * 1e3,
      routeAlignFromXUs: r.routeAlignFromXMs * 1e3,
      emptyGraphUs: r.emptyGraphMs * 1e3,
      gatingUs: r.gatingMs * 1e3,
      alignUs: r.alignMs * 1e3,
      routeAlignStreamUs: r.routeAlignStreamMs * 1e3,
      emptyGraphStreamUs: r.emptyGraphStreamMs * 1e3,
      expertMs: r.expertMs,
      expertTflops: r.expertFlops / r.expertMs / 1e9,
      tileTflops: r.expertMsByTile.map((ms) => (ms > 0 ? r.expertFlops / ms / 1e9 : 0)),
      tileVsCopy: r.expertMsByTile.map((ms) => (ms > 0 && T <= 8 ? r.expertBytes / ms / 1e6 / copyGBps : 0)),
      weightGBps: r.expertBytes / r.expertMs / 1e6,
    };
    const dense = anchors?.dense[s.name]?.tflops;
    if (T === 4096 && dense) row.vsDense = row.expertTflops / dense;
    if (T <= 8) row.vsCopy = row.weightGBps / copyGBps;
    if (s.name === 'mixtral' && anchors && T === anchors.hfMixtralBlock.tokens)
      row.vsHf = anchors.hfMixtralBlock.ms / r.forwardMs;
    rows.push(row);
    console.log(JSON.stringify(row));
  }
  layer.dispose();
}

const out = { device: status.device, copyGBps, anchors, rows };
if (process.env.OUT) writeFileSync(path.join(process.env.OUT, 'gpu-bench.json'), JSON.stringify(out, null, 2));

const f = (v: number | undefined, digits = 2) => (v === undefined ? '' : v.toFixed(digits));
console.log(
  `\nGPU ${status.device!.name}; copy ${copyGBps.toFixed(0)} GB/s (plugin), ${f(anchors?.copy.gbps, 0)} GB/s (torch)`,
);
if (anchors) {
  const dn = anchors.dense;
  console.log(
    `torch dense bf16: mixtral-shape ${f(dn.mixtral?.tflops ?? undefined, 0)} TFLOP/s, olmoe-shape ${f(dn.olmoe?.tflops ?? undefined, 0)}, ` +
      `8192^3 ${f(dn.square8192?.tflops ?? undefined, 0)}; HF block T=${anchors.hfMixtralBlock.tokens} ${f(anchors.hfMixtralBlock.ms, 3)} ms (${anchors.hfMixtralBlock.kind})`,
  );
}
console.log(
  '| shape | T | forward ms | route+align µs (logits / x / gating alone / align alone / empty graph) | back to back µs (route+align / empty) | experts ms | TFLOP/s | by tile 32x128/128/256/128x64/32x64/32x64x64/wgmma | weights GB/s | vs dense | vs copy | by tile vs copy | vs HF |',
);
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
const tiles = (v: number[], digits: number) =>
  v.some((x) => x > 0) ? v.map((x) => x.toFixed(digits)).join(' / ') : '';
for (const r of rows) {
  console.log(
    `| ${r.shape} | ${r.T} | ${f(r.forwardMs, 3)} | ${f(r.routeAlignUs, 1)} / ${f(r.routeAlignFromXUs, 1)} / ${f(r.gatingUs, 1)} / ${f(r.alignUs, 1)} / ${f(r.emptyGraphUs, 1)} | ${f(r.routeAlignStreamUs, 1)} / ${f(r.emptyGraphStreamUs, 1)} | ${f(r.expertMs, 3)} | ` +
      `${f(r.expertTflops, 0)} | ${r.T > 8 ? tiles(r.tileTflops, 0) : ''} | ${f(r.weightGBps, 0)} | ${f(r.vsDense)} | ${f(r.vsCopy)} | ` +
      `${tiles(r.tileVsCopy, 2)} | ${f(r.vsHf, 1)}${r.vsHf ? '×' : ''} |`,
  );
}
