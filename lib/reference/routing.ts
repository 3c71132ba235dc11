/**
 * The float64 reference of every routing rule: plain, slow and readable. Native results are tested against
 * it, and the fidelity bench uses it. Semantics (shared with native/cpu/gating.cc):
 *  1. logits = x · Wᵀ (+ logitBias); scores = softmax(logits) or sigmoid(logits).
 *  2. selection score = (gptOss ? logits : scores) + bias.
 *  3. groups: group score = sum of its top-2 selection scores (or its max); experts outside the topkGroup best
 *     groups get -inf.
 *  4. sort by selection score, descending; ties go to the lower index.
 *  5. k: topk/gptOss k; topp the shortest prefix whose mass (score / sum of scores) reaches p; threshold the
 *     number of reachable experts with score >= tau; dynamic clamp(minK + floor((maxK-minK)c + 0.5)).
 *     topp/threshold are clamped to [minK, maxK]. A token whose scores sum to 0 (sigmoids that all underflow)
 *     takes minK under topp and adds nothing to the aux loss's probability sums — here in float64, for logits
 *     below about -745; the native float32 scores underflow below about -88, so between the two they differ.
 *  6. weights: the unbiased scores of the chosen (gptOss: softmax over the chosen logits), optionally
 *     renormalised, times scale.
 * The native code ranks float32 scores: two that are equal in float32 (both underflowed to 0, or the same
 * subnormal) tie there and go to the lower index, while this float64 reference still tells them apart. Such a
 * comparison counts as a gap of 0 in `margin`, so the tests treat the token as ambiguous rather than wrong.
 */

export interface ReferenceRouterConfig {
  numExperts: number;
  hiddenSize: number;
  scoring: 'softmax' | 'sigmoid';
  selection: 'topk' | 'topp' | 'threshold' | 'dynamic' | 'gptOss';
  k: number;
  p: number;
  tau: number;
  minK: number;
  maxK: number;
  nGroup: number;
  topkGroup: number;
  groupScore: 'top2sum' | 'max';
  normalize: boolean;
  scale: number;
}

export interface ReferenceRouting {
  indices: Int32Array;
  weights: Float64Array;
  k: Int32Array;
  logits: Float64Array;
  probs: Float64Array;
  /**
   * Per token: the smallest relative gap between two values a decision compared (cumulative mass against p is
   * absolute); 0 for a true tie broken by index. fp32 rounding can only flip decisions with a tiny margin.
   */
  margin: Float64Array;
  expertCounts: Int32Array;
  meanK: number;
  auxLoss: number;
  zLoss: number;
  loadBalance: number;
}

/** logits [T, E] = x [T, d] · W [E, d]ᵀ in float64. */
export function referenceLogits(
  x: ArrayLike<number>,
  gate: ArrayLike<number>,
  T: number,
  d: number,
  E: number,
  logitBias?: ArrayLike<number>,
): Float64Array {
  const out = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) {
      let acc = 0;
      for (let i = 0; i < d; i++) acc += x[t * d + i] * gate[e * d + i];
      out[t * E + e] = acc + (logitBias ? logitBias[e] : 0);
    }
  }
  return out;
}

function scoresOf(
  cfg: ReferenceRouterConfig,
  logits: ArrayLike<number>,
  off: number,
): { probs: number[]; lse: number } {
  const E = cfg.numExperts;
  let max = -Infinity;
  for (let i = 0; i < E; i++) max = Math.max(max, logits[off + i]);
  let sum = 0;
  for (let i = 0; i < E; i++) sum += Math.exp(logits[off + i] - max);
  const lse = max + Math.log(sum);
  const probs: number[] = [];
  for (let i = 0; i < E; i++) {
    const l = logits[off + i];
    // (exp(l - max) / sum, not exp(l - lse): beyond |max| ~ 1e16, max + log(sum) rounds to max)
    probs.push(cfg.scoring === 'softmax' ? Math.exp(l - max) / sum : 1 / (1 + Math.exp(-l)));
  }
  return { probs, lse };
}

/** |a - b| relative to the larger magnitude: how far apart two compared values are, in rounding terms. */
function gap(a: number, b: number): number {
  if (Math.fround(a) === Math.fround(b)) return 0; // (equal in float32: a tie for the native code)
  if (!Number.isFinite(a) || !Number.isFinite(b)) return Infinity;
  return Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b));
}

/** Indices sorted by score descending, ties to the lower index. */
function rank(scores: number[], ids: number[]): number[] {
  return [...ids].sort((a, b) => scores[b] - scores[a] || a - b);
}

/** Routes from logits [T, E] (float64 or float32 values). */
export function referenceRouteLogits(
  cfg: ReferenceRouterConfig,
  logits: ArrayLike<number>,
  T: number,
  bias?: ArrayLike<number>,
  complexity?: ArrayLike<number>,
): ReferenceRouting {
  const E = cfg.numExperts;
  const K = cfg.maxK;
  const res: ReferenceRouting = {
    indices: new Int32Array(T * K).fill(-1),
    weights: new Float64Array(T * K),
    k: new Int32Array(T),
    logits: Float64Array.from(logits as ArrayLike<number>),
    probs: new Float64Array(T * E),
    margin: new Float64Array(T).fill(Infinity),
    expertCounts: new Int32Array(E),
    meanK: 0,
    auxLoss: 0,
    zLoss: 0,
    loadBalance: 0,
  };
  const probSum = new Float64Array(E);
  let zSum = 0;
  for (let t = 0; t < T; t++) {
    const { probs, lse } = scoresOf(cfg, logits, t * E);
    const mass = probs.reduce((a, b) => a + b, 0);
    const select = probs.map((p, i) => (cfg.selection === 'gptOss' ? logits[t * E + i] : p) + (bias ? bias[i] : 0));
    let margin = Infinity;
    const all = [...Array(E).keys()];
    if (cfg.nGroup > 0) {
      const size = E / cfg.nGroup;
      const groupScores: number[] = [];
      for (let g = 0; g < cfg.nGroup; g++) {
        const top = rank(select, all.slice(g * size, (g + 1) * size)).map((i) => select[i]);
        groupScores.push(cfg.groupScore === 'max' || size < 2 ? top[0] : top[0] + top[1]);
      }
      const groupOrder = rank(groupScores, [...Array(cfg.nGroup).keys()]);
      margin = Math.min(
        margin,
        gap(groupScores[groupOrder[cfg.topkGroup - 1]], groupScores[groupOrder[cfg.topkGroup]] ?? -Infinity),
      );
      const kept = new Set(groupOrder.slice(0, cfg.topkGroup));
      for (let i = 0; i < E; i++) if (!kept.has(Math.floor(i / size))) select[i] = -Infinity;
    }
    const candidates = all.filter((i) => select[i] !== -Infinity);
    const order = rank(select, candidates);
    let k = cfg.k;
    if (cfg.selection === 'topp') {
      let cum = 0;
      k = mass > 0 ? K : cfg.minK; // (every sigmoid underflowed to 0: nothing to cover)
      for (let j = 0; j < order.length && mass > 0; j++) {
        cum += probs[order[j]] / mass;
        if (j < K) margin = Math.min(margin, Math.abs(cum - cfg.p));
        if (cum >= cfg.p) {
          k = j + 1;
          break;
        }
      }
      k = Math.min(Math.max(k, cfg.minK), K);
    } else if (cfg.selection === 'threshold') {
      k = candidates.filter((i) => probs[i] >= cfg.tau).length;
      for (const i of candidates) margin = Math.min(margin, gap(probs[i], cfg.tau));
      k = Math.min(Math.max(k, cfg.minK), K);
    } else if (cfg.selection === 'dynamic') {
      const c = Math.min(1, Math.max(0, complexity ? complexity[t] : 0.5));
      k = Math.min(Math.max(cfg.minK + Math.floor((cfg.maxK - cfg.minK) * c + 0.5), cfg.minK), cfg.maxK);
    }
    k = Math.min(k, order.length);
    // Ordering decisions: each of the first k places against the next candidate.
    for (let j = 0; j < Math.min(k, order.length - 1); j++)
      margin = Math.min(margin, gap(select[order[j]], select[order[j + 1]]));
    const chosen = order.slice(0, k);
    let weights: number[];
    if (cfg.selection === 'gptOss') {
      const top = Math.max(...chosen.map((i) => logits[t * E + i]));
      const ex = chosen.map((i) => Math.exp(logits[t * E + i] - top));
      const s = ex.reduce((a, b) => a + b, 0);
      weights = ex.map((v) => (v / s) * cfg.scale);
    } else {
      const raw = chosen.map((i) => probs[i]);
      const s = raw.reduce((a, b) => a + b, 0);
      weights = raw.map((v) => (cfg.normalize && s > 0 ? v / s : v) * cfg.scale);
    }
    for (let j = 0; j < k; j++) {
      res.indices[t * K + j] = chosen[j];
      res.weights[t * K + j] = weights[j];
      res.expertCounts[chosen[j]]++;
    }
    res.k[t] = k;
    res.margin[t] = margin;
    for (let i = 0; i < E; i++) {
      res.probs[t * E + i] = probs[i];
      if (mass > 0) probSum[i] += probs[i] / mass;
    }
    zSum += lse * lse;
  }
  const assignments = res.k.reduce((a, b) => a + b, 0);
  res.meanK = assignments / T;
  let aux = 0;
  let entropy = 0;
  for (let i = 0; i < E; i++) {
    const share = assignments > 0 ? res.expertCounts[i] / assignments : 0;
    aux += share * (probSum[i] / T);
    if (share > 0) entropy -= share * Math.log(share);
  }
  res.auxLoss = E * aux;
  res.zLoss = zSum / T;
  res.loadBalance = E > 1 ? Math.min(1, Math.max(0, entropy / Math.log(E))) : 1;
  return res;
}

/** Routes x [T, d] end to end. */
export function referenceRoute(
  cfg: ReferenceRouterConfig,
  x: ArrayLike<number>,
  gate: ArrayLike<number>,
  opts: { bias?: ArrayLike<number>; logitBias?: ArrayLike<number>; complexity?: ArrayLike<number> } = {},
): ReferenceRouting {
  const T = x.length / cfg.hiddenSize;
  const logits = referenceLogits(x, gate, T, cfg.hiddenSize, cfg.numExperts, opts.logitBias);
  return referenceRouteLogits(cfg, logits, T, opts.bias, opts.complexity);
}

/**
 * Normalised entropy of softmax(row / temperature) for each row of [T, V]. -Infinity is a masked logit (a row of
 * them has entropy 0); a row holding NaN or +Infinity has none (NaN).
 */
export function referenceLogitEntropy(logits: ArrayLike<number>, T: number, V: number, temperature = 1): Float64Array {
  const out = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    const row = Array.from({ length: V }, (_, i) => logits[t * V + i] / temperature);
    if (row.some((v) => !(v < Infinity))) {
      out[t] = NaN;
      continue;
    }
    const max = Math.max(...row);
    if (max === -Infinity) continue;
    const ex = row.map((v) => Math.exp(v - max));
    const z = ex.reduce((a, b) => a + b, 0);
    let h = 0;
    for (const e of ex) if (e > 0) h -= (e / z) * Math.log(e / z);
    out[t] = V > 1 ? h / Math.log(V) : 0;
  }
  return out;
}

/** Row norms (order 1 or 2) of [T, n]. */
export function referenceRowNorms(x: ArrayLike<number>, T: number, n: number, order: 1 | 2): Float64Array {
  const out = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let acc = 0;
    for (let i = 0; i < n; i++) acc += order === 1 ? Math.abs(x[t * n + i]) : x[t * n + i] * x[t * n + i];
    out[t] = order === 1 ? acc : Math.sqrt(acc);
  }
  return out;
}

/**
 * Attention entropy per token over [H, T, S], normalised by log S; mean or max over heads. A row of zeros has
 * entropy 0; a token with a NaN, infinite or negative weight in any head has none (NaN).
 */
export function referenceAttentionEntropy(
  a: ArrayLike<number>,
  H: number,
  T: number,
  S: number,
  reduce: 'mean' | 'max',
): Float64Array {
  const out = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let acc = 0;
    for (let h = 0; h < H; h++) {
      const off = (h * T + t) * S;
      let sum = 0;
      for (let s = 0; s < S; s++) {
        if (!(a[off + s] >= 0 && a[off + s] < Infinity)) acc = NaN;
        sum += a[off + s];
      }
      if (Number.isNaN(acc)) break;
      let e = 0;
      for (let s = 0; s < S; s++) {
        const q = a[off + s] / sum;
        if (q > 0) e -= q * Math.log(q);
      }
      e = S > 1 ? e / Math.log(S) : 0;
      acc = reduce === 'max' ? Math.max(acc, e) : acc + e;
    }
    out[t] = reduce === 'max' ? acc : acc / H;
  }
  return out;
}
