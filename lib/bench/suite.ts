/**
 * The bench suite behind `moe-router bench` and the bench/*.ts scripts: runs the chosen benches, reports progress
 * per step, and writes one JSON file and one Markdown file with every table (and the fidelity SVG).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../native';
import { runFidelity, fidelitySvg, fidelityTable, type FidelityRow } from './fidelity';
import { applyRoofline, benchShape, bestRoofline, layerTable, SHAPES, type LayerRow } from './layer';
import { AnchorSampler, measureRoofline, type AnchorSample, type Roofline } from './roofline';
import { benchRoute, routeTable, type RouteRow } from './route';

export type BenchName = 'route' | 'layer' | 'fidelity';
export const BENCH_NAMES: BenchName[] = ['route', 'layer', 'fidelity'];

export interface SuiteOptions {
  benches: BenchName[];
  /** Layer shapes by name: 'olmoe', 'mixtral'. */
  models: string[];
  dtypes: ('fp32' | 'bf16')[];
  threads?: number;
  /** Tokens of the fidelity bench. */
  fidelityTokens?: number;
  outDir: string;
  onProgress?: (done: number, total: number, label: string) => void;
}

export interface SuiteResult {
  date: string;
  backend: ReturnType<ReturnType<typeof native>['backendInfo']>;
  roofline?: Roofline;
  /** Every anchor sample of the layer bench, by shape and dtype, in round order. */
  anchorSamples?: { shape: string; dtype: 'fp32' | 'bf16'; samples: AnchorSample[] }[];
  route?: { rows: RouteRow[]; overheadMicros: number };
  layer?: LayerRow[];
  fidelity?: { model: string; tokens: number; rows: FidelityRow[] }[];
  markdown: string;
  jsonPath: string;
  markdownPath: string;
}

function stepCount(o: SuiteOptions, shapes: typeof SHAPES): number {
  let n = 0;
  if (o.benches.includes('route')) n += 12;
  if (o.benches.includes('layer')) n += 1 + shapes.reduce((a, s) => a + s.tokens.length * o.dtypes.length, 0);
  if (o.benches.includes('fidelity')) n += 13 * shapes.length;
  return n;
}

export function runBenchSuite(o: SuiteOptions): SuiteResult {
  const threads = o.threads ?? native().backendInfo().threads;
  const shapes = SHAPES.filter((s) => o.models.includes(s.name.toLowerCase()));
  const total = stepCount(o, shapes);
  let done = 0;
  const step = (label: string) => o.onProgress?.(++done, total, label);
  const stamp = new Date().toISOString();
  const result: Omit<SuiteResult, 'markdown' | 'jsonPath' | 'markdownPath'> = {
    date: stamp,
    backend: native().backendInfo(),
  };
  const sections: string[] = [`# Bench results ${stamp}`, '', `Backend: ${JSON.stringify(result.backend)}`, ''];
  fs.mkdirSync(o.outDir, { recursive: true });
  const base = path.join(o.outDir, `bench-${stamp.replace(/[:.]/g, '-')}`);

  if (o.benches.includes('route')) {
    result.route = benchRoute(2048, step);
    sections.push('## Routing (d = 2048)', '', routeTable(result.route), '');
  }
  if (o.benches.includes('layer')) {
    let roof = measureRoofline(threads);
    step('roofline');
    const sampler = new AnchorSampler(threads, roof.gemmSize);
    const measured = [];
    result.anchorSamples = [];
    for (const shape of shapes) {
      for (const dtype of o.dtypes) {
        const run = benchShape(shape, dtype, sampler, step);
        measured.push(...run.measured);
        result.anchorSamples.push({ shape: shape.name, dtype, samples: run.anchors });
        for (const a of run.anchors)
          roof = bestRoofline(roof, {
            ...roof,
            streamGBs: a.streamGBs,
            gemmGflops: { ...roof.gemmGflops, [dtype]: a.gemmGflops },
          });
      }
    }
    result.roofline = roof;
    result.layer = measured.map((m) => applyRoofline(m, roof));
    sections.push('## Layer', '', layerTable(result.layer, result.roofline), '');
  }
  if (o.benches.includes('fidelity')) {
    result.fidelity = [];
    const tokens = o.fidelityTokens ?? 128;
    for (const shape of shapes) {
      const rows = runFidelity(shape, tokens, threads, step);
      result.fidelity.push({ model: shape.name, tokens, rows });
      const svg = `${base}-fidelity-${shape.name.toLowerCase()}.svg`;
      fs.writeFileSync(svg, fidelitySvg(`${shape.name}: dynamic routing against static top-${shape.k}`, rows));
      sections.push('## Fidelity', '', fidelityTable(shape, tokens, rows), '', `Plot: ${path.basename(svg)}`, '');
    }
  }
  const markdown = sections.join('\n');
  const jsonPath = `${base}.json`;
  const markdownPath = `${base}.md`;
  fs.writeFileSync(jsonPath, JSON.stringify(result, null, 2));
  fs.writeFileSync(markdownPath, markdown + '\n');
  return { ...result, markdown, jsonPath, markdownPath };
}

/** A one-line progress bar on a TTY, plain lines otherwise. */
export function progressPrinter(stream: NodeJS.WriteStream = process.stderr) {
  return (done: number, total: number, label: string) => {
    if (stream.isTTY) {
      const width = 30;
      const filled = Math.round((width * done) / Math.max(total, 1));
      stream.write(
        `\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${label}`.padEnd(110).slice(0, 110),
      );
      if (done >= total) stream.write('\n');
    } else {
      stream.write(`[${done}/${total}] ${label}\n`);
    }
  };
}
