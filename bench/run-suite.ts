/**
 * Command-line runner shared by bench/route.ts, bench/layer.ts and bench/fidelity.ts: parses --models, --dtypes,
 * --threads, --tokens and --out, runs lib/bench/suite.ts and prints the Markdown.
 */
import * as path from 'node:path';
import { progressPrinter, runBenchSuite, type BenchName } from '../lib/bench/suite';
import { benchArg } from '../lib/bench/args';

export function runFromCommandLine(benches: BenchName[], defaultModels = 'olmoe,mixtral'): void {
  const threads = process.argv.includes('--threads') ? Number(benchArg('threads', '0')) : undefined;
  const result = runBenchSuite({
    benches,
    models: benchArg('models', defaultModels).toLowerCase().split(','),
    dtypes: benchArg('dtypes', 'fp32,bf16').split(',') as ('fp32' | 'bf16')[],
    threads,
    fidelityTokens: Number(benchArg('tokens', '128')),
    outDir: benchArg('out', path.join(__dirname, 'out')),
    onProgress: progressPrinter(),
  });
  console.log(result.markdown);
  console.error(`wrote ${result.jsonPath} and ${result.markdownPath}`);
}
