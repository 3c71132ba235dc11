/**
 * The Prometheus text of a registry's families, written synchronously in one pass. prom-client's
 * `Registry.metrics()` serialises each family in an async call of its own, a fixed ~35 µs per family on the cold
 * caches a forward leaves behind — most of a scrape. This writer produces the same text, byte for byte
 * (test/observability-metrics.test.ts compares the two), for the families that print themselves (SeriesFamily,
 * BucketedHistogram) and for prom-client Counters and Gauges; any other metric, and any registry with default
 * labels or the OpenMetrics content type, is left to prom-client.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import { BucketedHistogram } from './bucketed-histogram';
import { SeriesFamily } from './series-family';
import { escapeString, familyHeader, formatLabels, valueString } from './text-format';

interface Sample {
  labels?: Record<string, string | number>;
  value: number;
}

function promClientFamily(name: string, help: string, type: string, values: readonly Sample[]): string {
  const escaped = escapeString(name);
  const lines = [familyHeader(name, help, type)];
  for (const v of values) {
    const parts = formatLabels(v.labels ?? {});
    lines.push(`${escaped}${parts.length ? `{${parts.join(',')}}` : ''} ${valueString(v.value)}`);
  }
  return lines.join('\n');
}

/**
 * Appends one family's text to `out` and returns true, or returns false when `metric` is not a kind this writer
 * knows, or has a `collect` callback other than `collected` (the caller ran that one already): prom-client writes
 * those, calling their callbacks.
 */
function writeFamily(metric: unknown, out: string[], collected?: () => void): boolean {
  if (metric instanceof BucketedHistogram || metric instanceof SeriesFamily) {
    if (metric.collectHook !== undefined && metric.collectHook !== collected) return false;
    metric.writeText(out);
    return true;
  }
  const collect = (metric as { collect?: unknown } | null)?.collect;
  if (collect !== undefined && collect !== collected) return false;
  const isCounter = metric instanceof Counter;
  if (!isCounter && !(metric instanceof Gauge)) return false;
  const m = metric as unknown as { name: string; help: string; hashMap?: Record<string, Sample> };
  if (!m.hashMap || typeof m.hashMap !== 'object') return false; // another prom-client layout: not ours to guess
  out.push(promClientFamily(m.name, m.help, isCounter ? 'counter' : 'gauge', Object.values(m.hashMap)));
  return true;
}

/** One family's text, or undefined when {@link registryText} leaves it to prom-client. */
export function familyText(metric: unknown, collected?: () => void): string | undefined {
  const out: string[] = [];
  return writeFamily(metric, out, collected) ? out.join('') : undefined;
}

/**
 * The registry's text exposition (as `registry.metrics()`), writing the families it knows synchronously into one
 * list of pieces joined once. `collected` is a collect callback the caller has just run (so families carrying it
 * are read as they are).
 */
export async function registryText(registry: Registry, collected?: () => void): Promise<string> {
  const defaultLabels = (registry as unknown as { _defaultLabels?: object })._defaultLabels;
  if (registry.contentType !== Registry.PROMETHEUS_CONTENT_TYPE || (defaultLabels && Object.keys(defaultLabels).length))
    return registry.metrics();
  const out: string[] = [];
  let first = true;
  for (const metric of registry.getMetricsAsArray()) {
    if (!first) out.push('\n\n');
    first = false;
    if (!writeFamily(metric, out, collected)) out.push(await registry.getSingleMetricAsString(metric.name));
  }
  out.push('\n');
  return out.join('');
}
