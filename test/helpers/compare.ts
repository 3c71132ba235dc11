/**
 * Comparisons of a native routing result with the float64 reference, under the tie rule and tolerances of the
 * spec: indices exactly, weights to 1e-5 relative. Tokens whose decision sits within `margin` of a boundary
 * (a fp32-vs-fp64 rounding could flip it) are counted and left out of the exact check.
 */
import * as assert from 'uvu/assert';
import type { RoutingResult } from '../../lib';
import type { ReferenceRouting } from '../../lib/reference/routing';

export interface CompareReport {
  checked: number;
  ambiguous: number;
}

export function compareRouting(
  got: RoutingResult,
  ref: ReferenceRouting,
  label: string,
  opts: { margin?: number; weightRelTol?: number } = {},
): CompareReport {
  const margin = opts.margin ?? 1e-5;
  const tol = opts.weightRelTol ?? 1e-5;
  const K = got.maxK;
  let ambiguous = 0;
  for (let t = 0; t < got.tokens; t++) {
    if (ref.margin[t] < margin) {
      ambiguous++;
      continue;
    }
    if (got.k[t] !== ref.k[t]) assert.unreachable(`${label}: token ${t} k=${got.k[t]}, reference ${ref.k[t]}`);
    for (let j = 0; j < K; j++) {
      const i = t * K + j;
      if (got.indices[i] !== ref.indices[i]) {
        assert.unreachable(
          `${label}: token ${t} slot ${j} expert ${got.indices[i]}, reference ${ref.indices[i]} ` +
            `(row ${Array.from(got.indices.slice(t * K, t * K + K))} vs ${Array.from(ref.indices.slice(t * K, t * K + K))})`,
        );
      }
      const w = ref.weights[i];
      // (written as "not within", so that a NaN on either side fails)
      if (!(Math.abs(got.weights[i] - w) <= tol * Math.abs(w) + 1e-9)) {
        assert.unreachable(`${label}: token ${t} slot ${j} weight ${got.weights[i]}, reference ${w}`);
      }
    }
  }
  return { checked: got.tokens - ambiguous, ambiguous };
}

export { relativeError } from '../../lib/bench/stats';
