/**
 * Public types shared by the router, the layer and the reference. Shapes are row-major; T is the number of
 * tokens, E the number of experts, d the hidden size.
 */
import type { ComplexityEstimator, EstimatorSpec } from './estimators';

/** How router logits become expert scores. */
export type Scoring = 'softmax' | 'sigmoid';

/** Which experts a token keeps. Every rule yields rows of width `maxK`, padded with -1 / 0. */
export type Selection =
  /** The k best experts. */
  | { kind: 'topk'; k: number }
  /** The smallest prefix (by score) whose probability reaches p (Huang et al. 2024), within minK..maxK. */
  | { kind: 'topp'; p: number; minK?: number; maxK?: number }
  /** Every expert with probability at least tau, within minK..maxK. */
  | { kind: 'threshold'; tau: number; minK?: number; maxK?: number }
  /** k = clamp(minK + floor((maxK - minK) * c + 0.5)) from the token's complexity c in [0,1]. */
  | { kind: 'dynamic'; minK: number; maxK: number; estimator?: EstimatorSpec | ComplexityEstimator }
  /** gpt-oss: top-k on the raw logits, then softmax over the chosen k. */
  | { kind: 'gptOss'; k: number };

/** DeepSeek group-limited selection: keep the `topkGroup` best of `nGroup` groups, then apply the rule. */
export interface GroupLimit {
  nGroup: number;
  topkGroup: number;
  /** Group score: the sum of its top-2 (biased) scores (DeepSeek-V3, default) or its max (DeepSeek-V2). */
  score?: 'top2sum' | 'max';
}

/** Statistics of one routing call, computed natively. */
export interface RoutingStats {
  /** Tokens routed to each expert, [E]. */
  expertCounts: Int32Array;
  /** Mean experts per token. */
  meanK: number;
  /** Switch aux loss E * sum_i f_i * P_i, f_i = share of assignments, P_i = mean probability. 1 when uniform. */
  auxLoss: number;
  /** Router z-loss: mean over tokens of logsumexp(logits)^2. */
  zLoss: number;
  /** Normalised entropy of the expert load, in [0,1]; 1 is perfectly balanced. */
  loadBalance: number;
  /** Sum of k over tokens: the number of (token, expert) pairs. */
  assignments: number;
}

/** The result of routing T tokens. */
export interface RoutingResult {
  tokens: number;
  /** Row width of `indices` and `weights`. */
  maxK: number;
  /** [T, maxK] expert ids, best first (ties: lower id), padded with -1. */
  indices: Int32Array;
  /** [T, maxK] combine weights, padded with 0. */
  weights: Float32Array;
  /** [T] experts used per token. */
  k: Int32Array;
  /** [T, E] router logits, when requested. */
  logits?: Float32Array;
  /** [T, E] unbiased scores (softmax probabilities or sigmoids), when requested. */
  probs?: Float32Array;
  /** [T] complexity in [0,1] that drove dynamic k, when the rule is dynamic. */
  complexity?: Float32Array;
  stats: RoutingStats;
}

/** Per-call options of `route` / `routeAsync`. */
export interface RouteOptions {
  /** Return the [T, E] logits. */
  returnLogits?: boolean;
  /** Return the [T, E] unbiased scores. */
  returnProbs?: boolean;
  /** Per-token complexity in [0,1] for the dynamic rule; overrides the router's estimator. */
  complexity?: Float32Array;
  /** Extra inputs for estimators that need them (attention, LM logits, token positions, a tensor to norm). */
  context?: Omit<
    Partial<import('./estimators').ComplexityContext>,
    'x' | 'tokens' | 'hiddenSize' | 'logits' | 'numExperts'
  >;
}
