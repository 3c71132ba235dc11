/**
 * Child process of test/isa.test.ts: routes and runs a small fp32, bf16 and fp8 layer on seeded data under whatever
 * MOE_ISA the parent set, for each case `T:k` (top-k routing of T tokens), and the same experts as gpt-oss's (clamped
 * SwiGLU and biases: GPT_OSS of isa-probe-config.ts), and prints the results as JSON.
 */
import { backendInfo, MoELayer, Router } from '../../lib';
import { GPT_OSS } from './isa-probe-config';
import { randn } from './random';

// argv: seed E d f cases [gptOssCases], cases as "T:k,T:k", gptOssCases the indices of those also run as gpt-oss's
// and as Llama 4's experts (fp32 and bf16), as "1,4" (test/isa.test.ts passes them)
const [seed, E, d, f] = process.argv.slice(2, 6).map(Number);
const cases = process.argv[6].split(',').map((c) => c.split(':').map(Number) as [number, number]);
const gptOssCases = new Set((process.argv[7] ?? '').split(',').filter(Boolean).map(Number));
const gate = randn(E * d, seed, 0.3);
const experts = Array.from({ length: E }, (_, e) => ({
  w1: randn(f * d, seed + 10 + 3 * e, 0.2),
  w3: randn(f * d, seed + 11 + 3 * e, 0.2),
  w2: randn(d * f, seed + 12 + 3 * e, 0.2),
}));
const biases = experts.map((_, e) => ({
  b1: randn(f, seed + 500 + 3 * e, GPT_OSS.biasScale),
  b3: randn(f, seed + 501 + 3 * e, GPT_OSS.biasScale),
  b2: randn(d, seed + 502 + 3 * e, GPT_OSS.biasScale),
}));
const out = {
  isa: backendInfo().isa,
  fp8Bf16Rows: backendInfo().fp8Bf16Rows,
  cases: cases.map(([T, k], i) => {
    const x = randn(T * d, seed + 99 + i);
    const result: Record<string, unknown> = { T, k };
    for (const [name, dtype, form] of [
      ['fp32', 'fp32', 'swiglu'],
      ['bf16', 'bf16', 'swiglu'],
      ['fp8', 'fp8', 'swiglu'],
      ['gptOss fp32', 'fp32', 'gptOss'],
      ['gptOss bf16', 'bf16', 'gptOss'],
      ['llama4 fp32', 'fp32', 'llama4'],
      ['llama4 bf16', 'bf16', 'llama4'],
    ] as const) {
      if (form !== 'swiglu' && !gptOssCases.has(i)) continue;
      // (Llama 4's router: sigmoid weights, not renormalised, on the experts' inputs)
      const router = new Router({
        numExperts: E,
        hiddenSize: d,
        gateWeight: gate,
        selection: { kind: 'topk', k },
        normalize: form !== 'llama4',
        scoring: form === 'llama4' ? 'sigmoid' : 'softmax',
      });
      const layer =
        form === 'gptOss'
          ? new MoELayer({
              router,
              experts: experts.map((w, e) => ({ ...w, ...biases[e] })),
              dtype,
              activation: { kind: 'gptOss', alpha: GPT_OSS.alpha, limit: GPT_OSS.limit },
            })
          : new MoELayer({ router, experts, dtype, weightInputs: form === 'llama4' });
      const r = layer.forward(x);
      result[name] = {
        output: Array.from(r.output),
        indices: Array.from(r.routing.indices),
        weights: Array.from(r.routing.weights),
      };
    }
    return result;
  }),
};
console.log(JSON.stringify(out));
