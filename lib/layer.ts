/**
 * `MoELayer`: one Mixture-of-Experts layer forward — route, dispatch, grouped expert GEMM (SwiGLU, or gpt-oss's
 * clamped SwiGLU with biases), combine — with weights prepacked once. JS validates and allocates; native/cpu/layer.cc
 * runs it on the CPU (fp32, bf16 or fp8 weights), or the CUDA plugin (cuda/layer.cu, through
 * native/binding/cuda_wrap.cc) on the GPU (bf16).
 */
import {
  cpuFallback,
  deviceComplexityFor,
  isCudaSetupFailure,
  MAX_CUDA_TOKENS,
  refreshDeviceComplexity,
  resolveBackend,
  type BackendName,
} from './cuda';
import { describe, expectedInstance, ExpertDispatchError, ValidationError } from './errors';
import {
  callNative,
  callNativeAsync,
  native,
  type BiasArgs,
  type CudaBenchResult,
  type NativeCudaLayerHandle,
  type NativeLayerHandle,
} from './native';
import { Router, type RoutingBuffers } from './router';
import type { RouteOptions, RoutingResult } from './types';
import { loadPretrainedLayer, type FromPretrainedOptions } from './models/pretrained';
import { decodeTelemetry, type TelemetryDelta } from './observability/telemetry-types';
import { FinalDrain } from './final-drain';
import { SerialQueue } from './serial-queue';
import { requireFinite, requireFloat32, requireInt, requireOneOf } from './validate';
import { GPT_OSS_ALPHA, GPT_OSS_LIMIT } from './models/gpt-oss';

/** How a layer stores its expert weights; see {@link MoELayerOptions.dtype}. */
export type WeightDType = 'fp32' | 'bf16' | 'fp8';
const NATIVE_DTYPE: Record<WeightDType, number> = { fp32: 0, bf16: 1, fp8: 2 };

/**
 * An expert's bias terms, where its projections have them (gpt-oss): b1 is added to the gate projection [f], b3 to the
 * up projection [f] (both before the activation), b2 to the expert's output [d] (before any routing weight or shared
 * gate scales it). CPU layers only: backend 'cuda' refuses them, 'auto' picks the CPU.
 */
export interface ExpertBiases {
  b1?: Float32Array;
  b3?: Float32Array;
  b2?: Float32Array;
}

/**
 * The experts' activation. 'swiglu' (the default): h = silu(gate) · up. 'gptOss', gpt-oss's clamped SwiGLU:
 * h = (clamp(up, −limit, limit) + 1) · g · sigmoid(alpha · g) with g = min(gate, limit); alpha 1.702 and limit 7
 * (config `swiglu_limit`) by default. CPU layers only.
 */
export type ExpertActivation = { kind: 'swiglu' } | { kind: 'gptOss'; alpha?: number; limit?: number };
/** An {@link ExpertActivation} with its defaults filled in. */
export type ResolvedActivation = { kind: 'swiglu' } | { kind: 'gptOss'; alpha: number; limit: number };

/**
 * One expert's FFN in Hugging Face layout: w1 (gate_proj) [f, d], w3 (up_proj) [f, d], w2 (down_proj) [d, f], and
 * optional biases.
 */
export interface ExpertWeights extends ExpertBiases {
  w1: Float32Array;
  w3: Float32Array;
  w2: Float32Array;
}

/**
 * A weight matrix [rows, cols] already in E4M3 (torch.float8_e4m3fn): `data` row-major, and one scale per row and
 * block of 128 columns, `scales` [rows, ceil(cols / 128)]: W[r][c] = e4m3(data[r·cols + c]) · scales[r·⌈cols/128⌉ +
 * ⌊c/128⌋]. DeepSeek-V3's 128 × 128 `weight_scale_inv` blocks spread to this row by row.
 */
export interface E4m3Matrix {
  data: Uint8Array;
  scales: Float32Array;
}

/**
 * One expert's weights already in E4M3, for layers of dtype 'fp8', which pack them as given (a checkpoint's own
 * bytes and scales: no second rounding). Same layouts as {@link ExpertWeights}.
 */
export interface E4m3ExpertWeights extends ExpertBiases {
  e4m3: { w1: E4m3Matrix; w3: E4m3Matrix; w2: E4m3Matrix };
}

/** All experts stacked: w1 and w3 [E, f, d], w2 [E, d, f]; biases, where given, b1 and b3 [E, f], b2 [E, d]. */
export interface StackedExpertWeights extends ExpertWeights {
  stacked: true;
}

/** What a shared expert adds to its weights (fp32, or E4M3 for an 'fp8' layer). */
export interface SharedExpertExtras {
  /** Its intermediate size (DeepSeek: n_shared_experts * moe_intermediate_size). Default: from w1's length. */
  intermediateSize?: number;
  /** Qwen2-MoE `shared_expert_gate` [d]: the shared output is scaled by sigmoid(x · gate) per token. */
  gate?: Float32Array;
}

/** An always-on expert added to every token's output (Qwen2-MoE `shared_expert`, DeepSeek `shared_experts`). */
export type SharedExpertOptions = (ExpertWeights | E4m3ExpertWeights) & SharedExpertExtras;

type AnyExpertWeights = ExpertWeights | E4m3ExpertWeights;
const isE4m3 = (w: AnyExpertWeights): w is E4m3ExpertWeights =>
  typeof (w as Partial<E4m3ExpertWeights>).e4m3 === 'object' && (w as E4m3ExpertWeights).e4m3 !== null;

export interface MoELayerOptions {
  router: Router;
  /**
   * Stacked weights, one object per expert, or a loader called once per expert (so each can be dropped after
   * packing) — a second time for experts 1..E-1 already read when backend 'auto' falls back to the CPU after the GPU
   * refused an upload or a later expert brought biases.
   */
  experts?: StackedExpertWeights | AnyExpertWeights[] | ((expert: number) => AnyExpertWeights);
  /**
   * Instead of `experts`: reuse the packed weights (and dtype, shared experts, activation and weightInputs) of this
   * layer, without copying.
   * The router must have the same numExperts and hiddenSize. See {@link MoELayer.withRouter}.
   */
  shareWeightsOf?: MoELayer;
  /** Routed experts' intermediate size f. Default: from the weight lengths. */
  intermediateSize?: number;
  sharedExperts?: SharedExpertOptions;
  /**
   * Weight storage: 'fp32' (the CPU default), 'bf16' (converted once here; activations become bf16 in the GEMMs) or
   * 'fp8' (E4M3 with one fp32 scale per output row and 128 inputs, quantized here as amax / 448: a quarter of fp32's
   * weight bytes, for the memory-bound small batches; activations stay fp32, except for experts of 8 or more rows
   * where backendInfo().fp8Bf16Rows says so — AMX, AMD's AVX-512 — which run on bf16 pairs with bf16 activations).
   * The CUDA backend always stores bf16.
   */
  dtype?: WeightDType;
  /** The model's static top-k, the baseline of `flopsSaved`. Default: the router's k (top-k rules) or maxK. */
  staticK?: number;
  /** Threads of the expert stages; default: the router's. */
  threads?: number;
  /** The experts' activation (routed and shared): SwiGLU by default; gpt-oss's clamped SwiGLU (CPU layers). */
  activation?: ExpertActivation;
  /**
   * Llama 4's experts: the routing weight scales each routed expert's input instead of its output, FFN(w·x) in place
   * of w·FFN(x) (a shared expert takes x as it is). CPU layers.
   */
  weightInputs?: boolean;
  /**
   * 'cpu', 'cuda' (weights uploaded once to the GPU as bf16; BackendError when the plugin or a GPU is missing) or
   * 'auto' (the GPU when available; the CPU when the GPU cannot take this layer, see `cpuFallbackReason`).
   * Default: the backend the router asked for.
   */
  backend?: BackendName;
}

/** Device pointers for {@link MoELayer.forwardDevice}, as frameworks that hold GPU tensors have them. */
export interface DeviceForwardOptions {
  /** x [T, d] float32 on the layer's GPU, 16-byte aligned. */
  input: bigint;
  /** y [T, d] float32 on the layer's GPU, 16-byte aligned; written by the forward. */
  output: bigint;
  tokens: number;
  /** A cudaStream_t to enqueue on (default: the layer's own stream; 0n: the legacy default stream). */
  stream?: bigint;
}

/** Natively measured per-call stats. */
export interface LayerStats {
  /** Expert FLOPs run (routed + shared): 6·d·f per (token, expert) pair. */
  flopsComputed: number;
  /** FLOPs the model's static top-k would have run on the same tokens. */
  flopsStatic: number;
  /** flopsStatic − flopsComputed (negative when dynamic routing used more experts). */
  flopsSaved: number;
  /** Tokens per routed expert [E]. */
  expertCounts: Int32Array;
  meanK: number;
  /**
   * Stage durations in seconds, from a monotonic clock. `complexity` is the dynamic rule's estimation, which runs
   * in JS just before the native call (0 for other rules); `total` is the native part, gating to combine.
   */
  stageSeconds: {
    complexity: number;
    gating: number;
    dispatch: number;
    expertGemm: number;
    combine: number;
    total: number;
  };
  /** Start of the call on process.hrtime's clock, in nanoseconds. */
  startNs: bigint;
}

/** Options of {@link MoELayer.forward}: the routing options, and where to write y. */
export interface ForwardOptions extends RouteOptions {
  /**
   * forward() only: a Float32Array of T·d elements, not overlapping x, that receives y and is returned as the
   * result's `output`. A service that keeps one per batch size saves allocating and faulting in a new array per
   * call (4 MiB at OLMoE T=512: about 2% of that forward on the development VM).
   */
  output?: Float32Array;
}

export interface ForwardResult {
  /** y [T, d]: a new array, or `opts.output`. */
  output: Float32Array;
  routing: RoutingResult;
  stats: LayerStats;
}

/**
 * forward()'s `output`: T·d elements that do not share memory with x, so that no kernel, now or later, ever reads x
 * where it has written y. Checked here where both are views of one buffer, and in the binding by address (arrays
 * over the same memory from separate buffers, e.g. a SharedArrayBuffer that came back from a worker).
 */
function requireOutput(output: unknown, length: number, x: Float32Array): void {
  const y = requireFloat32('output', output, { length });
  const overlaps =
    y.buffer === x.buffer && y.byteOffset < x.byteOffset + x.byteLength && x.byteOffset < y.byteOffset + y.byteLength;
  if (overlaps) throw new ValidationError('output: shares memory with x; give y an array of its own');
}

const LAYER_STATS = 7;
/** The most tokens one layer call takes (the binding's bound too). */
const MAX_LAYER_TOKENS = 1 << 24;
/** cudaStreamLegacy: the handle CUDA takes for the legacy default stream (stream 0) where 0 would mean "none". */
const CUDA_STREAM_LEGACY = 1n;

export class MoELayer {
  readonly router: Router;
  readonly dtype: WeightDType;
  readonly intermediateSize: number;
  readonly staticK: number;
  readonly hasSharedExpert: boolean;
  /** The experts' activation (see {@link MoELayerOptions.activation}). */
  readonly activation: ResolvedActivation;
  /** Whether the routing weight scales the experts' inputs (see {@link MoELayerOptions.weightInputs}). */
  readonly weightInputs: boolean;
  /** Where forward() runs: 'cpu' or 'cuda'. */
  readonly backend: 'cpu' | 'cuda';
  /**
   * Set when 'auto' was asked for and the GPU is available but this layer runs on the CPU: why (dtype 'fp32'/'fp8',
   * shareWeightsOf, a gptOss activation, weightInputs or expert biases, which the CUDA backend does not take; or the
   * GPU refused the layer, e.g. out of memory).
   */
  readonly cpuFallbackReason?: string;
  private handle: NativeLayerHandle | undefined;
  private cudaHandle: NativeCudaLayerHandle | undefined;
  private readonly queue = new SerialQueue();
  /** A disposed layer's last drain, taken just before its weights were freed: the next drain returns it. */
  private readonly finalDrain = new FinalDrain();
  /**
   * @internal The packed expert weights' identity and size: layers that share them (withRouter, shareWeightsOf)
   * hold the same object, so that a MetricsCollector counts shared weights once.
   */
  readonly packedWeights: { readonly bytes: number };
  /** A call's token bound, checked by the router's validation before anything is computed (made once). */
  private readonly checkTokens = (T: number) => checkLayerTokens(T, this.router.config.maxK, this.backend === 'cuda');
  /** A handle dispose() took away, until its pending calls have run and it is freed. */
  private retiring: NativeLayerHandle | NativeCudaLayerHandle | undefined;

  /**
   * Packs the expert weights (fp32, bf16 or fp8) once. The arrays given are not kept.
   * @throws ValidationError for wrong weight or bias lengths, non-finite weights or biases, a bad activation or
   *   weightInputs, or an activation, biases or weightInputs on backend 'cuda'.
   */
  constructor(opts: MoELayerOptions) {
    if (!(opts?.router instanceof Router))
      throw new ValidationError(`router: ${expectedInstance('a', 'Router', opts?.router)}`);
    this.router = opts.router;
    const { numExperts: E, hiddenSize: d } = this.router.config;
    const requested = opts.backend ?? this.router.requestedBackend;
    this.backend = resolveBackend(requested, 'MoELayer');
    this.activation = resolveActivation(opts.activation);
    if (opts.weightInputs !== undefined && typeof opts.weightInputs !== 'boolean')
      throw new ValidationError(`weightInputs: expected true, false or undefined, got ${describe(opts.weightInputs)}`);
    this.weightInputs = opts.weightInputs ?? false;
    if (this.backend === 'cuda' && requested === 'auto') {
      // what the CUDA backend cannot take, asked for explicitly: the CPU, without trying the GPU
      if (opts.dtype === 'fp32' || opts.dtype === 'fp8')
        this.cpuFallbackReason = `dtype '${opts.dtype}' (the CUDA backend keeps bf16 weights)`;
      else if (opts.shareWeightsOf !== undefined)
        this.cpuFallbackReason = 'shareWeightsOf (sharing packed weights is not supported by the CUDA backend yet)';
      else if (this.activation.kind !== 'swiglu')
        this.cpuFallbackReason = `activation '${this.activation.kind}' (the CUDA backend runs SwiGLU experts)`;
      else if (this.weightInputs)
        this.cpuFallbackReason = "weightInputs (the CUDA backend weights the experts' outputs)";
      if (this.cpuFallbackReason) this.backend = 'cpu';
    }
    if (this.backend === 'cuda' && this.activation.kind !== 'swiglu')
      throw new ValidationError(
        `activation: the CUDA backend runs SwiGLU experts; '${this.activation.kind}' layers need backend 'cpu'`,
      );
    if (this.backend === 'cuda' && this.weightInputs)
      throw new ValidationError(
        "weightInputs (Llama 4's experts): the CUDA backend weights the experts' outputs; use backend 'cpu'",
      );
    this.dtype = requireOneOf(
      'dtype',
      opts.dtype ?? (this.backend === 'cuda' ? 'bf16' : 'fp32'),
      ['fp32', 'bf16', 'fp8'] as const,
      ValidationError,
    );
    if (this.backend === 'cuda' && this.dtype !== 'bf16')
      throw new ValidationError(
        `dtype: the CUDA backend keeps bf16 weights (fp32 accumulation); omit dtype or pass 'bf16'`,
      );
    const cfg = this.router.config;
    const defaultStaticK = cfg.selection === 'topk' || cfg.selection === 'gptOss' ? cfg.k : cfg.maxK;
    this.staticK = requireInt('staticK', opts.staticK ?? defaultStaticK, 1, E, ValidationError);
    const threads = requireInt('threads', opts.threads ?? cfg.threads, 1, 1024, ValidationError);
    const addon = native();
    if (opts.shareWeightsOf !== undefined) {
      const other = opts.shareWeightsOf;
      for (const key of [
        'experts',
        'intermediateSize',
        'sharedExperts',
        'dtype',
        'activation',
        'weightInputs',
      ] as const) {
        if (opts[key] !== undefined)
          throw new ValidationError(
            `${key}: shareWeightsOf takes the weights, shared experts, dtype, activation and weightInputs of that layer; omit ${key}`,
          );
      }
      if (this.backend === 'cuda' || (other instanceof MoELayer && other.backend === 'cuda'))
        throw new ValidationError('shareWeightsOf: sharing packed weights is not supported by the CUDA backend yet');
      if (!(other instanceof MoELayer))
        throw new ValidationError(`shareWeightsOf: ${expectedInstance('an', 'MoELayer', other)}`);
      if (other.numExperts !== E || other.hiddenSize !== d) {
        throw new ValidationError(
          `router: expected numExperts=${other.numExperts} and hiddenSize=${other.hiddenSize} to share weights, got ${E} and ${d}`,
        );
      }
      this.dtype = other.dtype;
      this.activation = other.activation;
      this.weightInputs = other.weightInputs;
      this.intermediateSize = other.intermediateSize;
      this.hasSharedExpert = other.hasSharedExpert;
      const source = other.cpuHandle();
      this.handle = callNative(
        'MoELayer',
        () => new addon.NativeLayer(this.router.handle, 0, this.staticK, threads, source),
      );
      this.packedWeights = other.packedWeights;
      return;
    }
    if (opts.sharedExperts !== undefined && (!opts.sharedExperts || typeof opts.sharedExperts !== 'object'))
      throw new ValidationError(
        `sharedExperts: expected { w1, w3, w2, gate?, intermediateSize? } or undefined, got ${describe(opts.sharedExperts)}`,
      );
    const expertAt = expertSource(opts.experts, E);
    const first = expertAt(0);
    if (!first || typeof first !== 'object')
      throw new ValidationError(`experts[0]: expected { w1, w3, w2 }, got ${describe(first)}`);
    this.intermediateSize = intermediateOf('', opts.intermediateSize, first, 'experts[0]', d, 1 << 20);
    this.hasSharedExpert = opts.sharedExperts !== undefined;
    if (this.backend === 'cuda' && requested === 'auto' && (hasBiases(first) || hasBiases(opts.sharedExperts))) {
      this.backend = 'cpu';
      this.dtype = opts.dtype ?? 'fp32';
      this.cpuFallbackReason = CUDA_BIAS_FALLBACK;
    }
    const weights = { first, expertAt, shared: opts.sharedExperts, threads };
    let handle: NativeLayerHandle | NativeCudaLayerHandle;
    try {
      handle = this.pack(weights);
    } catch (err) {
      if (this.backend !== 'cuda' || requested !== 'auto') throw err;
      if (err instanceof Error && cudaRefusedBiases.has(err)) {
        // a later expert with biases (a loader function's): the CPU, from the start, as for the first expert's
        this.cpuFallbackReason = CUDA_BIAS_FALLBACK;
      } else if (isCudaSetupFailure(err)) {
        // the GPU refused the layer (its memory, a configuration the kernels do not take): the CPU, from the start
        this.cpuFallbackReason = cpuFallback(err.message);
      } else {
        throw err;
      }
      this.backend = 'cpu';
      this.dtype = opts.dtype ?? 'fp32';
      handle = this.pack(weights);
    }
    if (this.backend === 'cuda') this.cudaHandle = handle as NativeCudaLayerHandle;
    else this.handle = handle as NativeLayerHandle;
    this.packedWeights = { bytes: handle.info().weightBytes };
  }

  /** A native layer on this.backend with every expert's weights packed; freed at once when one fails. */
  private pack(w: {
    first: AnyExpertWeights;
    expertAt: (e: number) => AnyExpertWeights;
    shared: SharedExpertOptions | undefined;
    threads: number;
  }): NativeLayerHandle | NativeCudaLayerHandle {
    const addon = native();
    const { numExperts: E, hiddenSize: d } = this.router.config;
    const handle: NativeLayerHandle | NativeCudaLayerHandle = callNative('MoELayer', () =>
      this.backend === 'cuda'
        ? new addon.NativeCudaLayer(this.router.handle, this.staticK, this.intermediateSize)
        : new addon.NativeLayer(
            this.router.handle,
            NATIVE_DTYPE[this.dtype],
            this.staticK,
            w.threads,
            null,
            this.activation.kind === 'gptOss' || this.weightInputs
              ? {
                  ...(this.activation.kind === 'gptOss'
                    ? { alpha: this.activation.alpha, limit: this.activation.limit }
                    : {}),
                  weightInputs: this.weightInputs,
                }
              : null,
          ),
    );
    try {
      for (let e = 0; e < E; e++) {
        const x = e === 0 ? w.first : w.expertAt(e);
        const f = this.intermediateSize;
        const e4m3 = this.checkExpert(`experts[${e}]`, x, f, d);
        const bias = this.biasArgs(`experts[${e}]`, x, f, d);
        if (e4m3) {
          const q = x.e4m3;
          callNative(`experts[${e}]`, () =>
            (handle as NativeLayerHandle).setExpertFP8(e, ...e4m3Args(q.w1, q.w3, q.w2), f, ...bias),
          );
        } else {
          callNative(`experts[${e}]`, () => handle.setExpert(e, x.w1, x.w3, x.w2, f, ...bias));
        }
      }
      if (w.shared) {
        const s = w.shared;
        const sf = intermediateOf('sharedExperts.', s.intermediateSize, s, 'sharedExperts', d, 1 << 22);
        const e4m3 = this.checkExpert('sharedExperts', s, sf, d);
        if (s.gate !== undefined) {
          requireFloat32('sharedExperts.gate', s.gate, { length: d });
          requireFinite('sharedExperts.gate', s.gate);
        }
        const gate = s.gate ?? null;
        const bias = this.biasArgs('sharedExperts', s, sf, d);
        callNative('sharedExperts', () =>
          isE4m3(s) && e4m3
            ? (handle as NativeLayerHandle).setSharedExpertFP8(
                ...e4m3Args(s.e4m3.w1, s.e4m3.w3, s.e4m3.w2),
                sf,
                gate,
                ...bias,
              )
            : handle.setSharedExpert(
                (s as ExpertWeights).w1,
                (s as ExpertWeights).w3,
                (s as ExpertWeights).w2,
                sf,
                gate,
                ...bias,
              ),
        );
      }
    } catch (err) {
      // the weights packed so far (on a GPU, its memory) go now, not at some later garbage collection
      handle.dispose();
      throw err;
    }
    return handle;
  }

  /**
   * An expert's biases checked (lengths f, f, d; finite) as the native setters take them: none, or all three slots.
   * @throws ValidationError for bad biases, or biases for a CUDA layer.
   */
  private biasArgs(name: string, w: ExpertBiases, f: number, d: number): BiasArgs {
    if (!hasBiases(w)) return [];
    const out: [Float32Array | null, Float32Array | null, Float32Array | null] = [null, null, null];
    (['b1', 'b3', 'b2'] as const).forEach((key, i) => {
      if (w[key] === undefined) return;
      if (this.backend === 'cuda') {
        const err = new ValidationError(
          `${name}.${key}: the CUDA backend runs experts without biases; use backend 'cpu'`,
        );
        cudaRefusedBiases.add(err);
        throw err;
      }
      const b = requireFloat32(`${name}.${key}`, w[key], { length: key === 'b2' ? d : f });
      requireFinite(`${name}.${key}`, b);
      out[i] = b;
    });
    return out;
  }

  /**
   * Checks an expert's weights (fp32, or E4M3 for an 'fp8' layer on the CPU): true when they are E4M3.
   * @throws ValidationError for wrong types or lengths, non-finite fp32 weights, or E4M3 weights elsewhere.
   */
  private checkExpert(name: string, w: AnyExpertWeights, f: number, d: number): w is E4m3ExpertWeights {
    if (!w || typeof w !== 'object') throw new ValidationError(`${name}: expected { w1, w3, w2 }, got ${describe(w)}`);
    if (!isE4m3(w)) {
      checkExpert(name, w, f, d);
      return false;
    }
    if (this.dtype !== 'fp8' || this.backend !== 'cpu')
      throw new ValidationError(
        `${name}.e4m3: E4M3 weights need a CPU layer of dtype 'fp8'; got ${this.backend} ${this.dtype}`,
      );
    for (const key of ['w1', 'w3', 'w2'] as const) {
      const [rows, cols] = key === 'w2' ? [d, f] : [f, d];
      const m = w.e4m3[key];
      if (!m || typeof m !== 'object')
        throw new ValidationError(`${name}.e4m3.${key}: expected { data, scales }, got ${describe(m)}`);
      const data = m.data;
      if (!(data instanceof Uint8Array) || data.length !== rows * cols)
        throw new ValidationError(
          `${name}.e4m3.${key}.data: expected a Uint8Array of [${rows}, ${cols}] = ${rows * cols} bytes, got ${describe(data)}`,
        );
      requireFloat32(`${name}.e4m3.${key}.scales`, m.scales, { length: rows * Math.ceil(cols / 128) });
    }
    return true;
  }

  /**
   * One sparse layer of a local Hugging Face checkpoint folder (Mixtral, OLMoE, Qwen2/3-MoE, Qwen3-Next, Qwen3-VL-MoE
   * and Qwen3.5-MoE's language layers, DeepSeek-V2/V3, GLM-4.5, ERNIE 4.5, gpt-oss, Llama 4), with the model's routing rule
   * unless `opts.selection` overrides it.
   * @throws ModelLoadError for missing or malformed files, dense layers and shape mismatches.
   */
  static fromPretrained(dir: string, opts: FromPretrainedOptions): MoELayer {
    return loadPretrainedLayer(dir, opts);
  }

  /**
   * A layer that routes with `router` over this layer's packed weights (shared, not copied): switch a loaded
   * model between static and dynamic routing without reloading. `staticK` stays this layer's unless given.
   * CPU layers only for now (a CUDA layer throws ValidationError).
   */
  withRouter(router: Router, opts: { staticK?: number; threads?: number } = {}): MoELayer {
    return new MoELayer({ router, shareWeightsOf: this, staticK: opts.staticK ?? this.staticK, threads: opts.threads });
  }

  get hiddenSize(): number {
    return this.router.hiddenSize;
  }
  get numExperts(): number {
    return this.router.numExperts;
  }

  /** Bytes of packed expert weights held natively. */
  get weightBytes(): number {
    return this.live().info().weightBytes;
  }

  /**
   * y = Σ weight · FFN_e(x) (FFN_e(weight · x) with weightInputs) (+ shared expert), synchronously.
   * @param x hidden states [T, d], Float32Array row-major.
   * @param opts routing options, and `output`: an array to write y into instead of a new one.
   * @throws ValidationError for a bad x (type, length, detached, NaN/Inf) or output (type, length, detached, shares
   * memory with x); ExpertDispatchError after dispose().
   */
  forward(x: Float32Array, opts: ForwardOptions = {}): ForwardResult {
    const call = this.prepare(x, opts, false, (opts as ForwardOptions | undefined)?.output);
    const cuda = this.cudaHandle;
    callNative('forward', () =>
      cuda ? cuda.forward(...call.args, call.device) : this.cpuHandle().forward(...call.args),
    );
    return call.finish();
  }

  /** As {@link forward}, off the event loop, on a private copy of x; async calls of one layer run one after another. */
  async forwardAsync(x: Float32Array, opts: RouteOptions = {}): Promise<ForwardResult> {
    const call = this.prepare(x, opts, true);
    // (the handle of the call's time: a dispose() while it waits in the queue releases the weights after it)
    const cuda = this.cudaHandle;
    const cpu = cuda ? undefined : this.cpuHandle();
    await this.queue.run(() =>
      callNativeAsync('forwardAsync', () => {
        if (!cuda) return cpu!.forwardAsync(...call.args);
        if (call.device) refreshDeviceComplexity(this.router.estimator, call.device);
        return cuda.forwardAsync(...call.args, call.device);
      }),
    );
    return call.finish();
  }

  /**
   * CUDA backend only: y = MoE(x) on device pointers the caller owns (e.g. a framework's GPU tensors), enqueued
   * on `stream` without waiting for it; routing stays on the GPU. A dynamic rule needs an estimator that runs
   * there (router_entropy, or gradient_norm of x) with calibration 'none', 'quantile' or a frozen 'zscore'
   * (estimator.calibrate(...)). Per-expert token counts reach drainTelemetry() one drain later.
   * @throws ValidationError for a CPU layer, null or misaligned pointers, or tokens; BackendError for a CUDA
   * failure, including pointers the plugin refuses (not device memory of the layer's GPU, or too short).
   */
  forwardDevice(opts: DeviceForwardOptions): void {
    const cuda = this.cudaHandle;
    if (!cuda) {
      this.live();
      throw new ValidationError(`forwardDevice: this layer runs on the ${this.backend} backend; use backend 'cuda'`);
    }
    const tokens = requireInt('tokens', opts?.tokens, 1, MAX_CUDA_TOKENS, ValidationError);
    for (const key of ['input', 'output'] as const) {
      if (typeof opts[key] !== 'bigint' || opts[key] <= 0n)
        throw new ValidationError(`${key}: expected a device pointer as a positive bigint, got ${describe(opts[key])}`);
    }
    if (opts.stream !== undefined && (typeof opts.stream !== 'bigint' || opts.stream < 0n))
      throw new ValidationError(`stream: expected a cudaStream_t as a bigint, got ${describe(opts.stream)}`);
    // 0n is the legacy default stream (what frameworks report for their default stream): passed on as
    // cudaStreamLegacy (handle 1), never taken for "the layer's own stream", which is not ordered with it
    const stream = opts.stream === undefined ? null : opts.stream === 0n ? CUDA_STREAM_LEGACY : opts.stream;
    let device = null;
    if (this.router.config.selection === 'dynamic') {
      device = deviceComplexityFor(this.router.estimator, tokens, {});
      if (!device || device.calibration === 1)
        throw new ValidationError(
          'forwardDevice: the dynamic rule on device pointers needs a router_entropy or gradient_norm estimator ' +
            "with calibration 'none', 'quantile', or a frozen 'zscore' (call estimator.calibrate(samples) first)",
        );
    }
    callNative('forwardDevice', () => cuda.forwardDevice(opts.input, opts.output, tokens, stream, device));
  }

  /** @internal CUDA benchmarks (bench/gpu): stage timings on device-resident random input. */
  benchDevice(tokens: number, iterations: number, graph: boolean): CudaBenchResult {
    if (!this.cudaHandle) throw new ValidationError('benchDevice: needs the CUDA backend');
    return this.cudaHandle.bench(tokens, iterations, graph);
  }

  /**
   * Releases the packed weights: now, or — when forwardAsync calls are still pending — once they have run (they
   * complete normally). Either way the layer refuses new calls from here on.
   */
  dispose(): void {
    const handle = this.handle ?? this.cudaHandle;
    this.handle = undefined;
    this.cudaHandle = undefined;
    if (!handle) return;
    // Until it is freed, drains still read it (forwards pending at dispose() keep counting); its counters are
    // drained once more right before it is freed (a CUDA layer waits for its device counters); the next drain
    // returns that record, later ones fail (a MetricsCollector then detaches the layer).
    this.retiring = handle;
    const release = () => {
      this.retiring = undefined;
      this.finalDrain.takeThenFree(
        () =>
          this.backend === 'cuda'
            ? (handle as NativeCudaLayerHandle).drainTelemetry(null, true)
            : handle.drainTelemetry(),
        () => handle.dispose(),
      );
    };
    this.queue.afterPending(release);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** What drains read: the live handle, or one dispose() retired whose pending calls have not all run yet. */
  private counters(): NativeLayerHandle | NativeCudaLayerHandle {
    return this.handle ?? this.cudaHandle ?? this.retiring ?? this.live();
  }

  private live(): NativeLayerHandle | NativeCudaLayerHandle {
    const h = this.handle ?? this.cudaHandle;
    if (!h) throw new ExpertDispatchError('MoELayer: this layer was disposed');
    return h;
  }

  private cpuHandle(): NativeLayerHandle {
    if (!this.handle) this.live();
    return this.handle!;
  }

  /** Native counters of this layer's forwards since the previous drain; see {@link Router.drainTelemetry}. */
  drainTelemetry(): TelemetryDelta {
    return decodeTelemetry(this.finalDrain.once() ?? this.counters().drainTelemetry());
  }

  /** @internal See {@link Router.drainTelemetryRecord}. */
  drainTelemetryRecord(into: Float64Array): Float64Array | number {
    return this.finalDrain.onceInto(into) ?? this.counters().drainTelemetry(into);
  }

  /** `copyInputs` (async calls): work on private copies of x and of caller complexity (Router.privateInputs). */
  private prepare(x: Float32Array, opts: RouteOptions, copyInputs = false, given?: Float32Array) {
    const handle = this.live();
    const onDevice = this.backend === 'cuda';
    const { prepared, device } = this.router.countValidationErrors(() => {
      const p = this.router.prepareFor(x, opts, onDevice, this.checkTokens);
      if (given !== undefined) requireOutput(given, p.prepared.tokens * this.hiddenSize, x);
      else if (copyInputs && (opts as ForwardOptions | undefined)?.output !== undefined)
        // (JS runs while the worker writes: the array could be read half-written, or transferred away under it)
        throw new ValidationError('output: only forward() writes into a given array; forwardAsync returns a new one');
      return p;
    }, handle);
    if (copyInputs) x = this.router.privateInputs(x, prepared);
    const buffers: RoutingBuffers = this.router.allocate(prepared, opts);
    const T = prepared.tokens;
    const output = given ?? new Float32Array(T * this.hiddenSize);
    const layerStats = new Float64Array(LAYER_STATS);
    const r = buffers.result;
    const args = [
      x,
      T,
      output,
      r.indices,
      r.weights,
      r.k,
      r.stats.expertCounts,
      buffers.stats,
      layerStats,
      prepared.logits,
      prepared.complexity,
      prepared.complexityNs,
      // written by the call when asked for (given logits are returned as they are)
      prepared.logits ? null : (r.logits ?? null),
      r.probs ?? null,
    ] as const;
    return {
      args,
      device,
      finish: (): ForwardResult => {
        const routing = this.router.finishDevice(buffers, device);
        return { output, routing, stats: layerStatsOf(layerStats, routing, prepared.complexityNs) };
      },
    };
  }
}

function layerStatsOf(v: Float64Array, routing: RoutingResult, complexityNs: number): LayerStats {
  const seconds = (a: number, b: number) => (v[b] - v[a]) / 1e9;
  return {
    flopsComputed: v[0],
    flopsStatic: v[1],
    flopsSaved: v[1] - v[0],
    expertCounts: routing.stats.expertCounts,
    meanK: routing.stats.meanK,
    stageSeconds: {
      complexity: complexityNs / 1e9,
      gating: seconds(2, 3),
      dispatch: seconds(3, 4),
      expertGemm: seconds(4, 5),
      combine: seconds(5, 6),
      total: seconds(2, 6),
    },
    startNs: BigInt(Math.round(v[2])),
  };
}

function expertSource(experts: MoELayerOptions['experts'], E: number): (e: number) => AnyExpertWeights {
  if (typeof experts === 'function') return experts;
  if (Array.isArray(experts)) {
    if (experts.length !== E) throw new ValidationError(`experts: expected ${E} experts, got ${experts.length}`);
    return (e) => experts[e];
  }
  if (experts && typeof experts === 'object' && (experts as StackedExpertWeights).stacked) {
    const s = experts as StackedExpertWeights;
    for (const name of ['w1', 'w3', 'w2'] as const) {
      requireFloat32(`experts.${name}`, s[name], { multipleOf: E });
    }
    const per = s.w1.length / E;
    if (s.w3.length !== s.w1.length || s.w2.length !== s.w1.length) {
      throw new ValidationError(
        `experts: w1, w3 and w2 must have equal lengths (E·f·d), got ${s.w1.length}, ${s.w3.length}, ${s.w2.length}`,
      );
    }
    const slice = (key: 'b1' | 'b3' | 'b2', e: number) => {
      const b = s[key];
      if (b === undefined) return undefined;
      const n = requireFloat32(`experts.${key}`, b, { multipleOf: E }).length / E;
      return b.subarray(e * n, (e + 1) * n);
    };
    return (e) => ({
      w1: s.w1.subarray(e * per, (e + 1) * per),
      w3: s.w3.subarray(e * per, (e + 1) * per),
      w2: s.w2.subarray(e * per, (e + 1) * per),
      ...(hasBiases(s) ? { b1: slice('b1', e), b3: slice('b3', e), b2: slice('b2', e) } : {}),
    });
  }
  throw new ValidationError(
    `experts: expected { w1, w3, w2, stacked: true }, an array of { w1, w3, w2 }, or a function (e) => { w1, w3, w2 }; got ${describe(experts)}`,
  );
}

/**
 * A layer call's token count, checked before any estimator runs or any copy is made (the binding checks it again):
 * at most 2^24 tokens, and T × (maxK + 1) rows — the routed slots and a shared expert's — within 32-bit row indices.
 */
function checkLayerTokens(T: number, maxK: number, cuda: boolean): void {
  if (T > MAX_LAYER_TOKENS)
    throw new ValidationError(`x: ${T} tokens in one call, at most ${MAX_LAYER_TOKENS}; split the batch`);
  if (cuda && T > MAX_CUDA_TOKENS)
    throw new ValidationError(`x: ${T} tokens in one CUDA call, at most ${MAX_CUDA_TOKENS}; split the batch`);
  if (T * (maxK + 1) > 2 ** 31 - 1)
    throw new ValidationError(
      `x: ${T} tokens x (maxK ${maxK} + 1) rows do not fit 32-bit row indices; split the batch`,
    );
}

/** Whether an expert (or shared expert) has any bias term. */
function hasBiases(w: ExpertBiases | undefined): boolean {
  return !!w && typeof w === 'object' && (w.b1 !== undefined || w.b3 !== undefined || w.b2 !== undefined);
}

const CUDA_BIAS_FALLBACK = 'expert biases (the CUDA backend runs experts without them)';
/** The refusals of biases by a CUDA layer being packed: backend 'auto' packs it on the CPU instead. */
const cudaRefusedBiases = new WeakSet<Error>();

/** MoELayerOptions.activation with its defaults; a ValidationError for anything else. */
function resolveActivation(a: ExpertActivation | undefined): ResolvedActivation {
  if (a === undefined) return { kind: 'swiglu' };
  if (!a || typeof a !== 'object')
    throw new ValidationError(
      `activation: expected { kind: 'swiglu' } or { kind: 'gptOss', alpha?, limit? }, got ${describe(a)}`,
    );
  const kind = requireOneOf('activation.kind', a.kind, ['swiglu', 'gptOss'] as const, ValidationError);
  if (kind === 'swiglu') return { kind };
  const g = a as { alpha?: unknown; limit?: unknown };
  // (what float32 holds as a finite number above 0, as the kernels take it)
  const positive = (name: string, v: unknown, fallback: number) => {
    const n = v === undefined ? fallback : v;
    if (typeof n !== 'number' || !(Math.fround(n) > 0) || !Number.isFinite(Math.fround(n)))
      throw new ValidationError(`activation.${name}: expected a finite float32 above 0, got ${describe(v)}`);
    return n;
  };
  return { kind, alpha: positive('alpha', g.alpha, GPT_OSS_ALPHA), limit: positive('limit', g.limit, GPT_OSS_LIMIT) };
}

/** The native setExpertFP8 arguments of three E4M3 matrices. */
function e4m3Args(
  w1: E4m3Matrix,
  w3: E4m3Matrix,
  w2: E4m3Matrix,
): [Uint8Array, Float32Array, Uint8Array, Float32Array, Uint8Array, Float32Array] {
  return [w1.data, w1.scales, w3.data, w3.scales, w2.data, w2.scales];
}

/**
 * An intermediate size: the one given, or w1's rows (w1 is [f, d]) — checked first, so that a missing or ragged w1
 * is named rather than reported as an intermediateSize the caller never passed.
 */
function intermediateOf(
  prefix: string,
  given: number | undefined,
  w: AnyExpertWeights,
  name: string,
  d: number,
  limit: number,
): number {
  if (given === undefined) {
    const w1 = w && isE4m3(w) ? w.e4m3.w1?.data : requireFloat32(`${name}.w1`, (w as ExpertWeights)?.w1, {});
    if (!(w1 instanceof Uint8Array) && !(w1 instanceof Float32Array))
      throw new ValidationError(`${name}.e4m3.w1.data: expected a Uint8Array, got ${describe(w1)}`);
    if (w1.length === 0 || w1.length % d !== 0)
      throw new ValidationError(
        `${name}.w1: expected [f, d=${d}] (a non-zero multiple of ${d} elements), got ${w1.length}; or pass ${prefix}intermediateSize`,
      );
    given = w1.length / d;
  }
  return requireInt(`${prefix}intermediateSize`, given, 1, limit, ValidationError);
}

function checkExpert(name: string, w: ExpertWeights, f: number, d: number): void {
  if (!w || typeof w !== 'object') throw new ValidationError(`${name}: expected { w1, w3, w2 }, got ${describe(w)}`);
  for (const key of ['w1', 'w3', 'w2'] as const) {
    const shape = key === 'w2' ? `[d=${d}, f=${f}]` : `[f=${f}, d=${d}]`;
    const arr = requireFloat32(`${name}.${key}`, w[key], {});
    if (arr.length !== f * d)
      throw new ValidationError(`${name}.${key}: expected ${shape} = ${f * d} elements, got ${arr.length}`);
    requireFinite(`${name}.${key}`, arr);
  }
}
