/**
 * dynamic-moe-router-kit: Mixture-of-Experts routing and layers with native CPU kernels.
 * The public API is re-exported here; see README.md for examples.
 */
export { Router } from './router';
export type { RouterOptions } from './router-options';
export type { FromConfigOverrides } from './models/router-config';
export type { Selection, Scoring, GroupLimit, RoutingResult, RoutingStats, RouteOptions } from './types';
export {
  ComplexityEstimator,
  Calibrator,
  RouterEntropyEstimator,
  GradientNormEstimator,
  AttentionEntropyEstimator,
  PerplexityProxyEstimator,
  ThresholdScheduleEstimator,
  CustomEstimator,
  createEstimator,
  type ComplexityContext,
  type EstimatorSpec,
  type EstimatorName,
  type CalibrationMode,
} from './estimators';
export {
  DynamicMoEError,
  RouterConfigurationError,
  ValidationError,
  ExpertDispatchError,
  ModelLoadError,
  BackendError,
} from './errors';
export { backendInfo, type BackendInfo } from './backend-info';
export { cudaStatus, type BackendName, type CudaStatus } from './cuda';
export type { CudaDeviceInfo } from './native';
export {
  MoELayer,
  type MoELayerOptions,
  type ExpertWeights,
  type ExpertBiases,
  type ExpertActivation,
  type ResolvedActivation,
  type E4m3ExpertWeights,
  type E4m3Matrix,
  type WeightDType,
  type StackedExpertWeights,
  type SharedExpertOptions,
  type LayerStats,
  type ForwardResult,
  type ForwardOptions,
  type DeviceForwardOptions,
} from './layer';
export type { FromPretrainedOptions } from './models/pretrained';
export { readNpy, writeNpy } from './models/npy';
export {
  DynamicRouter,
  type DynamicRouterOptions,
  type DynamicRoutingResult,
  type DynamicRoutingInfo,
  type ExpertUsageStats,
} from './dynamic-router';
export * from './observability';
