/**
 * The 17 standard event types of the observability guide. Log queries and alerts match on `event.type`, so these
 * strings are part of the public contract and never change.
 */
export const LogEvent = {
  ROUTING_START: 'routing.start',
  ROUTING_COMPLETE: 'routing.complete',
  ROUTING_ERROR: 'routing.error',
  COMPLEXITY_ESTIMATION: 'complexity.estimation',
  EXPERT_SELECTION: 'expert.selection',
  EXPERT_COMPUTATION: 'expert.computation',
  PERFORMANCE_MEASUREMENT: 'performance.measurement',
  MEMORY_WARNING: 'memory.warning',
  FLOP_COMPUTATION: 'flop.computation',
  MODEL_LOAD: 'model.load',
  MODEL_INFERENCE: 'model.inference',
  MODEL_ERROR: 'model.error',
  SYSTEM_START: 'system.start',
  SYSTEM_SHUTDOWN: 'system.shutdown',
  HEALTH_CHECK: 'health.check',
  SECURITY_WARNING: 'security.warning',
  AUTH_ATTEMPT: 'auth.attempt',
  /** The guide's Python name of {@link LogEvent.AUTH_ATTEMPT} (the same string). */
  AUTHENTICATION: 'auth.attempt',
} as const;

/** One of the {@link LogEvent} strings. */
export type LogEventType = (typeof LogEvent)[keyof typeof LogEvent];
