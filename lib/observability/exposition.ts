/**
 * The Prometheus text of a registry's families, written synchronously in one pass. prom-client's
 * `Registry.metrics()` serialises each family in an async call of its own, a fixed ~35 µs per family on the cold
 * caches a forward leaves behind — most of a scrape. This writer produces the same text, byte for byte
 * (test/observability-metrics.test.ts compares the two), for prom-client Counters and Gauges and for
 * BucketedHistograms; any other metric is left to prom-client.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { BucketedHistogram } from './bucketed-histogram';

interface Sample {
  labels?: Record<string, string | number>;
  sharedLabels?: Record<string, string | number>;
  value: number;
  metricName?: string;
}

// As prom-client's registry: names and help escape backslash and newline; label values also the double quote.
const escapeString = (s: string) => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
const escapeLabelValue = (v: string | number) => (typeof v === 'string' ? escapeString(v).replace(/"/g, '\\"') : v);

function valueString(v: number): string {
  if (Number.isNaN(v)) return 'Nan'; // sic: prom-client's spelling
  if (!Number.isFinite(v)) return v < 0 ? '-Inf' : '+Inf';
  return `${v}`;
}

function formatLabels(labels: Record<string, string | number>, exclude?: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const name of Object.keys(labels)) {
    if (!exclude || !Object.prototype.hasOwnProperty.call(exclude, name))
      out.push(`${name}="${escapeLabelValue(labels[name])}"`);
  }
  return out;
}

const sharedCache = new WeakMap<object, string>();
function flattenShared(labels: Record<string, string | number>): string {
  let text = sharedCache.get(labels);
  if (text === undefined) {
    text = formatLabels(labels).join(',');
    sharedCache.set(labels, text);
  }
  return text;
}

function family(name: string, help: string, type: string, values: readonly Sample[]): string {
  const escaped = escapeString(name);
  const lines = [`# HELP ${escaped} ${escapeString(help)}`, `# TYPE ${escaped} ${type}`];
  for (const v of values) {
    const shared = v.sharedLabels ?? {};
    const parts = formatLabels(v.labels ?? {}, shared);
    const flat = flattenShared(shared);
    if (flat) parts.push(flat);
    lines.push(`${v.metricName ?? escaped}${parts.length ? `{${parts.join(',')}}` : ''} ${valueString(v.value)}`);
  }
  return lines.join('\n');
}

/**
 * One family's text, or undefined when `metric` is not a kind this writer knows, or has a `collect` callback other
 * than `collected` (the caller ran that one already): prom-client writes those, calling their callbacks.
 */
export function familyText(metric: unknown, collected?: () => void): string | undefined {
  const collect =
    metric instanceof BucketedHistogram ? metric.collectHook : (metric as { collect?: unknown } | null)?.collect;
  if (collect !== undefined && collect !== collected) return undefined;
  if (metric instanceof BucketedHistogram) {
    const data = metric.samples();
    return family(data.name, data.help, data.type, data.values);
  }
  const isCounter = metric instanceof Counter;
  if (!isCounter && !(metric instanceof Gauge)) return undefined;
  const m = metric as unknown as { name: string; help: string; hashMap?: Record<string, Sample> };
  if (!m.hashMap || typeof m.hashMap !== 'object') return undefined; // another prom-client layout: not ours to guess
  return family(m.name, m.help, isCounter ? 'counter' : 'gauge', Object.values(m.hashMap));
}

/**
 * The registry's text exposition (as `registry.metrics()`), writing the families it knows synchronously.
 * `collected` is a collect callback the caller has just run (so families carrying it are read as they are).
 */
export async function registryText(registry: Registry, collected?: () => void): Promise<string> {
  const parts: string[] = [];
  for (const metric of registry.getMetricsAsArray())
    parts.push(familyText(metric, collected) ?? (await registry.getSingleMetricAsString(metric.name)));
  return `${parts.join('\n\n')}\n`;
}
