/**
 * OpenTelemetry tracing. At run time this module needs only @opentelemetry/api: without an SDK every span is the
 * API's no-op. `initializeTracing` wires an SDK (console or OTLP/HTTP exporter, or one you pass) when the
 * application has installed it, loading it with a plain `require` so it stays an optional dependency.
 * Layer and router spans are built after a call returns, from native timestamps: see forward-spans.ts.
 */
import { packageVersion } from './package-version';
import { context, SpanStatusCode, trace, type Attributes, type Span, type Tracer } from '@opentelemetry/api';

export {
  recordForwardSpans,
  spanRecordFromForward,
  traceDrainedSpans,
  steadyNsToHrTime,
  type ForwardSpanAttributes,
  type DrainedSpanOptions,
  type DrainedSpanTracing,
  type ForwardSpanRecord,
} from './forward-spans';

/** The tracer name of this package's spans. */
export const TRACER_NAME = 'dynamic-moe-router-kit';

export interface TracingConfig {
  /** `service.name`. Default 'dynamic-moe-router'. */
  serviceName?: string;
  /** `service.version`. Default: this package's version. */
  serviceVersion?: string;
  /** `deployment.environment`. Default: NODE_ENV, else 'development'. */
  environment?: string;
  /**
   * 'console' (ConsoleSpanExporter), 'otlp' (needs @opentelemetry/exporter-trace-otlp-http; Jaeger and Zipkin
   * collectors accept OTLP), 'jaeger' (the guide's name: OTLP/HTTP to `jaegerEndpoint`, which Jaeger 1.35 and
   * later take natively), or 'none' (spans are sampled and processed but not exported). Ignored when
   * `spanExporter` is given. Default 'console'.
   */
  exporterType?: 'console' | 'otlp' | 'jaeger' | 'none';
  /** OTLP/HTTP traces endpoint. Default: the exporter's own (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or localhost:4318). */
  otlpEndpoint?: string;
  /**
   * With exporterType 'jaeger': Jaeger's OTLP/HTTP traces endpoint (default http://localhost:4318/v1/traces). The
   * legacy Thrift collector path (`.../api/traces`, port 14268) is refused: no maintained JS exporter speaks it.
   */
  jaegerEndpoint?: string;
  /** A span exporter object of your own (e.g. the SDK's InMemorySpanExporter). */
  spanExporter?: object;
  /** Fraction of new traces sampled, in [0, 1]; children follow their parent. Default 1. */
  sampleRate?: number;
  /** Batch spans before export (default: true for 'otlp' and 'jaeger', false otherwise). */
  batch?: boolean;
  /** Make this the global tracer provider (and install the AsyncLocalStorage context manager). Default true. */
  register?: boolean;
  /** What to do when the SDK or exporter package is not installed: 'warn' (default; tracing stays off) or 'throw'. */
  onMissing?: 'warn' | 'throw';
}

/** What {@link initializeTracing} set up. */
export interface TracingHandle {
  /** False when no SDK could be loaded (every span is a no-op). */
  readonly enabled: boolean;
  /** A tracer of this provider (works even when it is not registered globally). */
  readonly tracer: Tracer;
  /** Exports whatever is buffered. */
  forceFlush(): Promise<void>;
  /** Flushes and stops the provider; unregisters it when it was registered. */
  shutdown(): Promise<void>;
}

/** The part of an SDK tracer provider used here (SDK 1.x and 2.x alike). */
interface ProviderLike {
  getTracer(name: string, version?: string): Tracer;
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
  register?(): void;
  addSpanProcessor?(processor: unknown): void;
}
type Ctor<T = unknown> = new (...args: never[]) => T;
interface SdkTraceBase {
  BasicTracerProvider: new (config: object) => ProviderLike;
  SimpleSpanProcessor: new (exporter: object) => unknown;
  BatchSpanProcessor: new (exporter: object) => unknown;
  ConsoleSpanExporter: new () => object;
  ParentBasedSampler: new (config: { root: unknown }) => unknown;
  TraceIdRatioBasedSampler: new (ratio: number) => unknown;
  AlwaysOnSampler: new () => unknown;
}

/** The provider the latest initializeTracing() registered globally, while it is. */
let registeredHere: object | undefined;

/** A clear message naming the package to install. */
export class TracingSetupError extends Error {
  override readonly name = 'TracingSetupError';
}

/**
 * Sets up an OpenTelemetry SDK tracer provider from `config`.
 * @throws RangeError for a bad option; TracingSetupError when a needed package is missing and `onMissing` is 'throw'.
 */
export function initializeTracing(config: TracingConfig = {}): TracingHandle {
  const sampleRate = config.sampleRate ?? 1;
  if (typeof sampleRate !== 'number' || !(sampleRate >= 0 && sampleRate <= 1))
    throw new RangeError(`sampleRate: expected a number in [0, 1], got ${config.sampleRate}`);
  const exporterType = config.exporterType ?? 'console';
  if (!['console', 'otlp', 'jaeger', 'none'].includes(exporterType)) {
    throw new RangeError(
      `exporterType: expected 'console', 'otlp', 'jaeger' or 'none', got ${JSON.stringify(exporterType)}`,
    );
  }
  let otlpUrl = config.otlpEndpoint;
  if (exporterType === 'jaeger') {
    otlpUrl = config.jaegerEndpoint ?? 'http://localhost:4318/v1/traces';
    let url: URL;
    try {
      url = new URL(otlpUrl);
    } catch {
      throw new RangeError(`jaegerEndpoint: expected an http(s) URL, got ${JSON.stringify(otlpUrl)}`);
    }
    if (url.pathname.endsWith('/api/traces') || url.port === '14268')
      throw new RangeError(
        `jaegerEndpoint: ${otlpUrl} is Jaeger's legacy Thrift collector; give its OTLP/HTTP endpoint instead ` +
          `(e.g. http://${url.hostname}:4318/v1/traces; Jaeger 1.35+ takes OTLP)`,
      );
  }
  const missing = (pkg: string, why: string): TracingHandle => {
    const message = `dynamic-moe-router-kit: tracing is off: ${why} needs ${pkg} (npm install ${pkg})`;
    if (config.onMissing === 'throw') throw new TracingSetupError(message);
    process.emitWarning(message);
    return {
      enabled: false,
      tracer: trace.getTracer(TRACER_NAME, packageVersion()),
      forceFlush: async () => {},
      shutdown: async () => {},
    };
  };

  const base = optionalRequire<SdkTraceBase>('@opentelemetry/sdk-trace-base');
  if (!base) return missing('@opentelemetry/sdk-trace-base', 'the OpenTelemetry SDK');
  let exporter: object | undefined = config.spanExporter;
  if (!exporter && exporterType === 'console') exporter = new base.ConsoleSpanExporter();
  const overHttp = exporterType === 'otlp' || exporterType === 'jaeger';
  if (!exporter && overHttp) {
    const otlp = optionalRequire<{ OTLPTraceExporter: new (config: { url?: string }) => object }>(
      '@opentelemetry/exporter-trace-otlp-http',
    );
    if (!otlp) return missing('@opentelemetry/exporter-trace-otlp-http', `exporterType '${exporterType}'`);
    exporter = new otlp.OTLPTraceExporter(otlpUrl ? { url: otlpUrl } : {});
  }
  const batch = config.batch ?? overHttp;
  const processors = exporter
    ? [batch ? new base.BatchSpanProcessor(exporter) : new base.SimpleSpanProcessor(exporter)]
    : [];
  // (every root sampled: the ratio sampler would still parse each trace id to decide)
  const root = sampleRate === 1 ? new base.AlwaysOnSampler() : new base.TraceIdRatioBasedSampler(sampleRate);
  const sampler = new base.ParentBasedSampler({ root });
  const resource = makeResource({
    'service.name': config.serviceName ?? 'dynamic-moe-router',
    'service.version': config.serviceVersion ?? packageVersion(),
    'deployment.environment': config.environment ?? process.env.NODE_ENV ?? 'development',
    'deployment.environment.name': config.environment ?? process.env.NODE_ENV ?? 'development',
  });

  const node = optionalRequire<{ NodeTracerProvider: Ctor<ProviderLike> }>('@opentelemetry/sdk-trace-node');
  const Provider = (node?.NodeTracerProvider ?? base.BasicTracerProvider) as new (config: object) => ProviderLike;
  // SDK 1.x takes processors through addSpanProcessor, SDK 2.x through the constructor only.
  const probe = Provider.prototype as ProviderLike;
  const legacy = typeof probe.addSpanProcessor === 'function';
  const provider = new Provider({
    sampler,
    ...(resource ? { resource } : {}),
    ...(legacy ? {} : { spanProcessors: processors }),
  });
  if (legacy) for (const p of processors) provider.addSpanProcessor!(p);

  let register = config.register ?? true;
  if (register) {
    // A provider of an earlier initializeTracing() is replaced (the API would silently keep the first one); one
    // that someone else registered is left in place, and said so.
    if (registeredHere) {
      trace.disable();
      context.disable();
      registeredHere = undefined;
    }
    if (typeof provider.register === 'function') provider.register();
    else {
      trace.setGlobalTracerProvider(provider as unknown as Parameters<typeof trace.setGlobalTracerProvider>[0]);
      installContextManager();
    }
    const global = trace.getTracerProvider() as { getDelegate?: () => unknown };
    if (global.getDelegate?.() === provider) registeredHere = provider;
    else {
      register = false;
      process.emitWarning(
        'dynamic-moe-router-kit: another OpenTelemetry tracer provider is registered globally; this one was not ' +
          'registered (its spans come from the returned handle.tracer only)',
        { code: 'MOE_TRACING' },
      );
    }
  }
  return {
    enabled: true,
    tracer: provider.getTracer(TRACER_NAME, packageVersion()),
    forceFlush: () => provider.forceFlush(),
    shutdown: async () => {
      await provider.shutdown();
      // (the globals only while they are still this provider's: a later initializeTracing() has its own)
      if (register && registeredHere === provider) {
        trace.disable();
        context.disable();
        registeredHere = undefined;
      }
    },
  };
}

/** This package's tracer from the global provider (a no-op until an SDK is registered). */
export function getTracer(): Tracer {
  return trace.getTracer(TRACER_NAME, packageVersion());
}

/**
 * Runs `fn` inside a new active span named `name`; ends it when `fn` returns or its promise settles, and records a
 * thrown error (status ERROR) before rethrowing. `fn` gets the span to add attributes or events.
 */
export function traceSpan<T>(name: string, fn: (span: Span) => T, attributes?: Attributes): T {
  return getTracer().startActiveSpan(name, attributes ? { attributes } : {}, (span) => {
    const fail = (error: unknown) => {
      span.recordException(error instanceof Error ? error : String(error));
      span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
      span.end();
    };
    let result: T;
    try {
      result = fn(span);
    } catch (error) {
      fail(error);
      throw error;
    }
    if (isPromiseLike(result)) {
      return result.then(
        (value) => {
          span.end();
          return value;
        },
        (error: unknown) => {
          fail(error);
          throw error;
        },
      ) as T;
    }
    span.end();
    return result;
  });
}

/**
 * Wraps `fn` so that every call runs in a span named `name` (see {@link traceSpan}); `this` and arguments pass
 * through. The span also carries `function.name` and, once the call (or its promise) ends, `function.duration_seconds`.
 */
export function traceFunction(name: string, attributes?: Attributes) {
  return <A extends unknown[], R, This = unknown>(
    fn: (this: This, ...args: A) => R,
  ): ((this: This, ...args: A) => R) => {
    const spanAttributes: Attributes = { 'function.name': fn.name || name, ...attributes };
    return function (this: This, ...args: A): R {
      return traceSpan(
        name,
        (span) => {
          const started = performance.now();
          const done = () => span.setAttribute('function.duration_seconds', (performance.now() - started) / 1e3);
          let result: R;
          try {
            result = fn.apply(this, args);
          } catch (error) {
            done();
            throw error;
          }
          if (!isPromiseLike(result)) {
            done();
            return result;
          }
          return Promise.resolve(result).finally(done) as R;
        },
        spanAttributes,
      );
    };
  };
}

/** @internal Whether a result is a promise (anything with a `then` method): the helpers end spans when it settles. */
export function isPromiseLike<T>(value: T): value is T & Promise<Awaited<T>> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

function optionalRequire<T>(name: string): T | undefined {
  try {
    return require(name) as T;
  } catch (error) {
    if (
      (error as NodeJS.ErrnoException)?.code === 'MODULE_NOT_FOUND' &&
      String((error as Error).message).includes(name)
    )
      return undefined;
    throw error;
  }
}

function makeResource(attributes: Attributes): object | undefined {
  const resources = optionalRequire<{
    resourceFromAttributes?: (a: Attributes) => object;
    Resource?: new (a: Attributes) => object;
  }>('@opentelemetry/resources');
  if (resources?.resourceFromAttributes) return resources.resourceFromAttributes(attributes);
  if (resources?.Resource) return new resources.Resource(attributes);
  return undefined;
}

function installContextManager(): void {
  const hooks = optionalRequire<{ AsyncLocalStorageContextManager: new () => { enable(): unknown } }>(
    '@opentelemetry/context-async-hooks',
  );
  if (hooks)
    context.setGlobalContextManager(
      new hooks.AsyncLocalStorageContextManager().enable() as Parameters<typeof context.setGlobalContextManager>[0],
    );
}
