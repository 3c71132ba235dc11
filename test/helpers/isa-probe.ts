/**
 * Child process of test/isa.test.ts: routes and runs a small fp32, bf16 and fp8 layer on seeded data under whatever
 * MOE_ISA the parent set, for each case `T:k` (top-k routing of T tokens), and prints the results as JSON.
 */
import { backendInfo, MoELayer, Router } from '../../lib';
import { randn } from './random';

// argv: seed E d f cases, cases as "T:k,T:k" (test/isa.test.ts passes them)
const [seed, E, d, f] = process.argv.slice(2, 6).map(Number);
const cases = process.argv[6].split(',').map((c) => c.split(':').map(Number) as [number, number]);
const gate = randn(E * d, seed, 0.3);
const experts = Array.from({ length: E }, (_, e) => ({
  w1: randn(f * d, seed + 10 + 3 * e, 0.2),
  w3: randn(f * d, seed + 11 + 3 * e, 0.2),
  w2: randn(d * f, seed + 12 + 3 * e, 0.2),
}));
const out = {
  isa: backendInfo().isa,
  fp8Bf16Rows: backendInfo().fp8Bf16Rows,
  cases: cases.map(([T, k], i) => {
    const x = randn(T * d, seed + 99 + i);
    const result: Record<string, unknown> = { T, k };
    for (const dtype of ['fp32', 'bf16', 'fp8'] as const) {
      const router = new Router({
        numExperts: E,
        hiddenSize: d,
        gateWeight: gate,
        selection: { kind: 'topk', k },
        normalize: true,
      });
      const layer = new MoELayer({ router, experts, dtype });
      const r = layer.forward(x);
      result[dtype] = {
        output: Array.from(r.output),
        indices: Array.from(r.routing.indices),
        weights: Array.from(r.routing.weights),
      };
    }
    return result;
  }),
};
console.log(JSON.stringify(out));
