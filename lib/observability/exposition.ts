/**
 * The Prometheus text of a registry's families, written synchronously in one pass. prom-client's
 * `Registry.metrics()` serialises each family in an async call of its own, a fixed ~35 µs per family on the cold
 * caches a forward leaves behind. This writer produces the same text, byte for byte (test/observability-metrics
 * .test.ts compares the two): the families that keep their values in a {@link SeriesStore} (SeriesFamily,
 * BucketedHistogram) are rendered natively from a cached {@link TextPlan}, one call for each run of families of
 * one store (a collector's whole registry is one run); prom-client Counters and Gauges are formatted here; any
 * other metric, and any registry with default labels or the OpenMetrics content type, is left to prom-client.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import { BucketedHistogram } from './bucketed-histogram';
import { SeriesFamily } from './series-family';
import type { SeriesStore } from './series-store';
import { escapeString, familyHeader, formatLabels, valueString } from './text-format';
import { TextPlan, type TextSink } from './text-plan';

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

/** A prom-client Counter's or Gauge's text, or undefined when prom-client must write it (see writeFamily). */
function promClientText(metric: unknown, collected?: () => void): string | undefined {
  const collect = (metric as { collect?: unknown } | null)?.collect;
  if (collect !== undefined && collect !== collected) return undefined;
  const isCounter = metric instanceof Counter;
  if (!isCounter && !(metric instanceof Gauge)) return undefined;
  const m = metric as unknown as { name: string; help: string; hashMap?: Record<string, Sample> };
  if (!m.hashMap || typeof m.hashMap !== 'object') return undefined; // another prom-client layout: not ours to guess
  return promClientFamily(m.name, m.help, isCounter ? 'counter' : 'gauge', Object.values(m.hashMap));
}

type StoreFamily = SeriesFamily | BucketedHistogram;
const isStoreFamily = (metric: unknown): metric is StoreFamily =>
  metric instanceof SeriesFamily || metric instanceof BucketedHistogram;

/**
 * What a registry's text is made of: runs of store families (one plan each, separators included) and the other
 * metrics in between, with `suffix` (fixed text) at the end. Valid while the registry holds the same metrics and
 * no store's version moved.
 */
interface RegistryPlan {
  metrics: readonly unknown[];
  suffix: string;
  stores: { store: SeriesStore; version: number }[];
  parts: ({ plan: TextPlan; store: SeriesStore } | { metric: unknown; separator: string } | { text: string })[];
}

const plans = new WeakMap<Registry, RegistryPlan>();

function planFor(registry: Registry, metrics: readonly unknown[], suffix: string): RegistryPlan {
  const cached = plans.get(registry);
  if (
    cached &&
    cached.suffix === suffix &&
    cached.metrics.length === metrics.length &&
    cached.metrics.every((m, i) => m === metrics[i]) &&
    cached.stores.every((s) => s.store.version === s.version)
  )
    return cached;
  const parts: RegistryPlan['parts'] = [];
  const stores = new Map<SeriesStore, number>();
  let run: { store: SeriesStore; writers: ((sink: TextSink) => void)[] } | undefined;
  const endRun = () => {
    if (!run) return;
    const writers = run.writers;
    parts.push({ plan: TextPlan.build((sink) => writers.forEach((w) => w(sink))), store: run.store });
    run = undefined;
  };
  metrics.forEach((metric, i) => {
    const separator = i > 0 ? '\n\n' : '';
    if (!isStoreFamily(metric)) {
      endRun();
      parts.push({ metric, separator });
      return;
    }
    if (run?.store !== metric.store) {
      endRun();
      run = { store: metric.store, writers: [] };
    }
    stores.set(metric.store, metric.store.version);
    run.writers.push((sink) => {
      sink.text(separator);
      metric.writeText(sink);
    });
  });
  const ending = '\n' + suffix; // (an empty registry's text is '\n', as prom-client's)
  if (run) run.writers.push((sink) => sink.text(ending));
  endRun();
  if (!(parts[parts.length - 1] && 'plan' in parts[parts.length - 1])) parts.push({ text: ending });
  const plan: RegistryPlan = {
    metrics: [...metrics],
    suffix,
    stores: [...stores].map(([store, version]) => ({ store, version })),
    parts,
  };
  plans.set(registry, plan);
  return plan;
}

/** Whether registryText writes this registry itself (else prom-client's `metrics()` does). */
function writable(registry: Registry): boolean {
  const defaultLabels = (registry as unknown as { _defaultLabels?: object })._defaultLabels;
  return (
    registry.contentType === Registry.PROMETHEUS_CONTENT_TYPE && !(defaultLabels && Object.keys(defaultLabels).length)
  );
}

/** Runs the collect hooks of the store families that `collected` (already run by the caller) does not cover. */
function collectStoreFamilies(metrics: readonly unknown[], collected?: () => void): void {
  for (const metric of metrics) {
    if (isStoreFamily(metric) && metric.collectHook !== undefined && metric.collectHook !== collected)
      metric.collectHook();
  }
}

/**
 * The registry's text exposition (as `registry.metrics()`) followed by `suffix`. `collected` is a collect
 * callback the caller has just run (families carrying it are read as they are).
 */
export async function registryText(registry: Registry, collected?: () => void, suffix = ''): Promise<string> {
  if (!writable(registry)) {
    const text = await registry.metrics();
    return suffix ? (text.length === 0 || text.endsWith('\n') ? text + suffix : `${text}\n${suffix}`) : text;
  }
  const metrics = registry.getMetricsAsArray();
  collectStoreFamilies(metrics, collected);
  const { parts } = planFor(registry, metrics, suffix);
  // every plan is rendered before anything is awaited, so the store's values are read at one instant
  const out = parts.map((part): string | undefined => {
    if ('plan' in part) return part.plan.render(part.store.values);
    if ('text' in part) return part.text;
    const text = promClientText(part.metric, collected);
    return text === undefined ? undefined : part.separator + text;
  });
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    if (out[i] === undefined && 'metric' in part)
      out[i] = part.separator + (await registry.getSingleMetricAsString((part.metric as { name: string }).name));
  }
  return out.length === 1 ? (out[0] as string) : out.join('');
}

/**
 * {@link registryText} written into `out` as UTF-8, when the registry is one run of store families (a
 * collector's own registry): the text's length in bytes, or minus the bytes `out` may need (nothing written).
 * Undefined when the registry holds other metrics (use registryText).
 */
export function registryTextInto(
  registry: Registry,
  out: Uint8Array,
  collected?: () => void,
  suffix = '',
): number | undefined {
  if (!writable(registry)) return undefined;
  const metrics = registry.getMetricsAsArray();
  if (!metrics.every(isStoreFamily)) return undefined;
  collectStoreFamilies(metrics, collected);
  const { parts } = planFor(registry, metrics, suffix);
  const only = parts[0];
  if (parts.length !== 1 || !('plan' in only)) return undefined;
  return only.plan.renderInto(only.store.values, out);
}
