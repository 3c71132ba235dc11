/**
 * Command-line runner shared by bench/route.ts, bench/layer.ts and bench/fidelity.ts: parses --models, --dtypes,
 * --threads, --tokens and --out, runs lib/bench/suite.ts and prints the Markdown.
 */
import * as path from 'node:path';
import { progressPrinter, runBenchSuite, type BenchName } from '../lib/bench/suite';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

export function runFromCommandLine(benches: BenchName[], defaultModels = 'olmoe,mixtral'): void {
  const threads = process.argv.includes('--threads') ? Number(arg('threads', '0')) : undefined;
  const result = runBenchSuite({
    benches,
    models: arg('models', defaultModels).toLowerCase().split(','),
    dtypes: arg('dtypes', 'fp32,bf16').split(',') as ('fp32' | 'bf16')[],
    threads,
    fidelityTokens: Number(arg('tokens', '128')),
    outDir: arg('out', path.join(__dirname, 'out')),
    onProgress: progressPrinter(),
  });
  console.log(result.markdown);
  console.error(`wrote ${result.jsonPath} and ${result.markdownPath}`);
}
