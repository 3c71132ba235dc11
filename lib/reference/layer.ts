/**
 * The float64 reference of a whole MoE layer: y = Σ_j w_j · FFN_{e_j}(x) + shared, with
 * FFN(x) = (silu(x·W1ᵀ) ⊙ (x·W3ᵀ))·W2ᵀ in Hugging Face layouts (W1, W3 [f, d], W2 [d, f]).
 * It takes the routing (indices, weights, k) as given, so a layer test checks the expert math separately from
 * routing, which the routing reference covers.
 */

export interface ReferenceExpert {
  w1: ArrayLike<number>;
  w3: ArrayLike<number>;
  w2: ArrayLike<number>;
  f: number;
}

/** The SwiGLU FFN of one token row into `out` (added, times `scale`). */
export function referenceFfnAdd(
  x: ArrayLike<number>,
  xOff: number,
  d: number,
  e: ReferenceExpert,
  scale: number,
  out: Float64Array,
  outOff: number,
): void {
  const h = new Float64Array(e.f);
  for (let j = 0; j < e.f; j++) {
    let g = 0;
    let u = 0;
    for (let i = 0; i < d; i++) {
      g += x[xOff + i] * e.w1[j * d + i];
      u += x[xOff + i] * e.w3[j * d + i];
    }
    h[j] = (g / (1 + Math.exp(-g))) * u;
  }
  for (let o = 0; o < d; o++) {
    let acc = 0;
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
): Float64Array {
  const y = new Float64Array(T * d);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < routing.k[t]; j++) {
      const e = routing.indices[t * routing.maxK + j];
      referenceFfnAdd(x, t * d, d, experts(e), routing.weights[t * routing.maxK + j], y, t * d);
    }
    if (shared) {
      let scale = 1;
      if (shared.gate) {
        let dot = 0;
        for (let i = 0; i < d; i++) dot += x[t * d + i] * shared.gate[i];
        scale = 1 / (1 + Math.exp(-dot));
      }
      referenceFfnAdd(x, t * d, d, shared, scale, y, t * d);
    }
  }
  return y;
}
