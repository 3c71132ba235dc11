/**
 * bench/route: µs per `route()` from JS for T in {1, 32, 512, 4096} and E in {8, 64, 256} at d = 2048 (top-8, or
 * top-2 at E = 8), with the float64 TS reference timed in the same run for the ratio, and the per-call N-API
 * overhead (a route of 1 token over 4 experts at d = 16, all fixed cost).
 * Run it with `npx tsx bench/route.ts` or `moe-router bench route`.
 */
import { Router } from '../router';
import { native } from '../native';
import { referenceRoute } from '../reference/routing';
import { median } from './stats';

export interface RouteRow {
  tokens: number;
  experts: number;
  microseconds: number;
  referenceMicroseconds: number;
  speedup: number;
}

function timeMicros(fn: () => unknown, budgetMs: number, minReps: number, maxReps = 100000): number {
  fn();
  fn();
  const times: number[] = [];
  const start = Date.now();
  while (times.length < minReps || (Date.now() - start < budgetMs && times.length < maxReps)) {
    const t0 = process.hrtime.bigint();
    fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  return median(times);
}

export function benchRoute(
  d = 2048,
  onStep: (label: string) => void = () => {},
): { rows: RouteRow[]; overheadMicros: number } {
  const rows: RouteRow[] = [];
  for (const E of [8, 64, 256]) {
    const gate = new Float32Array(E * d);
    native().bench.fillNormal(gate, E, 0.02);
    const router = new Router({
      numExperts: E,
      hiddenSize: d,
      gateWeight: gate,
      selection: { kind: 'topk', k: E === 8 ? 2 : 8 },
      normalize: true,
    });
    for (const T of [1, 32, 512, 4096]) {
      const x = new Float32Array(T * d);
      native().bench.fillNormal(x, T, 1);
      const micros = timeMicros(() => router.route(x), 1000, 20);
      // The reference is O(T·E·d) in plain JS: one timed run is enough at the large sizes.
      const refMicros = timeMicros(() => referenceRoute({ ...router.config }, x, gate), 500, 1, T * E > 20000 ? 1 : 50);
      rows.push({
        tokens: T,
        experts: E,
        microseconds: micros,
        referenceMicroseconds: refMicros,
        speedup: refMicros / micros,
      });
      onStep(`route E=${E} T=${T}: ${micros.toFixed(1)} µs`);
    }
  }
  const tiny = new Router({
    numExperts: 4,
    hiddenSize: 16,
    gateWeight: new Float32Array(64).fill(0.01),
    selection: { kind: 'topk', k: 1 },
  });
  const x = new Float32Array(16).fill(0.5);
  const overheadMicros = timeMicros(() => tiny.route(x), 1000, 1000);
  return { rows, overheadMicros };
}

export function routeTable(r: { rows: RouteRow[]; overheadMicros: number }): string {
  const lines = ['| E | T | route() µs (median) | TS reference µs | speedup |', '|---|---|---|---|---|'];
  for (const row of r.rows) {
    lines.push(
      `| ${row.experts} | ${row.tokens} | ${row.microseconds.toFixed(1)} | ${row.referenceMicroseconds.toFixed(0)} | ${row.speedup.toFixed(0)}× |`,
    );
  }
  lines.push(
    '',
    `Per-call fixed cost (T=1, E=4, d=16, validation + N-API + outputs): ${r.overheadMicros.toFixed(2)} µs`,
  );
  return lines.join('\n');
}
