/**
 * `MetricsCollector`: the guide's Prometheus metrics, fed from the native counters at scrape time.
 *
 * Routers and layers count natively and never call into JS per call. At scrape time the first family's
 * `collect()` drains every attached source once (one N-API call each) and adds the deltas to all families — the
 * pattern of prom-client's own process CPU counters. The other families' `collect()` hooks ask for the same drain,
 * which is skipped when it already ran in this turn of the event loop, so reading a single family is correct too.
 * The guide's manual `record*` methods write into the same families.
 *
 * A scrape touches little, because on cold caches everything it touches costs: every series value lives in one
 * Float64Array (series-store.ts), a drain's flat record is written into a reused array and added by one loop
 * (drain-plan.ts), and the text is rendered natively from the values and a cached plan of the fixed text
 * (text-plan.ts), into a reused buffer for `/metrics` ({@link MetricsCollector.metricsBuffer}).
 */
import { collectDefaultMetrics, Registry } from 'prom-client';
import { isDisposedError } from '../errors';
import { BucketedHistogram, type HistogramSeries } from './bucketed-histogram';
import {
  COMPLEXITY_BUCKETS,
  DURATION_BUCKETS_SECONDS,
  EXPERTS_PER_TOKEN_BUCKETS,
  METRIC_LABELS,
  MetricName,
  NATIVE_ERROR_TYPES,
  STAGES,
} from './metric-names';
import { registryText, registryTextInto } from './exposition';
import { SeriesStore } from './series-store';
import { SeriesFamily, type Series } from './series-family';
import { DrainPlan } from './drain-plan';
import {
  drainRecordOf,
  RecordAt,
  RecordHistogram,
  TelemetryRecord,
  type TelemetryDelta,
  type TelemetrySource,
} from './telemetry-types';

export interface MetricsCollectorOptions {
  /** Where the families are registered. Default: a new Registry of this collector's own (never the global one). */
  registry?: Registry;
  /**
   * Also expose prom-client's default process and Node.js metrics (unprefixed). Default true. On a registry of the
   * collector's own they live in a private registry whose text is refreshed at most every
   * `defaultMetricsIntervalMs` (they read /proc and walk the heap: most of a scrape's cost at 10 scrapes a second);
   * on a registry you pass they are registered there and collected at every scrape.
   */
  defaultMetrics?: boolean;
  /**
   * Default 10 000 ms (a refresh costs ~4 ms on the cold caches a forward leaves: 0.4% of the time at one a
   * second; Prometheus' usual 15 s scrape interval still gets fresh values every time); 0 collects them at every
   * scrape.
   */
  defaultMetricsIntervalMs?: number;
  /**
   * The families beyond the guide's ten: tokens per expert (`dynamic_moe_expert_tokens_total`, one series per
   * expert and layer) and per-stage durations (`dynamic_moe_stage_duration_seconds`). Default true (the guide's
   * `enable_detailed_metrics`); false keeps a scrape to the guide's families (and the default metrics).
   */
  enableDetailedMetrics?: boolean;
}

export interface ObserveOptions {
  /** The `layer_id` label of this source's load balance and per-expert token counts. */
  layerId: string | number;
  /**
   * The `model_name` label of this source's series. Default: the collector's. One collector (one registry, one
   * /metrics) can so serve the layers of several models.
   */
  modelName?: string;
  /** The `backend` label of its requests and durations. Default: the source's backend ('cpu' or 'cuda'). */
  backend?: string;
  /** The `estimator_type` label of its complexity scores. Default: the router's estimator name, else 'none'. */
  estimatorType?: string;
  /** The `layer_type` label of its FLOPs. Default 'moe'. */
  layerType?: string;
}

/** What a drain listener learns about the source a delta came from. */
export interface ObservedSourceInfo {
  readonly source: TelemetrySource;
  readonly modelName: string;
  readonly layerId: string;
  readonly backend: string;
  readonly estimatorType: string;
  readonly layerType: string;
}

/** Receives every delta the collector drains (spans included), right after it was added to the metrics. */
export type DrainListener = (delta: TelemetryDelta, source: ObservedSourceInfo) => void;

/**
 * @internal {@link DrainListener} reading the drained record in place (no decoding): the record is valid during
 * the call only. The package's own listeners (span batches, performance summaries) use it.
 */
export type DrainRecordListener = (record: TelemetryRecord, source: ObservedSourceInfo) => void;

interface Attached extends ObservedSourceInfo {
  memoryBytes: number;
  /** Bytes of its memory an earlier attached source of the same model already counts (shared packed weights). */
  sharedBytes: number;
  kind: TelemetryDelta['kind'] | undefined;
  /** The series this source's deltas go to, looked up once (lib/observability/series-family.ts). */
  series: {
    success: Series;
    error: Series;
    errorTypes: Series[];
    flopsComputed: Series;
    flopsSaved: Series;
    expertTokens: Series[];
    /** By RecordHistogram index; created with their first observation. */
    histograms: (HistogramSeries | undefined)[];
    /** Created with the first finite score. */
    loadBalance?: Series;
  };
  /** How its drain records are added (rebuilt when the collector's series change). */
  plan?: DrainPlan;
  /** The memory total its weights count in (looked up once its kind is known). */
  memory?: SourceMemory;
}

/** A memory series fed by attached sources: one model's expert_weights or router_weights. */
interface SourceMemory {
  readonly labels: { model_name: string; component: string };
  bytes: number;
  present: boolean;
  handle: Series | undefined;
}

type Labels<N extends keyof typeof METRIC_LABELS> = (typeof METRIC_LABELS)[N][number];

/** The guide's metrics on a prom-client registry, with native sources drained at scrape time. */
export class MetricsCollector {
  /** The `model_name` label of every family. */
  readonly modelName: string;
  /** The registry holding the families (pass it to your own /metrics handler, or use {@link metrics}). */
  readonly registry: Registry;

  private readonly requests: SeriesFamily<Labels<typeof MetricName.ROUTING_REQUESTS>>;
  private readonly duration: BucketedHistogram<Labels<typeof MetricName.ROUTING_DURATION>>;
  private readonly expertsPerToken: BucketedHistogram<Labels<typeof MetricName.EXPERTS_USED_PER_TOKEN>>;
  private readonly loadBalance: SeriesFamily<Labels<typeof MetricName.LOAD_BALANCE_SCORE>>;
  private readonly flopsComputed: SeriesFamily<Labels<typeof MetricName.FLOPS_COMPUTED>>;
  private readonly flopsSaved: SeriesFamily<Labels<typeof MetricName.FLOPS_SAVED>>;
  private readonly memory: SeriesFamily<Labels<typeof MetricName.MEMORY_USAGE>>;
  private readonly errors: SeriesFamily<Labels<typeof MetricName.ROUTING_ERRORS>>;
  private readonly expertFailures: SeriesFamily<Labels<typeof MetricName.EXPERT_FAILURES>>;
  private readonly complexity: BucketedHistogram<Labels<typeof MetricName.COMPLEXITY_SCORE>>;
  private readonly expertTokens: SeriesFamily<Labels<typeof MetricName.EXPERT_TOKENS>> | undefined;
  private readonly stageDuration: BucketedHistogram<Labels<typeof MetricName.STAGE_DURATION>> | undefined;

  /** Every series value of the families, rendered natively at a scrape. */
  private readonly store = new SeriesStore();
  /** The bytes of the latest {@link metricsBuffer}. */
  private body = Buffer.allocUnsafe(1 << 16);
  private attached: Attached[] = [];
  private readonly listeners = new Set<DrainListener>();
  private readonly recordListeners = new Set<DrainRecordListener>();
  /** The drain records are written here (grown when one does not fit) and read in place. */
  private drainBuffer: Float64Array = new Float64Array(2048);
  private lastDrainAt = -Infinity;
  private readonly record = new TelemetryRecord();
  /** Set while a drain's record is added and its listeners run. */
  private draining = false;
  /** By model name, then layer id. */
  private readonly latestLoadBalance = new Map<string, Map<string, number>>();
  private drainedThisTurn = false;
  private readonly endTurn = () => {
    this.drainedThisTurn = false;
  };
  /** The collect callback of every family (drains the sources once per scrape). */
  private readonly collectFamilies: () => void;
  /** prom-client's default metrics when the registry is the collector's own, and their cached text. */
  private readonly defaults: Registry | undefined;
  private readonly defaultsIntervalMs: number;
  private defaultsCache = '';
  private defaultsAt = -Infinity;
  /** The memory series fed by attached sources, by model and component (expert_weights, router_weights). */
  private readonly sourceMemory = new Map<string, SourceMemory>();

  /**
   * @param modelName the `model_name` label value of every family.
   * @throws Error from prom-client when the registry already holds a family of the same name.
   */
  constructor(modelName: string, opts: MetricsCollectorOptions = {}) {
    if (typeof modelName !== 'string' || modelName.length === 0)
      throw new TypeError(`modelName: expected a non-empty string, got ${String(modelName)}`);
    this.modelName = modelName;
    this.registry = opts.registry ?? new Registry();
    const registers = [this.registry];
    const refresh = () => this.refresh();
    this.collectFamilies = refresh;
    const family =
      (type: 'counter' | 'gauge') =>
      <N extends keyof typeof METRIC_LABELS>(name: N, help: string) =>
        new SeriesFamily<Labels<N>>({
          name,
          help,
          type,
          labelNames: METRIC_LABELS[name],
          registers,
          collect: refresh,
          store: this.store,
        });
    const counter = family('counter');
    const gauge = family('gauge');
    const histogram = <N extends keyof typeof METRIC_LABELS>(name: N, help: string, buckets: readonly number[]) =>
      new BucketedHistogram<Labels<N>>({
        name,
        help,
        labelNames: METRIC_LABELS[name],
        buckets,
        registers,
        collect: refresh,
        store: this.store,
      });

    // Registered first, so its collect() drains the sources before any sibling is serialised.
    this.requests = counter(MetricName.ROUTING_REQUESTS, 'Routing calls, by backend and status (success or error).');
    this.duration = histogram(
      MetricName.ROUTING_DURATION,
      'Duration of one routing or layer call in seconds.',
      DURATION_BUCKETS_SECONDS,
    );
    this.expertsPerToken = histogram(
      MetricName.EXPERTS_USED_PER_TOKEN,
      'Experts chosen per token.',
      EXPERTS_PER_TOKEN_BUCKETS,
    );
    this.loadBalance = gauge(
      MetricName.LOAD_BALANCE_SCORE,
      'Load balance of the latest window of at least num_experts expert assignments: normalised entropy of tokens per expert, 1 = even.',
    );
    this.flopsComputed = counter(MetricName.FLOPS_COMPUTED, 'Expert FLOPs computed.');
    this.flopsSaved = counter(MetricName.FLOPS_SAVED, 'Expert FLOPs saved against the static top-k baseline.');
    this.memory = gauge(MetricName.MEMORY_USAGE, 'Memory held, by component, in bytes.');
    this.errors = counter(MetricName.ROUTING_ERRORS, 'Routing errors, by type.');
    this.expertFailures = counter(MetricName.EXPERT_FAILURES, 'Expert failures, by expert and failure type.');
    this.complexity = histogram(
      MetricName.COMPLEXITY_SCORE,
      'Per-token complexity scores of dynamic routing, in [0, 1].',
      COMPLEXITY_BUCKETS,
    );
    if (opts.enableDetailedMetrics ?? true) {
      this.expertTokens = counter(MetricName.EXPERT_TOKENS, 'Tokens routed to each expert.');
      this.stageDuration = histogram(
        MetricName.STAGE_DURATION,
        'Duration of one stage of a call in seconds.',
        DURATION_BUCKETS_SECONDS,
      );
    }

    this.defaultsIntervalMs = Math.max(0, opts.defaultMetricsIntervalMs ?? 10_000);
    if ((opts.defaultMetrics ?? true) && opts.registry) {
      // Tolerate a registry that already carries the defaults (e.g. shared by two collectors).
      if (!this.registry.getSingleMetric('process_cpu_user_seconds_total'))
        collectDefaultMetrics({ register: this.registry });
    } else if (opts.defaultMetrics ?? true) {
      this.defaults = new Registry();
      collectDefaultMetrics({ register: this.defaults });
    }
  }

  /**
   * Attaches a router or layer: from now on its native counters are drained at every scrape. Attach a layer or
   * its router, not both (the layer's calls are counted once, by the layer). Returns a function that detaches it.
   */
  observe(source: TelemetrySource, opts: ObserveOptions): () => void {
    if (!source || typeof source.drainTelemetry !== 'function')
      throw new TypeError('observe: expected a Router or MoELayer (an object with drainTelemetry())');
    if (opts?.layerId === undefined || opts.layerId === '') throw new TypeError('observe: opts.layerId is required');
    if (this.attached.some((a) => a.source === source)) throw new Error('observe: this source is already attached');
    const other = observers.get(source);
    if (other)
      throw new Error(
        `observe: this source is attached to another MetricsCollector (model ${other.modelName}); its drains would ` +
          'split the counts between them. One collector serves several models: observe(source, { modelName })',
      );
    if (opts.modelName !== undefined && (typeof opts.modelName !== 'string' || opts.modelName === ''))
      throw new TypeError(`observe: opts.modelName: expected a non-empty string, got ${String(opts.modelName)}`);
    const model_name = opts.modelName ?? this.modelName;
    const backend = opts.backend ?? backendOf(source) ?? 'cpu';
    const layerId = String(opts.layerId);
    const layerType = opts.layerType ?? 'moe';
    // Request, error and FLOP series exist from the start (at 0), so rate() and absence alerts work before the
    // first error.
    const entry: Attached = {
      source,
      modelName: model_name,
      layerId,
      backend,
      estimatorType: opts.estimatorType ?? estimatorNameOf(source) ?? 'none',
      layerType,
      memoryBytes: 0,
      sharedBytes: 0,
      kind: undefined,
      series: {
        success: this.requests.handle({ model_name, backend, status: 'success' }),
        error: this.requests.handle({ model_name, backend, status: 'error' }),
        errorTypes: NATIVE_ERROR_TYPES.map((error_type) => this.errors.handle({ model_name, error_type })),
        flopsComputed: this.flopsComputed.handle({ model_name, layer_type: layerType }),
        flopsSaved: this.flopsSaved.handle({ model_name }),
        expertTokens: [],
        histograms: [],
      },
    };
    this.attached.push(entry);
    observers.set(source, this);
    this.countSharedWeights();
    return () => this.unobserve(source);
  }

  /**
   * Detaches a source after one last drain, so nothing it counted is lost. Its layer's load balance gauge goes
   * (unless another attached source has the same layer id): a detached layer's last score must not keep an alert
   * or a health check on it. Its counters stay.
   */
  unobserve(source: TelemetrySource): void {
    const entry = this.attached.find((a) => a.source === source);
    if (!entry) return;
    this.drainOne(entry);
    this.detach(entry);
    this.updateMemoryGauge();
  }

  /** Drops a source from the drains, and its layer's load balance unless another source has that model and layer. */
  private detach(entry: Attached): void {
    this.attached = this.attached.filter((a) => a !== entry);
    if (observers.get(entry.source) === this) observers.delete(entry.source);
    this.countSharedWeights();
    if (this.attached.some((a) => a.layerId === entry.layerId && a.modelName === entry.modelName)) return;
    this.loadBalance.remove({ model_name: entry.modelName, layer_id: entry.layerId });
    this.balanceOf(entry.modelName).delete(entry.layerId);
  }

  /**
   * Layers built with withRouter / shareWeightsOf hold the same packed weights, and each reports them in its
   * memory: the first attached one of a model counts them, the others' share is subtracted (set when sources come
   * and go, not per scrape).
   */
  private countSharedWeights(): void {
    const counted = new Map<object, Set<string>>();
    for (const a of this.attached) {
      a.sharedBytes = 0;
      const weights = packedWeightsOf(a.source);
      if (!weights) continue;
      let models = counted.get(weights);
      if (!models) counted.set(weights, (models = new Set()));
      if (models.has(a.modelName)) a.sharedBytes = weights.bytes;
      else models.add(a.modelName);
    }
  }

  /** The latest load balance per layer of one model. */
  private balanceOf(modelName: string): Map<string, number> {
    let layers = this.latestLoadBalance.get(modelName);
    if (!layers) this.latestLoadBalance.set(modelName, (layers = new Map()));
    return layers;
  }

  /** Calls `listener` with every drained delta (for spans and summaries). Returns a function that removes it. */
  onDrain(listener: DrainListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** @internal {@link onDrain} without decoding: see {@link DrainRecordListener}. */
  onDrainRecord(listener: DrainRecordListener): () => void {
    this.recordListeners.add(listener);
    return () => this.recordListeners.delete(listener);
  }

  /** Drains every attached source now and adds the deltas to the metrics (a scrape does this itself). */
  drainNow(): void {
    // (drainOne may detach a source: iterate over the list as it was)
    const attached = this.attached;
    for (let i = 0; i < attached.length; i++) this.drainOne(attached[i]);
    this.updateMemoryGauge();
    this.lastDrainAt = performance.now();
  }

  /** @internal performance.now() when the latest {@link drainNow} (a scrape's, or a direct one) finished. */
  get lastDrainMs(): number {
    return this.lastDrainAt;
  }

  /**
   * The Prometheus text exposition of the registry (drains the sources first), followed by the default metrics of
   * a collector-owned registry (see {@link MetricsCollectorOptions.defaultMetrics}).
   */
  async metrics(): Promise<string> {
    // what the families' collect callbacks do (once per turn: prom-client's own writer, used for registries with
    // default labels or OpenMetrics, calls them again); the writer then reads our families without calling it
    const suffix = this.cachedDefaults() ?? (await this.refreshDefaults());
    this.collectFamilies();
    return registryText(this.registry, this.collectFamilies, suffix);
  }

  /**
   * {@link metrics} as UTF-8 bytes, written natively into a buffer this collector reuses: no string is built, which
   * on cold caches is most of what a scrape costs. The buffer is valid until the next call: send or copy it first
   * (the /metrics endpoint of startObservabilityServer does this). A registry that also holds metrics of other
   * kinds gets a fresh buffer of its text instead.
   */
  async metricsBuffer(): Promise<Buffer> {
    const suffix = this.cachedDefaults() ?? (await this.refreshDefaults());
    this.collectFamilies();
    let n = registryTextInto(this.registry, this.body, this.collectFamilies, suffix);
    if (n === undefined) return Buffer.from(await registryText(this.registry, this.collectFamilies, suffix));
    if (n < 0) {
      this.body = Buffer.allocUnsafe(Math.max(-n, 2 * this.body.length));
      n = registryTextInto(this.registry, this.body, this.collectFamilies, suffix) as number;
    }
    return this.body.subarray(0, n);
  }

  /**
   * The text of the default metrics of a collector-owned registry ('' without them) while it is fresh, else
   * undefined (a scrape then awaits {@link refreshDefaults}; otherwise it awaits nothing before its drain).
   */
  private cachedDefaults(): string | undefined {
    if (!this.defaults) return '';
    return performance.now() - this.defaultsAt < this.defaultsIntervalMs ? this.defaultsCache : undefined;
  }

  private async refreshDefaults(): Promise<string> {
    this.defaultsCache = await this.defaults!.metrics();
    this.defaultsAt = performance.now();
    return this.defaultsCache;
  }

  /** The content type of {@link metrics}' text. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /**
   * The latest load balance seen for a layer of a model (default: the collector's); with no `layerId`, the lowest
   * over the layers of `modelName`, or over every layer of every model when that is omitted too. NaN before any.
   * A detached layer's score is gone (see {@link unobserve}).
   */
  latestLoadBalanceScore(layerId?: string | number, modelName?: string): number {
    if (layerId !== undefined)
      return this.latestLoadBalance.get(modelName ?? this.modelName)?.get(String(layerId)) ?? NaN;
    let lowest = NaN;
    for (const [model, layers] of this.latestLoadBalance)
      if (modelName === undefined || model === modelName)
        for (const v of layers.values()) if (!(v >= lowest)) lowest = v;
    return lowest;
  }

  /** Counts one routing request by hand. */
  recordRoutingRequest(backend: string, status = 'success'): void {
    this.requests.inc({ model_name: this.modelName, backend, status });
  }

  /** Observes one routing duration by hand. */
  recordRoutingDuration(durationSeconds: number, backend: string): void {
    this.duration.observe({ model_name: this.modelName, backend }, durationSeconds);
  }

  /** Observes an experts-per-token value (a token's k, or a batch mean). */
  recordExpertsUsed(expertsPerToken: number): void {
    this.expertsPerToken.observe({ model_name: this.modelName }, expertsPerToken);
  }

  /** Sets a layer's load balance score (1 = even). */
  recordLoadBalance(score: number, layerId: string | number): void {
    this.setLoadBalance(this.modelName, String(layerId), score);
  }

  /** The gauge of one model's layer, and the latest score kept for the health check. */
  private setLoadBalance(modelName: string, layerId: string, score: number): void {
    this.loadBalance.set({ model_name: modelName, layer_id: layerId }, score);
    this.balanceOf(modelName).set(layerId, score);
  }

  /** Adds FLOPs computed and saved. A negative saving (more experts than the static top-k) adds nothing. */
  recordFlops(computed: number, saved: number, layerType = 'moe'): void {
    this.flopsComputed.inc({ model_name: this.modelName, layer_type: layerType }, computed);
    if (saved > 0) this.flopsSaved.inc({ model_name: this.modelName }, saved);
  }

  /** Sets the memory held by a component, in bytes. */
  updateMemoryUsage(bytes: number, component: string): void {
    this.memory.set({ model_name: this.modelName, component }, bytes);
  }

  /** Counts one error of a type (e.g. 'complexity_estimation_failed'). */
  recordError(errorType: string): void {
    this.errors.inc({ model_name: this.modelName, error_type: errorType });
  }

  /** Counts one failure of an expert. */
  recordExpertFailure(expertId: number | string, failureType: string): void {
    this.expertFailures.inc({ model_name: this.modelName, expert_id: String(expertId), failure_type: failureType });
  }

  /** Observes one complexity score in [0, 1] (the guide's `record_complexity_score`). */
  recordComplexityScore(score: number, estimatorType: string): void {
    this.complexity.observe({ model_name: this.modelName, estimator_type: estimatorType }, score);
  }

  /** Alias of {@link recordComplexityScore}. */
  recordComplexity(score: number, estimatorType: string): void {
    this.recordComplexityScore(score, estimatorType);
  }

  /** The scrape-time hook of every family: drains once per turn of the event loop. */
  private refresh(): void {
    if (this.drainedThisTurn) return;
    this.drainedThisTurn = true;
    // a resolved promise rather than queueMicrotask(), which builds an AsyncResource per call
    void Promise.resolve().then(this.endTurn);
    this.drainNow();
  }

  private drainOne(entry: Attached): void {
    // (inside a listener, a nested drain: a record and buffer of its own, so the outer listeners keep theirs)
    let record: TelemetryRecord;
    try {
      record = this.drainRecord(entry.source, this.draining);
    } catch (error) {
      // A source that cannot be drained any more: stop asking. A disposed one is a normal end (a model reloaded
      // without unobserve(): its last calls were in the drain before); anything else is counted once, and said.
      this.detach(entry);
      if (isDisposedError(error)) return;
      this.recordError('telemetry_drain_failed');
      process.emitWarning(
        `dynamic-moe-router-kit: detached layer ${entry.layerId} from metrics: ${(error as Error)?.message ?? error}`,
      );
      return;
    }
    this.addRecord(entry, record);
  }

  /**
   * Adds a source's record to the series and hands it to the listeners. A listener may drain again (drainNow,
   * unobserve): that nested drain gets a record and buffer of its own.
   */
  private addRecord(entry: Attached, record: TelemetryRecord): void {
    const nested = this.draining;
    this.draining = true;
    try {
      this.apply(entry, record);
      this.tellListeners(entry, record);
    } finally {
      this.draining = nested;
    }
  }

  private tellListeners(entry: Attached, record: TelemetryRecord): void {
    for (const listener of this.recordListeners) {
      try {
        listener(record, entry);
      } catch (error) {
        process.emitWarning(`dynamic-moe-router-kit: a drain listener threw: ${(error as Error)?.message ?? error}`);
      }
    }
    if (this.listeners.size === 0) return;
    const delta = record.toDelta();
    for (const listener of this.listeners) {
      try {
        listener(delta, entry);
      } catch (error) {
        process.emitWarning(`dynamic-moe-router-kit: a drain listener threw: ${(error as Error)?.message ?? error}`);
      }
    }
  }

  /** @internal Adds a record of an attached source that was drained elsewhere (see {@link drainSharedRecord}). */
  absorb(source: TelemetrySource, record: TelemetryRecord): void {
    const entry = this.attached.find((a) => a.source === source);
    if (!entry) return;
    this.addRecord(entry, record);
    this.updateMemoryGauge();
  }

  /** One drain of a source as a record: in place for Router and MoELayer, else the encoded delta. */
  private drainRecord(source: TelemetrySource, nested: boolean): TelemetryRecord {
    if (nested) return drainRecordOf(source);
    if (typeof source.drainTelemetryRecord !== 'function') return drainRecordOf(source, this.record);
    const written = source.drainTelemetryRecord(this.drainBuffer);
    if (typeof written === 'number') return this.record.load(this.drainBuffer, written);
    // it did not fit: keep the larger array for the next drains
    if (written.length > this.drainBuffer.length) this.drainBuffer = written;
    return this.record.load(written);
  }

  private apply(entry: Attached, r: TelemetryRecord): void {
    entry.kind = r.kind;
    entry.memoryBytes = r.memoryBytes;
    let plan = entry.plan;
    // (a source that builds its own deltas may change its histogram bounds: its plan is built for each record)
    const native = typeof entry.source.drainTelemetryRecord === 'function';
    if (!native || !plan?.fits(this.store, r)) plan = entry.plan = this.planFor(entry, r);
    plan.apply(r, this.store.values);
    if (Number.isFinite(r.loadBalance)) this.balanceOf(entry.modelName).set(entry.layerId, r.loadBalance);
  }

  /**
   * The ops that add a source's records into the store, from its series handles. A series that does not exist (or
   * was removed by a reset) waits in `pending` and is created by its first non-zero delta, which changes the
   * store's version: the next drain builds a new plan that includes it.
   */
  private planFor(entry: Attached, r: TelemetryRecord): DrainPlan {
    const plan = new DrainPlan();
    const { series, layerId, backend } = entry;
    const model_name = entry.modelName;
    const counter = (
      family: SeriesFamily<string>,
      handle: Series,
      add: () => void,
      delta: (r: TelemetryRecord) => number,
    ) => {
      if (!handle.removed) add();
      else
        plan.pending.push((r) => {
          const v = delta(r);
          if (v > 0) family.add(handle, v);
        });
    };
    const errors = (r: TelemetryRecord) => r.error(0) + r.error(1) + r.error(2);
    counter(
      this.requests,
      series.success,
      () => plan.add(RecordAt.Calls, series.success.slot),
      (r) => r.calls,
    );
    counter(this.requests, series.error, () => plan.addSum3(RecordAt.Errors, series.error.slot), errors);
    series.errorTypes.forEach((handle, i) =>
      counter(
        this.errors,
        handle,
        () => plan.add(RecordAt.Errors + i, handle.slot),
        (r) => r.error(i as 0 | 1 | 2),
      ),
    );
    counter(
      this.flopsComputed,
      series.flopsComputed,
      () => plan.add(RecordAt.FlopsComputed, series.flopsComputed.slot),
      (r) => r.flopsComputed,
    );
    counter(
      this.flopsSaved,
      series.flopsSaved,
      () => plan.addExcess(RecordAt.FlopsStatic, RecordAt.FlopsComputed, series.flopsSaved.slot),
      (r) => r.flopsStatic - r.flopsComputed,
    );
    const histogram = (family: BucketedHistogram<string>, h: number, labels: Record<string, string>) => {
      const handle = series.histograms[h];
      if (handle && handle.slot >= 0) {
        plan.histogram(r.histogramOffset(h), handle.slot, family.bucketTarget(r.histogram(h).bounds));
        return;
      }
      plan.pending.push((r) => {
        if (r.histogramCount(h) === 0) return;
        const live = (series.histograms[h] = family.handle(labels));
        family.addFlatDelta(live, r.flat, r.histogramOffset(h));
      });
    };
    histogram(this.duration, RecordHistogram.Duration, { model_name, backend });
    histogram(this.expertsPerToken, RecordHistogram.ExpertsPerToken, { model_name });
    histogram(this.complexity, RecordHistogram.Complexity, { model_name, estimator_type: entry.estimatorType });
    const stageDuration = this.stageDuration;
    if (stageDuration)
      STAGES.forEach((stage, i) => histogram(stageDuration, RecordHistogram.StageFirst + i, { model_name, stage }));
    // An expert's series appears with its first token; then its handle is kept.
    const expertTokens = this.expertTokens;
    for (let e = 0; expertTokens && e < r.expertCount; e++) {
      const handle = series.expertTokens[e];
      if (handle && !handle.removed) plan.add(r.expertTokensOffset + e, handle.slot);
      else
        plan.pending.push((r) => {
          const tokens = r.expertTokens(e);
          if (tokens <= 0) return;
          const live = (series.expertTokens[e] ??= expertTokens.handle({
            model_name,
            layer_id: layerId,
            expert_id: String(e),
          }));
          expertTokens.add(live, tokens);
        });
    }
    const balance = series.loadBalance;
    if (balance && !balance.removed) plan.setFinite(RecordAt.LoadBalance, balance.slot);
    else
      plan.pending.push((r) => {
        if (!Number.isFinite(r.loadBalance)) return;
        this.setLoadBalance(model_name, layerId, r.loadBalance);
        series.loadBalance = this.loadBalance.handle({ model_name, layer_id: layerId });
      });
    return plan.seal(this.store, r);
  }

  /** Native weight memory, summed per model and component over the attached sources (no allocation once known). */
  private updateMemoryGauge(): void {
    for (const total of this.sourceMemory.values()) {
      total.bytes = 0;
      total.present = false;
    }
    for (const a of this.attached) {
      if (a.kind === undefined) continue;
      const total = (a.memory ??= this.sourceMemoryOf(a.modelName, a.kind));
      total.bytes += Math.max(0, a.memoryBytes - a.sharedBytes);
      total.present = true;
    }
    for (const [key, total] of this.sourceMemory) {
      if (total.present) {
        // the handle is kept (no label lookup per drain); a removed one is looked up again
        if (!total.handle || total.handle.removed) total.handle = this.memory.handle(total.labels);
        this.memory.setSeries(total.handle, total.bytes);
      } else {
        // no attached source feeds it any more
        this.memory.remove(total.labels);
        this.sourceMemory.delete(key);
      }
    }
  }

  private sourceMemoryOf(modelName: string, kind: TelemetryDelta['kind']): SourceMemory {
    const component = kind === 'layer' ? 'expert_weights' : 'router_weights';
    const key = `${modelName}\u0000${component}`;
    let total = this.sourceMemory.get(key);
    if (!total) {
      total = { labels: { model_name: modelName, component }, bytes: 0, present: false, handle: undefined };
      this.sourceMemory.set(key, total);
    }
    return total;
  }
}

/** The collector each observed source is attached to (at most one: two would split its counts). */
const observers = new WeakMap<TelemetrySource, MetricsCollector>();

/**
 * @internal One drain of a source by someone other than its collector (a source-mode PerformanceSummaryLogger, an
 * ExpertBalanceHealthCheck on a layer): the collector observing it, if any, adds the same record, so that no count
 * is lost from /metrics.
 */
export function drainSharedRecord(source: TelemetrySource): TelemetryRecord {
  const record = drainRecordOf(source);
  observers.get(source)?.absorb(source, record);
  return record;
}

/** The packed weights an MoELayer may share with others (see MoELayer.packedWeights); undefined for routers. */
function packedWeightsOf(source: TelemetrySource): { bytes: number } | undefined {
  const weights = (source as { packedWeights?: unknown }).packedWeights;
  return weights && typeof weights === 'object' && typeof (weights as { bytes?: unknown }).bytes === 'number'
    ? (weights as { bytes: number })
    : undefined;
}

/** The complexity estimator's name of a Router (`estimator.name`) or an MoELayer (`router.estimator.name`). */
function backendOf(source: TelemetrySource): string | undefined {
  const backend = (source as { backend?: unknown }).backend;
  return typeof backend === 'string' ? backend : undefined;
}

function estimatorNameOf(source: TelemetrySource): string | undefined {
  type WithEstimator = { estimator?: { name?: unknown } };
  const own =
    (source as WithEstimator).estimator?.name ?? (source as { router?: WithEstimator }).router?.estimator?.name;
  return typeof own === 'string' ? own : undefined;
}
