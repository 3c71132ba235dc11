/**
 * `DynamicRouter`: the earlier Python edition's entry point, rebuilt on `Router` so ported code keeps working.
 * Each token gets between minExperts and maxExperts experts from its complexity. New code should use `Router`
 * with `selection: { kind: 'dynamic', ... }` directly.
 */
import { createEstimator, type ComplexityEstimator, type EstimatorName } from './estimators';
import { ValidationError } from './errors';
import { native } from './native';
import { Router } from './router';
import type { Selection } from './types';
import { requireInt, requireNumber } from './validate';

export interface DynamicRouterOptions {
  inputDim: number;
  numExperts: number;
  minExperts?: number;
  maxExperts: number;
  complexityEstimator?: EstimatorName | ComplexityEstimator;
  /** 'top_k': k from complexity. 'threshold': experts with probability >= 1/numExperts, within min..max. */
  routingStrategy?: 'top_k' | 'threshold';
  /** Std of Gaussian noise added to the router logits (exploration during training); 0 = none. */
  noiseFactor?: number;
  /** Seed of the gate initialisation (normal, std 0.02) and of the noise. */
  seed?: number;
  /** [numExperts, inputDim]; default: a seeded normal init. */
  gateWeight?: Float32Array;
  threads?: number;
}

export interface DynamicRoutingInfo {
  avgExpertsPerToken: number;
  totalExpertCalls: number;
  /** 1 - avgExpertsPerToken / maxExperts. */
  flopReduction: number;
  /** Share of tokens that used each expert, [numExperts]. */
  expertUtilization: number[];
  complexityStats: { mean: number; std: number; min: number; max: number };
}

export interface DynamicRoutingResult {
  /** [T, maxExperts], -1 padded. */
  expertIndices: Int32Array;
  /** [T, maxExperts], 0 padded. */
  expertWeights: Float32Array;
  numExpertsPerToken: Int32Array;
  complexityScores: Float32Array;
  routingInfo: DynamicRoutingInfo;
}

export interface ExpertUsageStats {
  totalTokens: number;
  expertCounts: number[];
  expertUtilization: number[];
  /** Normalised entropy of the cumulative expert load, in [0,1]. */
  loadBalanceScore: number;
  mostUsedExpert: number;
  leastUsedExpert: number;
}

/** A 32-bit xorshift stream for the noise, advanced across calls. */
function normalStream(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  const uniform = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

export class DynamicRouter {
  readonly router: Router;
  readonly estimator: ComplexityEstimator;
  readonly minExperts: number;
  readonly maxExperts: number;
  readonly noiseFactor: number;
  readonly routingStrategy: 'top_k' | 'threshold';
  private readonly noise: () => number;
  private readonly usage: Float64Array;
  private totalTokens = 0;

  constructor(opts: DynamicRouterOptions) {
    const E = requireInt('numExperts', opts.numExperts, 1, 65536);
    const d = requireInt('inputDim', opts.inputDim, 1, 1 << 20);
    this.maxExperts = requireInt('maxExperts', opts.maxExperts, 1, E);
    this.minExperts = requireInt('minExperts', opts.minExperts ?? 1, 1, this.maxExperts);
    this.noiseFactor = requireNumber('noiseFactor', opts.noiseFactor ?? 0, 0, 1e6);
    this.routingStrategy = opts.routingStrategy ?? 'top_k';
    if (this.routingStrategy !== 'top_k' && this.routingStrategy !== 'threshold') {
      throw new ValidationError(
        `routingStrategy: expected 'top_k' or 'threshold', got ${JSON.stringify(this.routingStrategy)}`,
      );
    }
    const seed = opts.seed ?? 0;
    this.estimator = createEstimator(opts.complexityEstimator ?? 'gradient_norm');
    let gateWeight = opts.gateWeight;
    if (!gateWeight) {
      gateWeight = new Float32Array(E * d);
      native().bench.fillNormal(gateWeight, seed, 0.02);
    }
    const selection: Selection =
      this.routingStrategy === 'top_k'
        ? { kind: 'dynamic', minK: this.minExperts, maxK: this.maxExperts, estimator: this.estimator }
        : { kind: 'threshold', tau: 1 / E, minK: this.minExperts, maxK: this.maxExperts };
    this.router = new Router({ numExperts: E, hiddenSize: d, gateWeight, selection, threads: opts.threads });
    this.noise = normalStream(seed + 1);
    this.usage = new Float64Array(E);
  }

  /** Routes x [T, inputDim]. */
  route(x: Float32Array): DynamicRoutingResult {
    const T = this.router.tokensOf(x, 'x');
    const needsLogits = this.noiseFactor > 0 || this.estimator.needsLogits;
    const logits = needsLogits ? this.router.logits(x) : undefined;
    if (logits && this.noiseFactor > 0)
      for (let i = 0; i < logits.length; i++) logits[i] += this.noiseFactor * this.noise();
    const complexity = this.estimator.estimate({
      x,
      tokens: T,
      hiddenSize: this.router.hiddenSize,
      logits,
      numExperts: this.router.numExperts,
    });
    const result = logits ? this.router.routeLogits(logits, { complexity }) : this.router.route(x, { complexity });
    const counts = result.stats.expertCounts;
    for (let e = 0; e < counts.length; e++) this.usage[e] += counts[e];
    this.totalTokens += T;
    let mean = 0;
    let min = Infinity;
    let max = -Infinity;
    for (const c of complexity) {
      mean += c / T;
      min = Math.min(min, c);
      max = Math.max(max, c);
    }
    let variance = 0;
    for (const c of complexity) variance += (c - mean) ** 2 / T;
    return {
      expertIndices: result.indices,
      expertWeights: result.weights,
      numExpertsPerToken: result.k,
      complexityScores: complexity,
      routingInfo: {
        avgExpertsPerToken: result.stats.meanK,
        totalExpertCalls: result.stats.assignments,
        flopReduction: 1 - result.stats.meanK / this.maxExperts,
        expertUtilization: Array.from(counts, (c) => c / T),
        complexityStats: { mean, std: Math.sqrt(variance), min, max },
      },
    };
  }

  /** Cumulative expert usage over every route() call so far. */
  getExpertUsageStats(): ExpertUsageStats {
    const total = this.usage.reduce((a, b) => a + b, 0);
    let entropy = 0;
    for (const c of this.usage) if (c > 0) entropy -= (c / total) * Math.log(c / total);
    const counts = Array.from(this.usage);
    const E = counts.length;
    return {
      totalTokens: this.totalTokens,
      expertCounts: counts,
      expertUtilization: counts.map((c) => (this.totalTokens ? c / this.totalTokens : 0)),
      loadBalanceScore: E > 1 && total > 0 ? entropy / Math.log(E) : total > 0 ? 1 : 0,
      mostUsedExpert: counts.indexOf(Math.max(...counts)),
      leastUsedExpert: counts.indexOf(Math.min(...counts)),
    };
  }
}
