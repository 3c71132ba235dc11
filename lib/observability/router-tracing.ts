/**
 * The guide's `RouterTracing`: run one stage of a router you compose yourself (your estimator, your selection, your
 * experts) inside a span of the same name as the children of `moe.forward` (`router.complexity_estimation`,
 * `router.expert_selection`, `router.expert_computation`), with the guide's attributes computed from the stage's
 * inputs and result. Sync or async functions; an exception is recorded on the span and rethrown. This package's own
 * Router and MoELayer need none of it: their spans come from the native stage timestamps (forward-spans.ts).
 */
import type { Attributes, Span } from '@opentelemetry/api';
import { expertSpread } from './telemetry-types';
import { isPromiseLike, traceSpan } from './tracing';

/** What a selection function returns: `[indices, weights]`, or an object with them (and optionally k per token). */
export type SelectionResult =
  | readonly [ArrayLike<number> | ArrayLike<ArrayLike<number>>, unknown]
  | { indices: ArrayLike<number> | ArrayLike<ArrayLike<number>>; weights?: unknown; k?: ArrayLike<number> };

export const RouterTracing = {
  /**
   * `estimator(inputs, ...rest)` in a `router.complexity_estimation` span: `component`, `input.shape`, and when the
   * result is numeric `output.shape` and `complexity.mean`, `.std` (population), `.min`, `.max`.
   */
  traceComplexityEstimation<I, R, A extends unknown[]>(
    estimator: (inputs: I, ...rest: A) => R,
    inputs: I,
    ...rest: A
  ): R {
    return traced(
      'router.complexity_estimation',
      { component: 'complexity_estimator', ...shapeAttribute('input.shape', inputs) },
      () => estimator(inputs, ...rest),
      (span, scores) => {
        const shape = shapeOf(scores);
        if (shape) span.setAttribute('output.shape', shape);
        const values = numbersOf(scores);
        if (values && values.length > 0) span.setAttributes(statistics('complexity', values));
      },
    );
  },

  /**
   * `select(complexityScores, numExperts, ...rest)` in a `router.expert_selection` span: `component`,
   * `router.num_experts`, `complexity.shape`, and from the result `routing.active_experts`,
   * `routing.load_balance_cv` (coefficient of variation of the experts' shares, 0 = even) and
   * `routing.avg_experts_per_token` (from `k`, or from per-token rows of indices).
   */
  traceExpertSelection<C, R extends SelectionResult, A extends unknown[]>(
    select: (complexityScores: C, numExperts: number, ...rest: A) => R,
    complexityScores: C,
    numExperts: number,
    ...rest: A
  ): R {
    if (!Number.isInteger(numExperts) || numExperts < 1)
      throw new RangeError(`numExperts: expected an integer >= 1, got ${String(numExperts)}`);
    return traced(
      'router.expert_selection',
      {
        component: 'expert_router',
        'router.num_experts': numExperts,
        ...shapeAttribute('complexity.shape', complexityScores),
      },
      () => select(complexityScores, numExperts, ...rest),
      (span, result) => span.setAttributes(selectionAttributes(result, numExperts)),
    );
  },

  /**
   * `compute(inputs, expertIndices, expertWeights, ...rest)` in a `router.expert_computation` span: `component`,
   * `input.shape`, `expert_indices.shape`, `output.shape`.
   */
  traceExpertComputation<I, X, W, R, A extends unknown[]>(
    compute: (inputs: I, expertIndices: X, expertWeights: W, ...rest: A) => R,
    inputs: I,
    expertIndices: X,
    expertWeights: W,
    ...rest: A
  ): R {
    return traced(
      'router.expert_computation',
      {
        component: 'expert_network',
        ...shapeAttribute('input.shape', inputs),
        ...shapeAttribute('expert_indices.shape', expertIndices),
      },
      () => compute(inputs, expertIndices, expertWeights, ...rest),
      (span, outputs) => {
        const shape = shapeOf(outputs);
        if (shape) span.setAttribute('output.shape', shape);
      },
    );
  },
};

/**
 * Runs `fn` in a span; `describe` adds attributes from its (awaited) result, only when the span records, and never
 * turns the stage's success into a failure (a result it cannot read just gets no attributes).
 */
function traced<R>(
  name: string,
  attributes: Attributes,
  fn: () => R,
  describe: (span: Span, result: Awaited<R>) => void,
): R {
  return traceSpan(
    name,
    (span) => {
      const annotate = (value: Awaited<R>) => {
        if (!span.isRecording()) return;
        try {
          describe(span, value);
        } catch {
          // (an unexpected result shape: the span keeps the attributes it had)
        }
      };
      const result = fn();
      if (isPromiseLike(result))
        return result.then((value) => {
          annotate(value);
          return value;
        }) as R;
      annotate(result as Awaited<R>);
      return result;
    },
    attributes,
  );
}

/** `[d0, d1, ...]` of a tensor-like (`shape` or `dims`), a typed array or an array; undefined otherwise. */
function shapeOf(value: unknown): string | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  const dims = (value as { shape?: unknown }).shape ?? (value as { dims?: unknown }).dims;
  if (Array.isArray(dims) && dims.every((n) => typeof n === 'number')) return `[${dims.join(', ')}]`;
  if (ArrayBuffer.isView(value) && !(value instanceof DataView))
    return `[${(value as unknown as ArrayLike<number>).length}]`;
  if (Array.isArray(value)) {
    const inner =
      value.length > 0 && (Array.isArray(value[0]) || ArrayBuffer.isView(value[0])) ? shapeOf(value[0]) : '';
    return inner === undefined ? undefined : `[${value.length}${inner ? ', ' + inner.slice(1, -1) : ''}]`;
  }
  return undefined;
}

function shapeAttribute(key: string, value: unknown): Attributes {
  const shape = shapeOf(value);
  return shape ? { [key]: shape } : {};
}

/** The numbers of a typed array or a (nested) array of numbers; undefined for anything else. */
function numbersOf(value: unknown): number[] | undefined {
  if (
    ArrayBuffer.isView(value) &&
    !(value instanceof DataView) &&
    !(value instanceof BigInt64Array || value instanceof BigUint64Array)
  )
    return Array.from(value as unknown as ArrayLike<number>);
  if (!Array.isArray(value)) return undefined;
  const out: number[] = [];
  for (const v of value) {
    if (typeof v === 'number') out.push(v);
    else {
      const inner = numbersOf(v);
      if (!inner) return undefined;
      for (const n of inner) out.push(n);
    }
  }
  return out;
}

function statistics(prefix: string, values: number[]): Attributes {
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    sum += v;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  const mean = sum / values.length;
  let squares = 0;
  for (const v of values) squares += (v - mean) ** 2;
  return {
    [`${prefix}.mean`]: mean,
    [`${prefix}.std`]: Math.sqrt(squares / values.length),
    [`${prefix}.min`]: min,
    [`${prefix}.max`]: max,
  };
}

function selectionAttributes(result: SelectionResult, numExperts: number): Attributes {
  const indices = Array.isArray(result) ? result[0] : (result as { indices?: unknown }).indices;
  const k = Array.isArray(result) ? undefined : (result as { k?: ArrayLike<number> }).k;
  const rows = Array.isArray(indices) && indices.length > 0 && typeof indices[0] !== 'number';
  const flat = numbersOf(indices);
  if (!flat) return {};
  const counts = new Array<number>(numExperts).fill(0);
  let chosen = 0;
  for (const e of flat)
    if (Number.isInteger(e) && e >= 0 && e < numExperts) {
      counts[e]++;
      chosen++;
    }
  const spread = expertSpread(counts);
  const attributes: Attributes = {
    'routing.output_shape': shapeOf(indices) ?? `[${flat.length}]`,
    'routing.active_experts': spread.activeExperts,
  };
  if (chosen > 0) attributes['routing.load_balance_cv'] = spread.loadBalanceCv;
  if (k && k.length > 0)
    attributes['routing.avg_experts_per_token'] = Array.from(k).reduce((a, b) => a + b, 0) / k.length;
  else if (rows) attributes['routing.avg_experts_per_token'] = chosen / (indices as ArrayLike<unknown>).length;
  return attributes;
}
