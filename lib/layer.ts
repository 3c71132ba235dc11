/**
 * `MoELayer`: one Mixture-of-Experts layer forward on the CPU — route, dispatch, grouped SwiGLU expert GEMM,
 * combine — with weights prepacked once (fp32 or bf16). JS validates and allocates; native/cpu/layer.cc runs.
 */
import { describe, ExpertDispatchError, ValidationError } from './errors';
import { callNative, callNativeAsync, native, type NativeLayerHandle } from './native';
import { finish, Router, type PreparedRouting, type RoutingBuffers } from './router';
import type { RouteOptions, RoutingResult } from './types';
import { loadPretrainedLayer, type FromPretrainedOptions } from './models/pretrained';
import type { TelemetryDelta } from './observability/telemetry-types';
import { SerialQueue } from './serial-queue';
import { requireFinite, requireFloat32, requireInt, requireOneOf } from './validate';

/** One expert's SwiGLU FFN in Hugging Face layout: w1 (gate_proj) [f, d], w3 (up_proj) [f, d], w2 (down_proj) [d, f]. */
export interface ExpertWeights {
  w1: Float32Array;
  w3: Float32Array;
  w2: Float32Array;
}

/** All experts stacked: w1 and w3 [E, f, d], w2 [E, d, f]. */
export interface StackedExpertWeights extends ExpertWeights {
  stacked: true;
}

/** An always-on expert added to every token's output (Qwen2-MoE `shared_expert`, DeepSeek `shared_experts`). */
export interface SharedExpertOptions extends ExpertWeights {
  /** Its intermediate size (DeepSeek: n_shared_experts * moe_intermediate_size). Default: from w1's length. */
  intermediateSize?: number;
  /** Qwen2-MoE `shared_expert_gate` [d]: the shared output is scaled by sigmoid(x · gate) per token. */
  gate?: Float32Array;
}

export interface MoELayerOptions {
  router: Router;
  /** Stacked weights, one object per expert, or a loader called once per expert (so each can be dropped after packing). */
  experts?: StackedExpertWeights | ExpertWeights[] | ((expert: number) => ExpertWeights);
  /**
   * Instead of `experts`: reuse the packed weights (and dtype, shared experts) of this layer, without copying.
   * The router must have the same numExperts and hiddenSize. See {@link MoELayer.withRouter}.
   */
  shareWeightsOf?: MoELayer;
  /** Routed experts' intermediate size f. Default: from the weight lengths. */
  intermediateSize?: number;
  sharedExperts?: SharedExpertOptions;
  /** Weight storage: 'fp32' (default) or 'bf16' (converted once here; activations become bf16 in the GEMMs). */
  dtype?: 'fp32' | 'bf16';
  /** The model's static top-k, the baseline of `flopsSaved`. Default: the router's k (top-k rules) or maxK. */
  staticK?: number;
  /** Threads of the expert stages; default: the router's. */
  threads?: number;
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

export interface ForwardResult {
  /** y [T, d]. */
  output: Float32Array;
  routing: RoutingResult;
  stats: LayerStats;
}

const LAYER_STATS = 7;

export class MoELayer {
  readonly router: Router;
  readonly dtype: 'fp32' | 'bf16';
  readonly intermediateSize: number;
  readonly staticK: number;
  readonly hasSharedExpert: boolean;
  private handle: NativeLayerHandle | undefined;
  private readonly queue = new SerialQueue();

  /**
   * Packs the expert weights (fp32 or bf16) once. The arrays given are not kept.
   * @throws ValidationError for wrong weight lengths or non-finite weights.
   */
  constructor(opts: MoELayerOptions) {
    if (!(opts?.router instanceof Router))
      throw new ValidationError(`router: expected a Router, got ${describe(opts?.router)}`);
    this.router = opts.router;
    const { numExperts: E, hiddenSize: d } = this.router.config;
    this.dtype = requireOneOf('dtype', opts.dtype ?? 'fp32', ['fp32', 'bf16'] as const);
    const cfg = this.router.config;
    const defaultStaticK = cfg.selection === 'topk' || cfg.selection === 'gptOss' ? cfg.k : cfg.maxK;
    this.staticK = requireInt('staticK', opts.staticK ?? defaultStaticK, 1, E, ValidationError);
    const threads = requireInt('threads', opts.threads ?? cfg.threads, 1, 1024, ValidationError);
    const addon = native();
    if (opts.shareWeightsOf !== undefined) {
      const other = opts.shareWeightsOf;
      if (!(other instanceof MoELayer))
        throw new ValidationError(`shareWeightsOf: expected an MoELayer, got ${describe(other)}`);
      if (other.numExperts !== E || other.hiddenSize !== d) {
        throw new ValidationError(
          `router: expected numExperts=${other.numExperts} and hiddenSize=${other.hiddenSize} to share weights, got ${E} and ${d}`,
        );
      }
      this.dtype = other.dtype;
      this.intermediateSize = other.intermediateSize;
      this.hasSharedExpert = other.hasSharedExpert;
      const source = other.live();
      this.handle = callNative(
        'MoELayer',
        () => new addon.NativeLayer(this.router.handle, 0, this.staticK, threads, source),
      );
      return;
    }
    const expertAt = expertSource(opts.experts, E);
    const first = expertAt(0);
    const f = opts.intermediateSize ?? first.w1?.length / d;
    this.intermediateSize = requireInt('intermediateSize', f, 1, 1 << 20, ValidationError);
    const handle = callNative(
      'MoELayer',
      () => new addon.NativeLayer(this.router.handle, this.dtype === 'fp32' ? 0 : 1, this.staticK, threads),
    );
    for (let e = 0; e < E; e++) {
      const w = e === 0 ? first : expertAt(e);
      checkExpert(`experts[${e}]`, w, this.intermediateSize, d);
      callNative(`experts[${e}]`, () => handle.setExpert(e, w.w1, w.w3, w.w2, this.intermediateSize));
    }
    this.hasSharedExpert = opts.sharedExperts !== undefined;
    if (opts.sharedExperts) {
      const s = opts.sharedExperts;
      const sf = requireInt(
        'sharedExperts.intermediateSize',
        s.intermediateSize ?? s.w1?.length / d,
        1,
        1 << 22,
        ValidationError,
      );
      checkExpert('sharedExperts', s, sf, d);
      if (s.gate !== undefined) {
        requireFloat32('sharedExperts.gate', s.gate, { length: d });
        requireFinite('sharedExperts.gate', s.gate);
      }
      callNative('sharedExperts', () => handle.setSharedExpert(s.w1, s.w3, s.w2, sf, s.gate ?? null));
    }
    this.handle = handle;
  }

  /**
   * One sparse layer of a local Hugging Face checkpoint folder (Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE,
   * DeepSeek-V2/V3), with the model's routing rule unless `opts.selection` overrides it.
   * @throws ModelLoadError for missing or malformed files, dense layers and shape mismatches.
   */
  static fromPretrained(dir: string, opts: FromPretrainedOptions): MoELayer {
    return loadPretrainedLayer(dir, opts);
  }

  /**
   * A layer that routes with `router` over this layer's packed weights (shared, not copied): switch a loaded
   * model between static and dynamic routing without reloading. `staticK` stays this layer's unless given.
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
   * y = Σ weight · SwiGLU_e(x) (+ shared expert), synchronously.
   * @param x hidden states [T, d], Float32Array row-major.
   * @throws ValidationError for a bad x (type, length, detached, NaN/Inf); ExpertDispatchError after dispose().
   */
  forward(x: Float32Array, opts: RouteOptions = {}): ForwardResult {
    const call = this.prepare(x, opts);
    callNative('forward', () => this.live().forward(...call.args));
    return call.finish();
  }

  /** As {@link forward}, off the event loop, on a private copy of x; async calls of one layer run one after another. */
  async forwardAsync(x: Float32Array, opts: RouteOptions = {}): Promise<ForwardResult> {
    const call = this.prepare(x, opts, true);
    await this.queue.run(() => callNativeAsync('forwardAsync', () => this.live().forwardAsync(...call.args)));
    return call.finish();
  }

  /** Releases the packed weights now (a running forwardAsync keeps them until it ends). */
  dispose(): void {
    this.handle?.dispose();
    this.handle = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private live(): NativeLayerHandle {
    if (!this.handle) throw new ExpertDispatchError('MoELayer: this layer was disposed');
    return this.handle;
  }

  /** Native counters of this layer's forwards since the previous drain; see {@link Router.drainTelemetry}. */
  drainTelemetry(): TelemetryDelta {
    return this.live().drainTelemetry();
  }

  /** `copyInputs` (async calls): work on private copies of x and of caller complexity (Router.privateInputs). */
  private prepare(x: Float32Array, opts: RouteOptions, copyInputs = false) {
    const handle = this.live();
    const prepared: PreparedRouting = this.router.countValidationErrors(() => this.router.prepare(x, opts), handle);
    if (copyInputs) x = this.router.privateInputs(x, prepared, opts);
    const buffers: RoutingBuffers = this.router.allocate(prepared, { ...opts, returnLogits: false });
    const T = prepared.tokens;
    const output = new Float32Array(T * this.hiddenSize);
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
    ] as const;
    return {
      args,
      finish: (): ForwardResult => {
        const routing = finish(buffers);
        if (opts.returnLogits && prepared.logits) routing.logits = prepared.logits;
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

function expertSource(experts: MoELayerOptions['experts'], E: number): (e: number) => ExpertWeights {
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
    return (e) => ({
      w1: s.w1.subarray(e * per, (e + 1) * per),
      w3: s.w3.subarray(e * per, (e + 1) * per),
      w2: s.w2.subarray(e * per, (e + 1) * per),
    });
  }
  throw new ValidationError(
    `experts: expected { w1, w3, w2, stacked: true }, an array of { w1, w3, w2 }, or a function (e) => { w1, w3, w2 }; got ${describe(experts)}`,
  );
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
