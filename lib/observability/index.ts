/**
 * The observability module: Prometheus metrics drained from native counters, structured logs, OpenTelemetry
 * spans built from native timestamps, health checks, the HTTP endpoints and a profiler. Metric names, event
 * types, span names and JSON shapes follow the observability guide of the earlier Python edition.
 */
export type { HistogramDelta, SpanRecord, TelemetryDelta, TelemetrySource } from './telemetry-types';
export {
  MetricName,
  METRIC_LABELS,
  DURATION_BUCKETS_SECONDS,
  COMPLEXITY_BUCKETS,
  EXPERTS_PER_TOKEN_BUCKETS,
  STAGES,
  NATIVE_ERROR_TYPES,
  type MetricNameValue,
  type StageName,
} from './metric-names';
export {
  BucketedHistogram,
  type BucketedHistogramOptions,
  type LabelValues,
  type HistogramSample,
} from './bucketed-histogram';
export {
  MetricsCollector,
  type MetricsCollectorOptions,
  type ObserveOptions,
  type ObservedSourceInfo,
  type DrainListener,
} from './metrics';
export {
  configureLogging,
  getLogger,
  flushLogs,
  exceptionOf,
  prettyLine,
  EventLogger,
  LogEvent,
  withCorrelationId,
  setCorrelationId,
  clearCorrelationId,
  getCorrelationId,
  newCorrelationId,
  type LogEventType,
  type LoggingConfig,
  type LogOptions,
  type LogLevelName,
  type LoggedException,
} from './logging';
export {
  PerformanceSummaryLogger,
  type PerformanceSummary,
  type PerformanceSummaryOptions,
} from './performance-summary';
export {
  initializeTracing,
  getTracer,
  traceSpan,
  traceFunction,
  TracingSetupError,
  TRACER_NAME,
  recordForwardSpans,
  spanRecordFromForward,
  traceDrainedSpans,
  steadyNsToHrTime,
  type TracingConfig,
  type TracingHandle,
  type ForwardSpanAttributes,
  type DrainedSpanOptions,
  type DrainedSpanTracing,
  type ForwardSpanRecord,
} from './tracing';
export { RouterTracing, type SelectionResult } from './router-tracing';
export {
  HealthMonitor,
  BaseHealthCheck,
  MemoryHealthCheck,
  DiskSpaceHealthCheck,
  ModelHealthCheck,
  ExternalServiceHealthCheck,
  ExpertBalanceHealthCheck,
  HealthStatus,
  overallStatus,
  type HealthStatusValue,
  type CheckOutcome,
  type HealthCheckResult,
  type HealthReport,
  type CheckableModel,
  type LoadBalanceSource,
} from './health';
export { startObservabilityServer, type ObservabilityServer, type ObservabilityServerOptions } from './server';
export {
  PerformanceProfiler,
  type ProfileResult,
  type PerformanceProfilerOptions,
  type MemoryUsageSink,
} from './profiler';
