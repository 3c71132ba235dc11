/**
 * bench/fidelity: what dynamic routing buys on a top-k model. One layer's packed weights are routed under the
 * model's static top-k and under a sweep of top-p (p = 0.3 … 0.95) and threshold (τ) rules; for each: mean k,
 * FLOPs saved against static top-k, relative output error ‖y − y_topk‖/‖y_topk‖, and time. Writes a Markdown
 * table and an SVG plot (error against FLOPs saved).
 * Run it with `npx tsx bench/fidelity.ts` or `moe-router bench fidelity`.
 *
 * Weights are seeded random normals; the gate's std (0.05) makes the router's distribution about as peaked as a
 * trained one's top-8 (random gates with tiny std route almost uniformly, which no real model does).
 */
import { MoELayer } from '../layer';
import { Router } from '../router';
import type { Selection } from '../types';
import { native } from '../native';
import { buildLayer, SHAPES, type LayerShape } from './layer';
import { median, relativeError } from './stats';

export interface FidelityRow {
  rule: string;
  meanK: number;
  flopsSavedPercent: number;
  relativeError: number;
  ms: number;
}

export function runFidelity(
  shape: LayerShape,
  T: number,
  threads: number,
  onStep: (label: string) => void = () => {},
): FidelityRow[] {
  const base = buildLayer(shape, 'fp32', threads);
  const gate = new Float32Array(shape.E * shape.d);
  native().bench.fillNormal(gate, 77, 0.05);
  const x = new Float32Array(T * shape.d);
  native().bench.fillNormal(x, 78, 1);
  const layerFor = (selection: Selection) =>
    base.withRouter(
      new Router({ numExperts: shape.E, hiddenSize: shape.d, gateWeight: gate, selection, normalize: true, threads }),
      { staticK: shape.k },
    );
  const time = (layer: MoELayer) => {
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = process.hrtime.bigint();
      layer.forward(x);
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    return median(times);
  };
  const staticLayer = layerFor({ kind: 'topk', k: shape.k });
  const reference = staticLayer.forward(x);
  const rows: FidelityRow[] = [];
  const uniform = 1 / shape.E;
  const rules: [string, Selection][] = [
    [`top-${shape.k} (static)`, { kind: 'topk', k: shape.k }],
    ...[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95].map((p): [string, Selection] => [
      `top-p ${p}`,
      { kind: 'topp', p, maxK: shape.E },
    ]),
    ...[0.5, 1, 2, 4].map((m): [string, Selection] => [
      `threshold ${(m * uniform).toPrecision(3)}`,
      { kind: 'threshold', tau: m * uniform, maxK: shape.E },
    ]),
  ];
  for (const [rule, selection] of rules) {
    const layer = layerFor(selection);
    const r = layer.forward(x);
    rows.push({
      rule,
      meanK: r.routing.stats.meanK,
      flopsSavedPercent: (100 * r.stats.flopsSaved) / r.stats.flopsStatic,
      relativeError: relativeError(r.output, reference.output),
      ms: time(layer),
    });
    onStep(`fidelity ${rule}: mean k ${r.routing.stats.meanK.toFixed(2)}`);
    layer.dispose();
  }
  staticLayer.dispose();
  base.dispose();
  return rows;
}

export function fidelityTable(shape: LayerShape, T: number, rows: FidelityRow[]): string {
  const lines = [
    `${shape.name} shape (d=${shape.d}, f=${shape.f}, E=${shape.E}, static top-${shape.k}), T=${T}, fp32`,
    '',
    '| rule | mean k | FLOPs saved vs static | relative output error | ms (median) |',
    '|---|---|---|---|---|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.rule} | ${r.meanK.toFixed(2)} | ${r.flopsSavedPercent.toFixed(1)}% | ${r.relativeError.toExponential(2)} | ${r.ms.toFixed(2)} |`,
    );
  }
  return lines.join('\n');
}

/** A dependency-free SVG scatter plot: relative error (y) against FLOPs saved (x), one labelled point per rule. */
export function fidelitySvg(title: string, rows: FidelityRow[]): string {
  const W = 640;
  const H = 400;
  const m = { l: 70, r: 20, t: 40, b: 50 };
  const xs = rows.map((r) => r.flopsSavedPercent);
  const ys = rows.map((r) => r.relativeError);
  const [x0, x1] = [Math.min(0, ...xs), Math.max(...xs, 1)];
  const [y0, y1] = [0, Math.max(...ys) * 1.1 || 1];
  const px = (v: number) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
  const py = (v: number) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${title}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="black"/>`,
    `<text x="${W / 2}" y="${H - 12}" text-anchor="middle">FLOPs saved vs static top-k (%)</text>`,
    `<text x="16" y="${H / 2}" text-anchor="middle" transform="rotate(-90 16 ${H / 2})">relative output error</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const xv = x0 + ((x1 - x0) * i) / 4;
    const yv = y0 + ((y1 - y0) * i) / 4;
    parts.push(`<text x="${px(xv)}" y="${H - m.b + 16}" text-anchor="middle">${xv.toFixed(0)}</text>`);
    parts.push(`<text x="${m.l - 6}" y="${py(yv) + 4}" text-anchor="end">${yv.toFixed(2)}</text>`);
  }
  for (const r of rows) {
    const color = r.rule.startsWith('top-p') ? '#1f77b4' : r.rule.startsWith('threshold') ? '#d62728' : '#2ca02c';
    parts.push(
      `<circle cx="${px(r.flopsSavedPercent).toFixed(1)}" cy="${py(r.relativeError).toFixed(1)}" r="4" fill="${color}"/>`,
    );
    parts.push(
      `<text x="${(px(r.flopsSavedPercent) + 6).toFixed(1)}" y="${(py(r.relativeError) - 6).toFixed(1)}">${r.rule}</text>`,
    );
  }
  parts.push('</svg>');
  return parts.join('\n');
}
