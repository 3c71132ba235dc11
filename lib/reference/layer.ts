/**
 * The float64 reference of a whole MoE layer: y = Σ_j w_j · FFN_{e_j}(x) + shared, with
 * FFN(x) = (silu(x·W1ᵀ) ⊙ (x·W3ᵀ))·W2ᵀ in Hugging Face layouts (W1, W3 [f, d], W2 [d, f]); with biases (gpt-oss)
 * g = x·W1ᵀ + b1, u = x·W3ᵀ + b3, FFN(x) = act(g, u)·W2ᵀ + b2, where act is silu(g)·u or gpt-oss's clamped
 * (clamp(u, −limit, limit) + 1) · g'·sigmoid(alpha·g'), g' = min(g, limit). With `weightInputs` (Llama 4) the routing
 * weight scales the expert's input instead: y = Σ_j FFN_{e_j}(w_j · x) + shared.
 * It takes the routing (indices, weights, k) as given, so a layer test checks the expert math separately from
 * routing, which the routing reference covers.
 */

export interface ReferenceExpert {
  w1: ArrayLike<number>;
  w3: ArrayLike<number>;
  w2: ArrayLike<number>;
  f: number;
  b1?: ArrayLike<number>;
  b3?: ArrayLike<number>;
  b2?: ArrayLike<number>;
}

/** gpt-oss's clamped activation; absent: SwiGLU. */
export interface ReferenceActivation {
  alpha: number;
  limit: number;
}

/** The FFN of one token row into `out` (added, times `scale`). */
export function referenceFfnAdd(
  x: ArrayLike<number>,
  xOff: number,
  d: number,
  e: ReferenceExpert,
  scale: number,
  out: Float64Array,
  outOff: number,
  act?: ReferenceActivation,
): void {
  const h = new Float64Array(e.f);
  for (let j = 0; j < e.f; j++) {
    let g = e.b1 ? e.b1[j] : 0;
    let u = e.b3 ? e.b3[j] : 0;
    for (let i = 0; i < d; i++) {
      g += x[xOff + i] * e.w1[j * d + i];
      u += x[xOff + i] * e.w3[j * d + i];
    }
    if (act) {
      g = Math.min(g, act.limit);
      u = Math.min(Math.max(u, -act.limit), act.limit);
      h[j] = (u + 1) * (g / (1 + Math.exp(-act.alpha * g)));
    } else {
      h[j] = (g / (1 + Math.exp(-g))) * u;
    }
  }
  for (let o = 0; o < d; o++) {
    let acc = e.b2 ? e.b2[o] : 0;
    for (let j = 0; j < e.f; j++) acc += h[j] * e.w2[o * e.f + j];
    out[outOff + o] += scale * acc;
  }
}

/** y [T, d] in float64 for the given routing. */
export function referenceLayer(
  x: ArrayLike<number>,
  T: number,
  d: number,
  experts: (e: number) => ReferenceExpert,
  routing: { indices: ArrayLike<number>; weights: ArrayLike<number>; k: ArrayLike<number>; maxK: number },
  shared?: ReferenceExpert & { gate?: ArrayLike<number> },
  opts: { act?: ReferenceActivation; weightInputs?: boolean } = {},
): Float64Array {
  const { act } = opts;
  const y = new Float64Array(T * d);
  const scaled = new Float64Array(d);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < routing.k[t]; j++) {
      const e = routing.indices[t * routing.maxK + j];
      const w = routing.weights[t * routing.maxK + j];
      if (opts.weightInputs) {
        // Llama 4: FFN(w·x), the weight on the input (rounded to float32 as the layer's input rows are)
        for (let i = 0; i < d; i++) scaled[i] = Math.fround(w * x[t * d + i]);
        referenceFfnAdd(scaled, 0, d, experts(e), 1, y, t * d, act);
      } else {
        referenceFfnAdd(x, t * d, d, experts(e), w, y, t * d, act);
      }
    }
    if (shared) {
      let scale = 1;
      if (shared.gate) {
        let dot = 0;
        for (let i = 0; i < d; i++) dot += x[t * d + i] * shared.gate[i];
        scale = 1 / (1 + Math.exp(-dot));
      }
      referenceFfnAdd(x, t * d, d, shared, scale, y, t * d, act);
    }
  }
  return y;
}
