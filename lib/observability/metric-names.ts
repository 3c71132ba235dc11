/**
 * The one place where metric family names, label sets and bucket bounds are written down. The collector, the
 * alert rules test and the dashboard test all read them from here, so a rename cannot silently miss one of them.
 * Names and labels follow the observability guide of the earlier Python edition.
 */

/** Metric family names, exactly as Prometheus sees them. */
export const MetricName = {
  ROUTING_REQUESTS: 'dynamic_moe_routing_requests_total',
  ROUTING_DURATION: 'dynamic_moe_routing_duration_seconds',
  EXPERTS_USED_PER_TOKEN: 'dynamic_moe_experts_used_per_token',
  LOAD_BALANCE_SCORE: 'dynamic_moe_load_balance_score',
  FLOPS_COMPUTED: 'dynamic_moe_flops_computed_total',
  FLOPS_SAVED: 'dynamic_moe_flops_saved_total',
  MEMORY_USAGE: 'dynamic_moe_memory_usage_bytes',
  ROUTING_ERRORS: 'dynamic_moe_routing_errors_total',
  EXPERT_FAILURES: 'dynamic_moe_expert_failures_total',
  COMPLEXITY_SCORE: 'dynamic_moe_complexity_score',
  EXPERT_TOKENS: 'dynamic_moe_expert_tokens_total',
  STAGE_DURATION: 'dynamic_moe_stage_duration_seconds',
} as const;

export type MetricNameValue = (typeof MetricName)[keyof typeof MetricName];

/** Label names of each family (model_name first, then the guide's order). */
export const METRIC_LABELS = {
  [MetricName.ROUTING_REQUESTS]: ['model_name', 'backend', 'status'],
  [MetricName.ROUTING_DURATION]: ['model_name', 'backend'],
  [MetricName.EXPERTS_USED_PER_TOKEN]: ['model_name'],
  [MetricName.LOAD_BALANCE_SCORE]: ['model_name', 'layer_id'],
  [MetricName.FLOPS_COMPUTED]: ['model_name', 'layer_type'],
  [MetricName.FLOPS_SAVED]: ['model_name'],
  [MetricName.MEMORY_USAGE]: ['model_name', 'component'],
  [MetricName.ROUTING_ERRORS]: ['model_name', 'error_type'],
  [MetricName.EXPERT_FAILURES]: ['model_name', 'expert_id', 'failure_type'],
  [MetricName.COMPLEXITY_SCORE]: ['model_name', 'estimator_type'],
  [MetricName.EXPERT_TOKENS]: ['model_name', 'layer_id', 'expert_id'],
  [MetricName.STAGE_DURATION]: ['model_name', 'stage'],
} as const satisfies Record<MetricNameValue, readonly string[]>;

/** Upper bounds (seconds) of the native stage and call duration histograms; +Inf is implicit. */
export const DURATION_BUCKETS_SECONDS: readonly number[] = [
  1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5,
];

/** Upper bounds of the complexity score histogram (scores lie in [0, 1]). */
export const COMPLEXITY_BUCKETS: readonly number[] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/**
 * Upper bounds of experts-per-token. Every integer up to 16 (so the natively counted k of any top-k up to 16 lands
 * exactly), then coarser steps for very wide dynamic rules; a mean recorded by hand lands in the next integer.
 */
export const EXPERTS_PER_TOKEN_BUCKETS: readonly number[] = [
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 24, 32, 48, 64, 128, 256,
];

/** The stages of one layer call, as the `stage` label spells them, in the order of the native drain record. */
export const STAGES = ['complexity', 'gating', 'dispatch', 'expert_gemm', 'combine'] as const;
export type StageName = (typeof STAGES)[number];

/** The native error kinds, as the `error_type` label spells them. */
export const NATIVE_ERROR_TYPES = ['validation', 'non_finite', 'internal'] as const;
