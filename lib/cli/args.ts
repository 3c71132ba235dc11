/**
 * Shared CLI plumbing: option parsing with node:util, the `--selection` grammar, and the one-line error exit
 * every subcommand uses.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { DynamicMoEError } from '../errors';
import type { EstimatorName } from '../estimators';
import type { WeightDType } from '../layer';
import type { Selection } from '../types';

/** A usage mistake: printed as one line, exit code 2. */
export class UsageError extends Error {}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** Parses argv for one subcommand; unknown options and stray positionals are usage errors. */
export function parseOptions(argv: string[], options: OptionSpec): Record<string, string | boolean | undefined> {
  try {
    const { values } = parseArgs({
      args: argv,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals: false,
    });
    return values as Record<string, string | boolean | undefined>;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function requireOption(values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (typeof v !== 'string' || v.length === 0) throw new UsageError(`--${name} is required`);
  return v;
}

export function intOption(
  values: Record<string, unknown>,
  name: string,
  fallback?: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number | undefined {
  const v = values[name];
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new UsageError(`--${name}: expected an integer ${range}, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** A TCP port (0: a free one), checked before anything slow starts. */
export function portOption(values: Record<string, unknown>, name: string, fallback: number): number {
  return intOption(values, name, fallback, 0, 65535)!;
}

/** --dtype: fp32 (default), bf16 or fp8; anything else is a usage error. */
export function dtypeOption(values: Record<string, unknown>): WeightDType {
  const v = values.dtype ?? 'fp32';
  if (v !== 'fp32' && v !== 'bf16' && v !== 'fp8')
    throw new UsageError(`--dtype: expected fp32, bf16 or fp8, got ${JSON.stringify(v)}`);
  return v;
}

// The estimators the commands can feed: they pass hidden states and router logits, never attention or LM logits.
const ESTIMATORS: EstimatorName[] = ['router_entropy', 'gradient_norm'];

/** topk:K | topp:P | threshold:TAU | dynamic:MIN-MAX[:ESTIMATOR] */
export function parseSelection(text: string): Selection {
  const [kind, value, extra, ...rest] = text.split(':');
  if (rest.length > 0 || (extra !== undefined && kind !== 'dynamic'))
    throw new UsageError(`--selection ${text}: too many ':' parts`);
  const number = (s: string | undefined, what: string) => {
    const n = Number(s);
    if (s === undefined || s === '' || !Number.isFinite(n))
      throw new UsageError(`--selection ${text}: ${what} is not a number`);
    return n;
  };
  switch (kind) {
    case 'topk':
      return { kind: 'topk', k: number(value, 'K') };
    case 'topp':
      return { kind: 'topp', p: number(value, 'P') };
    case 'threshold':
      return { kind: 'threshold', tau: number(value, 'TAU') };
    case 'dynamic': {
      const m = /^(\d+)-(\d+)$/.exec(value ?? '');
      if (!m)
        throw new UsageError(
          `--selection ${text}: expected dynamic:MIN-MAX[:ESTIMATOR], e.g. dynamic:1-4:router_entropy`,
        );
      const estimator = (extra ?? 'router_entropy') as EstimatorName;
      if (!ESTIMATORS.includes(estimator)) {
        throw new UsageError(
          `--selection ${text}: estimator must be one of ${ESTIMATORS.join(', ')} (the commands have no attention or LM logits to feed the others)`,
        );
      }
      const [minK, maxK] = [Number(m[1]), Number(m[2])];
      if (minK < 1 || minK > maxK)
        throw new UsageError(`--selection ${text}: expected 1 <= MIN <= MAX, got MIN=${minK} and MAX=${maxK}`);
      return { kind: 'dynamic', minK, maxK, estimator };
    }
    default:
      throw new UsageError(
        `--selection ${text}: expected topk:K, topp:P, threshold:TAU or dynamic:MIN-MAX[:ESTIMATOR]`,
      );
  }
}

/** Runs a subcommand, turning any failure into one line on stderr and a non-zero exit code. */
export async function runCommand(name: string, body: () => Promise<void> | void): Promise<number> {
  try {
    await body();
    return 0;
  } catch (err) {
    const e = err as Error;
    const kind = err instanceof UsageError ? 'usage' : err instanceof DynamicMoEError ? e.name : 'error';
    process.stderr.write(`moe-router ${name}: ${kind}: ${e.message.split('\n')[0]}\n`);
    return err instanceof UsageError ? 2 : 1;
  }
}
