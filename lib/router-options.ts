/**
 * Router options: their validation, their defaults, and the plain struct that crosses into native code.
 * One source of truth for what a valid router is; lib/router.ts and the reference both read `ResolvedRouting`.
 */
import { RouterConfigurationError, describe } from './errors';
import { ComplexityEstimator, createEstimator } from './estimators';
import type { ReferenceRouterConfig } from './reference/routing';
import type { GroupLimit, Scoring, Selection } from './types';
import { requireFloat32, requireInt, requireNumber, requireOneOf, requireFinite } from './validate';

/** Options of `new Router(...)`. */
export interface RouterOptions {
  numExperts: number;
  hiddenSize: number;
  /** Gate weight [E, d] in Hugging Face layout. Copied (and packed) at construction. */
  gateWeight: Float32Array;
  scoring?: Scoring;
  selection?: Selection;
  /** Renormalise the kept weights to sum 1. */
  normalize?: boolean;
  /** Multiply the weights (DeepSeek `routed_scaling_factor`). */
  scale?: number;
  /** Per-expert bias added to the scores for choosing only (DeepSeek `e_score_correction_bias`). */
  bias?: Float32Array;
  /** Per-expert bias added to the logits themselves (a gate Linear with bias, as in gpt-oss). */
  logitBias?: Float32Array;
  groups?: GroupLimit;
  /** Compute threads; default: all cores. */
  threads?: number;
  /**
   * Where routing runs: 'cpu' (default), 'cuda' (the GPU plugin; BackendError when it cannot run), or 'auto'
   * (the GPU when available; the CPU when the GPU cannot take this router, see `Router.cpuFallbackReason`). A
   * layer built on this router asks for the same backend unless it says otherwise.
   */
  backend?: import('./cuda').BackendName;
}

/** Everything a routing call needs, validated and with defaults applied: the reference's config plus threads. */
export interface ResolvedRouting extends ReferenceRouterConfig {
  threads: number;
  estimator?: ComplexityEstimator;
}

const SELECTIONS = ['topk', 'topp', 'threshold', 'dynamic', 'gptOss'] as const;
export const MAX_EXPERTS = 65536;
export const MAX_HIDDEN = 1 << 20;

/** Validates options; throws RouterConfigurationError naming the option. */
export function resolveRouting(opts: RouterOptions, defaultThreads: number): ResolvedRouting {
  if (typeof opts !== 'object' || opts === null)
    throw new RouterConfigurationError(`Router options: expected an object, got ${describe(opts)}`);
  const E = requireInt('numExperts', opts.numExperts, 1, MAX_EXPERTS);
  const d = requireInt('hiddenSize', opts.hiddenSize, 1, MAX_HIDDEN);
  const scoring = requireOneOf('scoring', opts.scoring ?? 'softmax', ['softmax', 'sigmoid'] as const);
  const sel = opts.selection ?? { kind: 'topk', k: Math.min(2, E) };
  if (typeof sel !== 'object' || sel === null)
    throw new RouterConfigurationError(
      `selection: expected an object such as { kind: 'topk', k: 2 }, got ${describe(sel)}`,
    );
  requireOneOf('selection.kind', sel.kind, SELECTIONS);

  let nGroup = 0;
  let topkGroup = 0;
  let groupScore: 'top2sum' | 'max' = 'top2sum';
  if (opts.groups !== undefined) {
    if (typeof opts.groups !== 'object' || opts.groups === null)
      throw new RouterConfigurationError(
        `groups: expected { nGroup, topkGroup, score? } (or no groups option), got ${describe(opts.groups)}`,
      );
    nGroup = requireInt('groups.nGroup', opts.groups.nGroup, 1, Math.min(E, 1024));
    if (E % nGroup !== 0)
      throw new RouterConfigurationError(`groups.nGroup: ${nGroup} does not divide numExperts=${E}`);
    topkGroup = requireInt('groups.topkGroup', opts.groups.topkGroup, 1, nGroup);
    groupScore = requireOneOf('groups.score', opts.groups.score ?? 'top2sum', ['top2sum', 'max'] as const);
  }
  // The experts a token can still choose from once groups are limited.
  const reachable = nGroup > 0 ? topkGroup * (E / nGroup) : E;

  let k = 1;
  let p = 1;
  let tau = 0;
  let minK = 1;
  let maxK = 1;
  let estimator: ComplexityEstimator | undefined;
  switch (sel.kind) {
    case 'topk':
    case 'gptOss':
      k = requireInt('selection.k', sel.k, 1, reachable);
      minK = maxK = k;
      break;
    case 'topp':
    case 'threshold':
      if (sel.kind === 'topp') p = requireNumber('selection.p', sel.p, 0, 1, true);
      else tau = requireNumber('selection.tau', sel.tau, 0, 1);
      maxK = requireInt('selection.maxK', sel.maxK ?? reachable, 1, reachable);
      minK = requireInt('selection.minK', sel.minK ?? 1, 1, maxK);
      k = maxK;
      break;
    case 'dynamic':
      maxK = requireInt('selection.maxK', sel.maxK, 1, reachable);
      minK = requireInt('selection.minK', sel.minK, 1, maxK);
      k = maxK;
      estimator = createEstimator(sel.estimator);
      break;
  }

  const scale = requireNumber('scale', opts.scale ?? 1, 0, 3.4e38, true); // it is applied in float32
  const threads = requireInt('threads', opts.threads ?? defaultThreads, 1, 1024);
  return {
    numExperts: E,
    hiddenSize: d,
    scoring,
    selection: sel.kind,
    k,
    p,
    tau,
    minK,
    maxK,
    nGroup,
    topkGroup,
    groupScore,
    normalize: opts.normalize ?? false,
    scale,
    threads,
    estimator,
  };
}

/** Checks the weight arrays of the options against the resolved shape. */
export function checkRouterWeights(opts: RouterOptions, r: ResolvedRouting): void {
  const gate = requireFloat32(
    'gateWeight',
    opts.gateWeight,
    { length: r.numExperts * r.hiddenSize },
    RouterConfigurationError,
  );
  requireFinite('gateWeight', gate, RouterConfigurationError);
  for (const name of ['bias', 'logitBias'] as const) {
    const v = opts[name];
    if (v === undefined) continue;
    requireFloat32(name, v, { length: r.numExperts }, RouterConfigurationError);
    requireFinite(name, v, RouterConfigurationError);
  }
}

/** The struct native/binding/router_wrap.cc reads. */
export function toNativeConfig(r: ResolvedRouting): Record<string, number | boolean> {
  return {
    numExperts: r.numExperts,
    hiddenSize: r.hiddenSize,
    scoring: r.scoring === 'softmax' ? 0 : 1,
    selection: SELECTIONS.indexOf(r.selection),
    k: r.k,
    p: r.p,
    tau: r.tau,
    minK: r.minK,
    maxK: r.maxK,
    nGroup: r.nGroup,
    topkGroup: r.topkGroup,
    groupScore: r.groupScore === 'top2sum' ? 0 : 1,
    normalize: r.normalize,
    scale: r.scale,
  };
}
