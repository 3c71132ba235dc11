/**
 * `moe-router bench`: runs the bench suite (routing, layer against the in-run roofline, fidelity) with a
 * progress bar on a TTY, then writes a JSON file and a Markdown table.
 */
import * as path from 'node:path';
import { BENCH_NAMES, progressPrinter, runBenchSuite, type BenchName } from '../bench/suite';
import { intOption, parseOptions, UsageError } from './args';

export const BENCH_USAGE = `moe-router bench [--benches route,layer,fidelity] [--models olmoe,mixtral] [--dtypes fp32,bf16]
                 [--threads N] [--tokens T] [--out DIR]

Runs the benches (default: route,layer,fidelity on OLMoE) and writes bench-<time>.json and .md to DIR
(default ./bench-out). The Mixtral layer needs about 7 GB of memory in fp32 (weights and a 1 GiB stream buffer).`;

export async function benchCommand(argv: string[]): Promise<void> {
  const v = parseOptions(argv, {
    benches: { type: 'string' },
    models: { type: 'string' },
    dtypes: { type: 'string' },
    threads: { type: 'string' },
    tokens: { type: 'string' },
    out: { type: 'string' },
  });
  if (v.help) {
    console.log(BENCH_USAGE);
    return;
  }
  const benches = String(v.benches ?? BENCH_NAMES.join(',')).split(',') as BenchName[];
  for (const b of benches)
    if (!BENCH_NAMES.includes(b))
      throw new UsageError(`--benches: unknown ${JSON.stringify(b)}; expected ${BENCH_NAMES.join(', ')}`);
  const dtypes = String(v.dtypes ?? 'fp32,bf16').split(',');
  for (const d of dtypes)
    if (d !== 'fp32' && d !== 'bf16')
      throw new UsageError(`--dtypes: expected fp32 and/or bf16, got ${JSON.stringify(d)}`);
  const models = String(v.models ?? 'olmoe')
    .toLowerCase()
    .split(',');
  for (const m of models)
    if (m !== 'olmoe' && m !== 'mixtral')
      throw new UsageError(`--models: expected olmoe and/or mixtral, got ${JSON.stringify(m)}`);
  const result = runBenchSuite({
    benches,
    models,
    dtypes: dtypes as ('fp32' | 'bf16')[],
    threads: intOption(v, 'threads', undefined, 1),
    fidelityTokens: intOption(v, 'tokens', 128, 1),
    outDir: path.resolve(String(v.out ?? 'bench-out')),
    onProgress: progressPrinter(),
  });
  console.log(result.markdown);
  console.error(`wrote ${result.jsonPath} and ${result.markdownPath}`);
}
