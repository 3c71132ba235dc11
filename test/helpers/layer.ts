/**
 * A layer of random normal weights for the layer tests (CPU: test/layer.test.ts, CUDA: test/cuda.test.ts), and
 * its float64 reference output for a given routing.
 */
import {
  backendInfo,
  MoELayer,
  Router,
  type BackendName,
  type ExpertActivation,
  type ExpertWeights,
  type Selection,
  type WeightDType,
} from '../../lib';
import { bf16BitsToFloat32, float32ToBf16Bits } from '../../lib/models/float16';
import { f8BitsToNumber, numberToF8Bits } from '../../lib/models/float8';
import { referenceLayer } from '../../lib/reference/layer';
import { randn } from './random';

export interface BuiltLayer {
  layer: MoELayer;
  experts: ExpertWeights[];
  shared?: ExpertWeights & { gate?: Float32Array; f: number };
  d: number;
  f: number;
}

export function buildLayer(opts: {
  E: number;
  d: number;
  f: number;
  selection: Selection;
  dtype?: WeightDType;
  shared?: { f: number; gated: boolean };
  bias?: Float32Array;
  threads?: number;
  backend?: BackendName;
  /** gpt-oss's experts: its activation, and (with `biases`) bias terms on every projection. */
  activation?: ExpertActivation;
  biases?: boolean;
  /** Llama 4's experts: the routing weight on each routed expert's input. */
  weightInputs?: boolean;
  /** The router's scores and renormalisation (default softmax, renormalised). */
  scoring?: 'softmax' | 'sigmoid';
  normalize?: boolean;
  seed: number;
}): BuiltLayer {
  let seed = opts.seed;
  const { E, d, f } = opts;
  const biases = (width: number, rows: number) =>
    opts.biases ? { b1: randn(width, ++seed, 0.5), b3: randn(width, ++seed, 0.5), b2: randn(rows, ++seed, 0.5) } : {};
  const experts = Array.from({ length: E }, () => ({
    w1: randn(f * d, ++seed, 1 / Math.sqrt(d)),
    w3: randn(f * d, ++seed, 1 / Math.sqrt(d)),
    w2: randn(d * f, ++seed, 1 / Math.sqrt(f)),
    ...biases(f, d),
  }));
  const router = new Router({
    numExperts: E,
    hiddenSize: d,
    gateWeight: randn(E * d, ++seed, 0.3),
    selection: opts.selection,
    normalize: opts.normalize ?? true,
    scoring: opts.scoring,
    bias: opts.bias,
    threads: opts.threads,
    backend: opts.backend,
  });
  let shared: BuiltLayer['shared'];
  if (opts.shared) {
    const sf = opts.shared.f;
    shared = {
      w1: randn(sf * d, ++seed, 1 / Math.sqrt(d)),
      w3: randn(sf * d, ++seed, 1 / Math.sqrt(d)),
      w2: randn(d * sf, ++seed, 1 / Math.sqrt(sf)),
      gate: opts.shared.gated ? randn(d, ++seed, 0.2) : undefined,
      f: sf,
      ...biases(sf, d),
    };
  }
  const layer = new MoELayer({
    router,
    experts,
    dtype: opts.dtype,
    sharedExperts: shared && { ...shared, intermediateSize: shared.f },
    threads: opts.threads,
    activation: opts.activation,
    weightInputs: opts.weightInputs,
  });
  return { layer, experts, shared, d, f };
}

/** The float64 reference of `b` on x [T, d] under the given routing. */
export function layerReference(
  b: BuiltLayer,
  x: Float32Array,
  routing: { indices: Int32Array; weights: Float32Array; k: Int32Array; maxK: number },
): Float64Array {
  const T = x.length / b.d;
  const a = b.layer.activation;
  const act = a.kind === 'gptOss' ? { alpha: a.alpha, limit: a.limit } : undefined;
  const weightInputs = b.layer.weightInputs;
  if (b.layer.dtype === 'fp32')
    return referenceLayer(x, T, b.d, (e) => ({ ...b.experts[e], f: b.f }), routing, b.shared, { act, weightInputs });
  if (b.layer.dtype === 'fp8') {
    // An fp8 layer quantizes its weights (E4M3, a scale per row and 128 columns) and keeps fp32 activations: the
    // reference takes the same quantized weights, so what remains is accumulation order.
    const quantized = (w: ExpertWeights, f: number) => ({
      ...w,
      w1: quantizeFp8(w.w1, f, b.d),
      w3: quantizeFp8(w.w3, f, b.d),
      w2: quantizeFp8(w.w2, b.d, f),
      f,
    });
    const experts = b.experts.map((w) => quantized(w, b.f));
    const shared = b.shared && { ...b.shared, ...quantized(b.shared, b.shared.f) };
    return referenceLayer(x, T, b.d, (e) => experts[e], routing, shared, { act, weightInputs });
  }
  // A bf16 layer holds its weights in bf16 and feeds its GEMMs bf16 activations: the reference takes the same
  // rounded weights and input (in float64 from there on), so what remains is accumulation order and the rounding
  // of the SwiGLU activations before the down projection (and, with weightInputs, the order of the input's rounding
  // and its weight: the layer rounds w·x to bf16, the reference takes w·bf16(x)).
  const experts = b.experts.map((w) => ({
    ...w,
    w1: roundBf16(w.w1),
    w3: roundBf16(w.w3),
    w2: roundBf16(w.w2),
    f: b.f,
  }));
  const shared = b.shared && {
    ...b.shared,
    w1: roundBf16(b.shared.w1),
    w3: roundBf16(b.shared.w3),
    w2: roundBf16(b.shared.w2),
  };
  return referenceLayer(roundBf16(x), T, b.d, (e) => experts[e], routing, shared, { act, weightInputs });
}

/** Each value rounded to the nearest bfloat16 (ties to even), as fp32. */
export function roundBf16(a: Float32Array): Float32Array {
  return a.map((v) => bf16BitsToFloat32(float32ToBf16Bits(v)));
}

/**
 * W [rows, cols] as an fp8 layer holds it, written out independently of the native quantizer: per row and block of
 * 128 columns, scale = float32(amax / 448) (a scale under the smallest normal float32: zeros), each weight
 * E4M3(float32(w / scale)) rounded to nearest even, times the scale (exact in float64).
 */
export function quantizeFp8(w: Float32Array, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c0 = 0; c0 < cols; c0 += 128) {
      const c1 = Math.min(cols, c0 + 128);
      let amax = 0;
      for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(w[r * cols + c]));
      const scale = Math.fround(amax / 448);
      if (scale < 2 ** -126) continue;
      for (let c = c0; c < c1; c++) {
        const bits = numberToF8Bits(Math.fround(w[r * cols + c] / scale), 'F8_E4M3');
        out[r * cols + c] = f8BitsToNumber(bits, 'F8_E4M3') * scale;
      }
    }
  }
  return out;
}

/**
 * The relative error a layer of `dtype` is held to against its reference (layerReference): 1e-5 where the GEMMs take
 * fp32 activations, 1e-2 where they take bf16 ones (bf16 layers; fp8 layers where experts with fp8Bf16Rows rows or
 * more run on bf16 pairs — their weights still the exact quantized ones).
 */
export function layerTolerance(dtype: WeightDType): number {
  return dtype === 'bf16' || (dtype === 'fp8' && backendInfo().fp8Bf16Rows > 0) ? 1e-2 : 1e-5;
}
