/**
 * Complexity estimators: per-token scores c in [0,1] that drive dynamic k. The heavy raw signals (norms,
 * entropies over attention spans and vocabularies) are computed natively; this file turns them into [0,1].
 *
 * Normalisation is by calibration, never by a raw sigmoid (a sigmoid of a non-negative entropy is always
 * >= 0.5, which pins k). Each estimator owns a Calibrator:
 *  - 'zscore' (default): c = Phi((raw - mean) / std), the normal CDF of the standardised signal. Before
 *    `calibrate()` is called, mean and std are running statistics over every batch seen so far (the current
 *    one included); after it, they are frozen, which makes routing reproducible.
 *  - 'quantile': c = the empirical CDF of the calibration samples (linear between knots).
 *  - 'none': raw clamped to [0,1]; for signals already spread over [0,1] (schedules, custom scores).
 */
import { ValidationError, RouterConfigurationError, describe } from './errors';
import { callNative, native } from './native';
import { requireOneOf } from './validate';

/** Inputs an estimator may read. `x` is always there; the rest only when the estimator needs it. */
export interface ComplexityContext {
  /** Hidden states [T, d]. */
  x: Float32Array;
  tokens: number;
  hiddenSize: number;
  /** Router logits [T, E] (router_entropy). */
  logits?: Float32Array;
  numExperts?: number;
  /** Attention probabilities [H, T, S] or [T, S] (attention_entropy). */
  attention?: Float32Array;
  heads?: number;
  span?: number;
  /** LM logits [T, V] (perplexity_proxy). */
  lmLogits?: Float32Array;
  vocabSize?: number;
  /** Token positions [T] (threshold schedule); default 0..T-1. */
  positions?: ArrayLike<number>;
  /** A [T, n] tensor whose row norms are the signal (gradient_norm); default x. */
  tensor?: Float32Array;
}

export type EstimatorName =
  'router_entropy' | 'gradient_norm' | 'attention_entropy' | 'perplexity_proxy' | 'threshold' | 'custom';

export type CalibrationMode = 'zscore' | 'quantile' | 'none';
const CALIBRATION_MODES = ['zscore', 'quantile', 'none'] as const;

/** Declarative estimator choice, as accepted by `Selection.estimator`. */
export type EstimatorSpec =
  | EstimatorName
  | { name: 'router_entropy'; calibration?: CalibrationMode }
  | { name: 'gradient_norm'; norm?: 'l2' | 'l1'; calibration?: CalibrationMode }
  | { name: 'attention_entropy'; reduce?: 'mean' | 'max'; calibration?: CalibrationMode }
  | { name: 'perplexity_proxy'; temperature?: number; calibration?: CalibrationMode }
  | { name: 'threshold'; boundaries: number[] }
  | {
      name: 'custom';
      scores?: Float32Array;
      fn?: (ctx: ComplexityContext) => Float32Array;
      calibration?: CalibrationMode;
    };

/** Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7). */
function erf(x: number): number {
  const sign = x < 0 ? -1 : 1;
  const ax = Math.abs(x);
  const t = 1 / (1 + 0.3275911 * ax);
  const y =
    1 -
    ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) *
      t *
      Math.exp(-ax * ax);
  return sign * y;
}

/** Standard normal CDF. */
export function normalCdf(z: number): number {
  return 0.5 * (1 + erf(z / Math.SQRT2));
}

/** Maps raw signals to [0,1]; see the file comment for the modes. */
export class Calibrator {
  private count = 0;
  private mean = 0;
  private m2 = 0;
  private frozen = false;
  private knots: Float64Array | undefined;

  readonly mode: CalibrationMode;

  constructor(mode: CalibrationMode) {
    this.mode = requireOneOf('calibration', mode, CALIBRATION_MODES);
  }

  /** Whether `fit` has frozen the mapping. */
  get calibrated(): boolean {
    return this.frozen;
  }

  /** Freezes the mapping on these samples (at least 2 finite values). */
  fit(samples: ArrayLike<number>): void {
    const values = Array.from(samples)
      .filter(Number.isFinite)
      .sort((a, b) => a - b);
    if (values.length < 2)
      throw new ValidationError(`calibrate: expected at least 2 finite samples, got ${values.length}`);
    this.count = 0;
    this.mean = 0;
    this.m2 = 0;
    for (const v of values) this.push(v);
    const knotCount = Math.min(values.length, 1025);
    this.knots = new Float64Array(knotCount);
    for (let i = 0; i < knotCount; i++) this.knots[i] = values[Math.round((i * (values.length - 1)) / (knotCount - 1))];
    this.frozen = true;
  }

  private push(v: number): void {
    if (!Number.isFinite(v)) return; // one bad batch must not poison the running statistics for good
    this.count++;
    const delta = v - this.mean;
    this.mean += delta / this.count;
    this.m2 += delta * (v - this.mean);
  }

  /**
   * @internal The mapping in the form the CUDA calibrate kernel takes (cuda/gating.cu): mode 0 none, 1 running
   * zscore, 2 frozen zscore, 3 quantile; state = (count, mean, M2). Undefined when it cannot run there (quantile
   * before calibrate(), which the host path reports).
   */
  deviceState(): { calibration: number; state: Float64Array; knots: Float64Array | null } | undefined {
    if (this.mode === 'none') return { calibration: 0, state: new Float64Array(3), knots: null };
    if (this.mode === 'quantile')
      return this.knots ? { calibration: 3, state: new Float64Array(3), knots: this.knots } : undefined;
    return { calibration: this.frozen ? 2 : 1, state: Float64Array.of(this.count, this.mean, this.m2), knots: null };
  }

  /**
   * @internal After a device call with the running zscore: `state` is what the device made of `sent` (the
   * statistics the call started from) and its batch. When nothing else was folded in meanwhile it becomes the
   * statistics; otherwise (another call of a shared estimator finished first) the batch's own count, mean and M2
   * are recovered from the two and merged into the current statistics (Chan's formula), so no batch is lost.
   */
  absorbDeviceState(state: Float64Array, sent?: Float64Array): void {
    if (this.mode !== 'zscore' || this.frozen) return;
    if (!sent || (this.count === sent[0] && this.mean === sent[1] && this.m2 === sent[2])) {
      this.count = state[0];
      this.mean = state[1];
      this.m2 = state[2];
      return;
    }
    const n = state[0] - sent[0];
    if (!(n > 0)) return;
    const mean = (state[0] * state[1] - sent[0] * sent[1]) / n;
    const delta = mean - sent[1];
    const m2 = Math.max(0, state[2] - sent[2] - (delta * delta * sent[0] * n) / state[0]);
    const total = this.count + n;
    const shift = mean - this.mean;
    this.mean += (shift * n) / total;
    this.m2 += m2 + (shift * shift * this.count * n) / total;
    this.count = total;
  }

  /** raw -> [0,1]. Updates the running statistics first unless calibrated. */
  apply(raw: Float32Array): Float32Array {
    const out = new Float32Array(raw.length);
    if (this.mode === 'none') {
      for (let i = 0; i < raw.length; i++) out[i] = Math.min(1, Math.max(0, raw[i]));
      return out;
    }
    if (!this.frozen) for (let i = 0; i < raw.length; i++) this.push(raw[i]);
    if (this.mode === 'quantile') {
      if (!this.knots) throw new ValidationError('calibration "quantile" needs calibrate(samples) before use');
      for (let i = 0; i < raw.length; i++) out[i] = empiricalCdf(this.knots, raw[i]);
      return out;
    }
    const std = this.count > 1 ? Math.sqrt(this.m2 / (this.count - 1)) : 0;
    for (let i = 0; i < raw.length; i++) out[i] = std > 0 ? normalCdf((raw[i] - this.mean) / std) : 0.5;
    return out;
  }
}

function empiricalCdf(knots: Float64Array, v: number): number {
  const n = knots.length;
  if (v <= knots[0]) return 0;
  if (v >= knots[n - 1]) return 1;
  let lo = 0;
  let hi = n - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (knots[mid] <= v) lo = mid;
    else hi = mid;
  }
  const span = knots[hi] - knots[lo];
  const frac = span > 0 ? (v - knots[lo]) / span : 0;
  return (lo + frac) / (n - 1);
}

/** Base class: `raw` gives the uncalibrated signal, `estimate` the calibrated score in [0,1]. */
export abstract class ComplexityEstimator {
  abstract readonly name: EstimatorName;
  /** True when the estimator reads router logits (the router then computes them first). */
  readonly needsLogits: boolean = false;
  readonly calibrator: Calibrator;

  /** @param calibration default 'zscore' (null too) */
  constructor(calibration?: CalibrationMode | null) {
    this.calibrator = new Calibrator(calibration ?? 'zscore');
  }

  /** The raw per-token signal [T]. */
  abstract raw(ctx: ComplexityContext): Float32Array;

  /**
   * Per-token complexity [T] in [0,1].
   * @throws ValidationError when a token's raw signal is not finite (NaN or Inf in its input; negative attention
   * weights), before the calibration's running statistics see it.
   */
  estimate(ctx: ComplexityContext): Float32Array {
    const raw = this.raw(ctx);
    for (let i = 0; i < raw.length; i++) {
      if (!Number.isFinite(raw[i])) {
        throw new ValidationError(
          `${this.name} estimator: the signal of token ${i} is ${raw[i]} (NaN or Inf in its input` +
            (this.name === 'attention_entropy' ? ', or a negative attention weight)' : ')'),
        );
      }
    }
    return this.calibrator.apply(raw);
  }

  /** Freezes the calibration on raw samples, or on the raw signals of sample contexts. */
  calibrate(samples: ArrayLike<number> | ComplexityContext | ComplexityContext[]): this {
    const contexts = Array.isArray(samples) ? samples : [samples];
    if (
      contexts.length > 0 &&
      typeof contexts[0] === 'object' &&
      contexts[0] !== null &&
      'x' in (contexts[0] as object)
    ) {
      // (appended one by one: a spread of a long context's signals overflows the call stack)
      const values: number[] = [];
      for (const ctx of contexts as ComplexityContext[]) for (const v of this.raw(ctx)) values.push(v);
      this.calibrator.fit(values);
    } else {
      this.calibrator.fit(samples as ArrayLike<number>);
    }
    return this;
  }
}

function need<T>(value: T | undefined, what: string, estimator: string): T {
  if (value === undefined) throw new ValidationError(`${estimator}: needs context.${what}, which was not given`);
  return value;
}

/** Normalised entropy of softmax(router logits): how undecided the router is. */
export class RouterEntropyEstimator extends ComplexityEstimator {
  readonly name = 'router_entropy';
  override readonly needsLogits = true;
  raw(ctx: ComplexityContext): Float32Array {
    const logits = need(ctx.logits, 'logits', this.name);
    const E = need(ctx.numExperts, 'numExperts', this.name);
    const out = new Float32Array(ctx.tokens);
    callNative(this.name, () => native().logitEntropy(logits, ctx.tokens, E, 1, out));
    return out;
  }
}

/** L2 (or L1) norm of each row of `context.tensor` (hidden states by default). */
export class GradientNormEstimator extends ComplexityEstimator {
  readonly name = 'gradient_norm';
  readonly norm: 'l2' | 'l1';
  constructor(norm: 'l2' | 'l1' = 'l2', calibration: CalibrationMode = 'zscore') {
    super(calibration);
    this.norm = requireOneOf('gradient_norm.norm', norm, ['l2', 'l1'] as const);
  }
  raw(ctx: ComplexityContext): Float32Array {
    const tensor = ctx.tensor ?? ctx.x;
    if (tensor.length === 0)
      throw new ValidationError(
        'gradient_norm: needs the hidden states x or context.tensor (routeLogits has only logits: pass context.tensor, or complexity)',
      );
    if (tensor.length % ctx.tokens !== 0) {
      throw new ValidationError(
        `gradient_norm: context.tensor length ${tensor.length} is not a multiple of T=${ctx.tokens}`,
      );
    }
    const out = new Float32Array(ctx.tokens);
    const width = tensor.length / ctx.tokens;
    callNative(this.name, () => native().rowNorms(tensor, ctx.tokens, width, this.norm === 'l1' ? 1 : 2, out));
    return out;
  }
}

/** Entropy of the token's attention row over the span, normalised by log S; mean or max over heads. */
export class AttentionEntropyEstimator extends ComplexityEstimator {
  readonly name = 'attention_entropy';
  readonly reduce: 'mean' | 'max';
  constructor(reduce: 'mean' | 'max' = 'mean', calibration: CalibrationMode = 'zscore') {
    super(calibration);
    this.reduce = requireOneOf('attention_entropy.reduce', reduce, ['mean', 'max'] as const);
  }
  raw(ctx: ComplexityContext): Float32Array {
    const attention = need(ctx.attention, 'attention', this.name);
    const heads = ctx.heads ?? 1;
    const span = ctx.span ?? attention.length / (heads * ctx.tokens);
    if (!Number.isInteger(span) || heads * ctx.tokens * span !== attention.length) {
      throw new ValidationError(
        `attention_entropy: context.attention has ${attention.length} elements, expected heads*T*S = ${heads}*${ctx.tokens}*S`,
      );
    }
    const out = new Float32Array(ctx.tokens);
    callNative(this.name, () =>
      native().attentionEntropy(attention, heads, ctx.tokens, span, this.reduce === 'max', out),
    );
    return out;
  }
}

/** Entropy of softmax(LM logits / temperature), normalised by log V. */
export class PerplexityProxyEstimator extends ComplexityEstimator {
  readonly name = 'perplexity_proxy';
  constructor(
    readonly temperature = 1,
    calibration: CalibrationMode = 'zscore',
  ) {
    super(calibration);
    if (!(temperature > 0) || !Number.isFinite(temperature)) {
      throw new RouterConfigurationError(
        `perplexity_proxy.temperature: expected a finite number > 0, got ${describe(temperature)}`,
      );
    }
  }
  raw(ctx: ComplexityContext): Float32Array {
    const lm = need(ctx.lmLogits, 'lmLogits', this.name);
    const V = ctx.vocabSize ?? lm.length / ctx.tokens;
    if (!Number.isInteger(V) || V * ctx.tokens !== lm.length) {
      throw new ValidationError(
        `perplexity_proxy: context.lmLogits has ${lm.length} elements, expected [T=${ctx.tokens}, V]`,
      );
    }
    const out = new Float32Array(ctx.tokens);
    callNative(this.name, () => native().logitEntropy(lm, ctx.tokens, V, this.temperature, out));
    return out;
  }
}

/**
 * A position schedule: c = (number of boundaries <= position) / boundaries.length. With boundaries [64, 256],
 * positions 0..63 get 0, 64..255 get 0.5, and 256+ get 1.
 */
export class ThresholdScheduleEstimator extends ComplexityEstimator {
  readonly name = 'threshold';
  readonly boundaries: readonly number[];
  constructor(boundaries: number[]) {
    super('none');
    if (!Array.isArray(boundaries) || boundaries.length === 0 || boundaries.some((b) => !Number.isFinite(b))) {
      throw new RouterConfigurationError(
        `threshold.boundaries: expected a non-empty array of finite numbers, got ${describe(boundaries)}`,
      );
    }
    this.boundaries = Object.freeze([...boundaries].sort((a, b) => a - b));
  }
  raw(ctx: ComplexityContext): Float32Array {
    const out = new Float32Array(ctx.tokens);
    for (let t = 0; t < ctx.tokens; t++) {
      const pos = ctx.positions ? ctx.positions[t] : t;
      let passed = 0;
      while (passed < this.boundaries.length && this.boundaries[passed] <= pos) passed++;
      out[t] = passed / this.boundaries.length;
    }
    return out;
  }
}

/** User scores: a fixed Float32Array [T], or a callback computing one per call. */
export class CustomEstimator extends ComplexityEstimator {
  readonly name = 'custom';
  constructor(
    private readonly source: Float32Array | ((ctx: ComplexityContext) => Float32Array),
    calibration: CalibrationMode = 'none',
  ) {
    super(calibration ?? 'none');
  }
  raw(ctx: ComplexityContext): Float32Array {
    const scores = typeof this.source === 'function' ? this.source(ctx) : this.source;
    if (!(scores instanceof Float32Array) || scores.length !== ctx.tokens) {
      throw new ValidationError(
        `custom estimator: expected a Float32Array of T=${ctx.tokens} scores, got ${describe(scores)}`,
      );
    }
    for (let i = 0; i < scores.length; i++) {
      if (!Number.isFinite(scores[i])) throw new ValidationError(`custom estimator: score ${i} is ${scores[i]}`);
    }
    return scores;
  }
}

/** Builds an estimator from a spec (or returns the instance given). */
export function createEstimator(spec: EstimatorSpec | ComplexityEstimator = 'router_entropy'): ComplexityEstimator {
  if (spec instanceof ComplexityEstimator) return spec;
  if (typeof spec !== 'string' && (typeof spec !== 'object' || spec === null)) {
    throw new RouterConfigurationError(
      `estimator: expected a name, a spec such as { name: 'router_entropy' } or an estimator, got ${describe(spec)}`,
    );
  }
  const s = typeof spec === 'string' ? ({ name: spec } as Exclude<EstimatorSpec, string>) : spec;
  const calibration = 'calibration' in s && s.calibration ? s.calibration : undefined;
  switch (s.name) {
    case 'router_entropy':
      return new RouterEntropyEstimator(calibration ?? 'zscore');
    case 'gradient_norm':
      return new GradientNormEstimator(s.norm ?? 'l2', calibration ?? 'zscore');
    case 'attention_entropy':
      return new AttentionEntropyEstimator(s.reduce ?? 'mean', calibration ?? 'zscore');
    case 'perplexity_proxy':
      return new PerplexityProxyEstimator(s.temperature ?? 1, calibration ?? 'zscore');
    case 'threshold':
      return new ThresholdScheduleEstimator(s.boundaries);
    case 'custom': {
      const source = s.fn ?? s.scores;
      if (!source)
        throw new RouterConfigurationError('custom estimator: give `scores` (Float32Array) or `fn` (callback)');
      return new CustomEstimator(source, calibration ?? 'none');
    }
    default:
      throw new RouterConfigurationError(
        `estimator: expected one of router_entropy, gradient_norm, attention_entropy, perplexity_proxy, threshold, custom; got ${describe((s as { name: unknown }).name)}`,
      );
  }
}
