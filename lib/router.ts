/**
 * `Router`: scores router logits and chooses experts per token, natively, for every rule of lib/types.ts.
 * JS validates and allocates the outputs; native/binding/router_wrap.cc translates; native/cpu computes.
 */
import { ExpertDispatchError, ValidationError } from './errors';
import type { ComplexityEstimator } from './estimators';
import { routerOptionsFromConfig, type FromConfigOverrides } from './models/router-config';
import {
  absorbDeviceComplexity,
  cpuFallback,
  deviceComplexityFor,
  isCudaSetupFailure,
  MAX_CUDA_TOKENS,
  refreshDeviceComplexity,
  resolveBackend,
  type BackendName,
} from './cuda';
import {
  callNative,
  callNativeAsync,
  native,
  type NativeCudaLayerHandle,
  type NativeDeviceComplexity,
  type NativeRouterHandle,
} from './native';
import {
  checkRouterWeights,
  resolveRouting,
  toNativeConfig,
  type ResolvedRouting,
  type RouterOptions,
} from './router-options';
import type { RouteOptions, RoutingResult, Selection } from './types';
import { callOptions, requireFloat32 } from './validate';
import { decodeTelemetry, type TelemetryDelta } from './observability/telemetry-types';
import { FinalDrain } from './final-drain';
import { SerialQueue } from './serial-queue';

/** The most tokens one routing call takes (the binding's bound too). */
const MAX_ROUTER_TOKENS = 1 << 26;

/**
 * The token count of a [T, width] input, validated — its bound included, before an estimator runs or an output
 * is allocated.
 */
function rowsOf(name: string, arr: Float32Array, width: number): number {
  requireFloat32(name, arr, { multipleOf: width });
  const T = arr.length / width;
  if (T > MAX_ROUTER_TOKENS)
    throw new ValidationError(`${name}: ${T} tokens in one call, at most ${MAX_ROUTER_TOKENS}; split the batch`);
  return T;
}

/** What one routing call needs besides x: complexity for dynamic k, and logits when they had to come first. */
export interface PreparedRouting {
  tokens: number;
  complexity: Float32Array | null;
  /** Set when the estimator needed logits, so the native call selects from them instead of recomputing. */
  logits: Float32Array | null;
  /** Time spent estimating complexity (ns), reported as the `complexity` stage. */
  complexityNs: number;
}

/** A prepared call for the CUDA backend: `device` set when the GPU computes the complexity itself. */
export interface PreparedDeviceRouting {
  prepared: PreparedRouting;
  device: NativeDeviceComplexity | null;
}

/** Output buffers of one call, allocated in JS (V8 owns them). */
export interface RoutingBuffers {
  result: RoutingResult;
  stats: Float64Array;
}

export class Router {
  /** The validated configuration (defaults applied). */
  readonly config: Readonly<ResolvedRouting>;
  /** The complexity estimator of the dynamic rule, if any. Call `estimator.calibrate()` for reproducible k. */
  readonly estimator: ComplexityEstimator | undefined;
  /** @internal The native router (CPU; it also holds the weights a CUDA router or layer is built from). */
  readonly handle: NativeRouterHandle;
  /** Where route() runs: 'cpu' or 'cuda' (see RouterOptions.backend). */
  readonly backend: 'cpu' | 'cuda';
  /**
   * Set when 'auto' was asked for and the GPU is available but this router runs on the CPU: why (the CUDA side
   * refused it, e.g. a configuration its kernels do not take, or GPU memory ran out).
   */
  readonly cpuFallbackReason?: string;
  /** @internal The backend asked for: what a layer built on this router asks for by default. */
  readonly requestedBackend: BackendName;
  private gpu: NativeCudaLayerHandle | undefined;
  /** What drains read: the GPU router until dispose() frees it (after its pending calls), else the CPU one. */
  private readonly counters: NativeCudaLayerHandle | NativeRouterHandle;
  /** A disposed router's last drain, taken after its last call (before a GPU router is freed): the next drain returns it. */
  private readonly finalDrain = new FinalDrain();
  private disposed = false;
  /** Set once that last drain is taken: later drains are refused. */
  private drained = false;
  private readonly queue = new SerialQueue();

  /**
   * @param opts gate weight [E, d] (copied), scoring, selection rule, weight options, bias, groups, threads.
   * @throws RouterConfigurationError naming the first bad option.
   */
  constructor(opts: RouterOptions) {
    const addon = native();
    this.config = Object.freeze(resolveRouting(opts, addon.backendInfo().threads));
    checkRouterWeights(opts, this.config);
    this.estimator = this.config.estimator;
    const cfg = toNativeConfig(this.config);
    this.handle = callNative(
      'Router',
      () =>
        new addon.NativeRouter(cfg, opts.gateWeight, opts.bias ?? null, this.config.threads, opts.logitBias ?? null),
    );
    this.requestedBackend = opts.backend ?? 'cpu';
    this.backend = resolveBackend(this.requestedBackend, 'Router');
    if (this.backend === 'cuda') {
      try {
        this.gpu = callNative('Router', () => new addon.NativeCudaLayer(this.handle, 1, 0));
      } catch (err) {
        if (this.requestedBackend !== 'auto' || !isCudaSetupFailure(err)) throw err;
        this.backend = 'cpu';
        this.cpuFallbackReason = cpuFallback(err.message);
      }
    }
    this.counters = this.gpu ?? this.handle;
  }

  /** @internal The GPU router, when backend is 'cuda' (until dispose()). */
  get cudaHandle(): NativeCudaLayerHandle | undefined {
    return this.gpu;
  }

  /**
   * Frees a CUDA router's device memory: now, or — when routeAsync calls are still pending — once they have run
   * (they complete normally). Either way the router refuses new calls from here on. Layers built on it keep
   * working (they hold what they need). A CPU router holds host memory only, which the garbage collector frees.
   * On either backend the router's counters are drained once more after its last call: the next drain returns
   * that record, later ones throw ExpertDispatchError (a MetricsCollector then detaches the router, as it does a
   * disposed layer).
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const gpu = this.gpu;
    this.gpu = undefined;
    this.queue.afterPending(() =>
      this.finalDrain.takeThenFree(
        () => (gpu ? gpu.drainTelemetry(null, true) : this.handle.drainTelemetry()),
        () => {
          this.drained = true;
          gpu?.dispose();
        },
      ),
    );
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private live(): void {
    if (this.disposed) throw new ExpertDispatchError('Router: this router was disposed');
  }

  /** What drains read, until dispose()'s last drain has been taken. */
  private liveCounters(): NativeCudaLayerHandle | NativeRouterHandle {
    if (this.drained) throw new ExpertDispatchError('Router: this router was disposed');
    return this.counters;
  }

  /**
   * A router with the model's own rule, read from a Hugging Face config.json object (`model_type`):
   * mixtral, olmoe, qwen2_moe, qwen3_moe, qwen3_next, qwen3_vl_moe, qwen3_5_moe (and _text), deepseek_v2,
   * deepseek_v3, glm4_moe, ernie4_5_moe, gpt_oss, llama4, llama4_text; a vision-language config's text_config is read.
   * `overrides` can replace the rule (e.g. `{ selection: { kind: 'topp', p: 0.4 } }`) and the weight options.
   * @throws RouterConfigurationError for an unknown model_type or a bad field.
   */
  static fromConfig(hfConfig: unknown, gateWeight: Float32Array, overrides: FromConfigOverrides = {}): Router {
    return new Router(routerOptionsFromConfig(hfConfig, gateWeight, overrides));
  }

  get numExperts(): number {
    return this.config.numExperts;
  }
  get hiddenSize(): number {
    return this.config.hiddenSize;
  }
  /** Row width of `indices` / `weights`: the most experts any token can get. */
  get maxK(): number {
    return this.config.maxK;
  }
  /** The selection rule's kind. */
  get selection(): Selection['kind'] {
    return this.config.selection;
  }

  /**
   * Routes T tokens synchronously.
   * @param x hidden states [T, d], Float32Array row-major.
   * @returns indices [T, maxK] (-1 padded), weights [T, maxK] (0 padded), k [T], stats, and the optional outputs.
   * @throws ValidationError for a wrong type or length, a detached buffer, or NaN/Inf in x (found natively).
   */
  route(x: Float32Array, opts: RouteOptions = {}): RoutingResult {
    this.live();
    const { prepared, device } = this.countValidationErrors(() => this.prepareFor(x, opts));
    const buffers = this.allocate(prepared, opts);
    const args = this.nativeArgs(x, prepared, buffers);
    const cuda = this.cudaHandle;
    callNative('route', () => (cuda ? cuda.route(...args, device) : this.handle.route(...args)));
    return this.finishDevice(buffers, device);
  }

  /**
   * As {@link route}, off the event loop, on a private copy of x (reuse or transfer x at once). The async calls
   * of one router run one after another.
   */
  async routeAsync(x: Float32Array, opts: RouteOptions = {}): Promise<RoutingResult> {
    this.live();
    const { prepared, device } = this.countValidationErrors(() => this.prepareFor(x, opts));
    x = this.privateInputs(x, prepared);
    const buffers = this.allocate(prepared, opts);
    const args = this.nativeArgs(x, prepared, buffers);
    const cuda = this.cudaHandle;
    await this.queue.run(() =>
      callNativeAsync('routeAsync', () => {
        if (!cuda) return this.handle.routeAsync(...args);
        if (device) refreshDeviceComplexity(this.estimator, device);
        return cuda.routeAsync(...args, device);
      }),
    );
    return this.finishDevice(buffers, device);
  }

  /** Router logits [T, E] = x · gateWeightᵀ (plus logitBias). */
  logits(x: Float32Array): Float32Array {
    this.live();
    return this.gate(x);
  }

  /** logits(), also for the layers built on a disposed router (they keep working). */
  private gate(x: Float32Array): Float32Array {
    const T = this.tokensOf(x, 'x');
    const out = new Float32Array(T * this.numExperts);
    callNative('logits', () => this.handle.gate(x, T, out));
    return out;
  }

  /**
   * Selection only, from logits [T, E] computed elsewhere (e.g. with added noise).
   * @throws ValidationError for a wrong length or non-finite logits.
   */
  routeLogits(logits: Float32Array, opts: RouteOptions = {}): RoutingResult {
    this.live();
    const prepared = this.countValidationErrors((): PreparedRouting => {
      opts = callOptions(opts);
      const T = this.cudaBound('logits', rowsOf('logits', logits, this.numExperts));
      const start = process.hrtime.bigint();
      const complexity = this.complexityFor(null, T, logits, opts);
      return { tokens: T, complexity, logits, complexityNs: complexity ? Number(process.hrtime.bigint() - start) : 0 };
    });
    const buffers = this.allocate(prepared, opts);
    const args = this.nativeArgs(logits, prepared, buffers);
    const cuda = this.cudaHandle;
    callNative('routeLogits', () => (cuda ? cuda.route(...args, null) : this.handle.route(...args)));
    return finish(buffers);
  }

  /** @internal T of a [T, d] input, validated. */
  tokensOf(x: Float32Array, name: string): number {
    return this.cudaBound(name, rowsOf(name, x, this.hiddenSize));
  }

  /** T, checked against what one CUDA call takes when this router runs there (a package error, not a CUDA one). */
  private cudaBound(name: string, T: number): number {
    if (this.backend === 'cuda' && T > MAX_CUDA_TOKENS)
      throw new ValidationError(`${name}: ${T} tokens in one CUDA call, at most ${MAX_CUDA_TOKENS}; split the batch`);
    return T;
  }

  /**
   * Native counters of this router since the previous drain (calls, tokens, errors, k and stage histograms,
   * tokens per expert, span records). One N-API call that returns a flat record, decoded here; never waits for
   * compute. See lib/observability.
   */
  drainTelemetry(): TelemetryDelta {
    return decodeTelemetry(this.finalDrain.once() ?? this.liveCounters().drainTelemetry());
  }

  /**
   * @internal The same drain as its flat record (telemetry-types.ts), written into `into` when it fits (returns
   * the number of values) or as a new array: what MetricsCollector reads without decoding it.
   */
  drainTelemetryRecord(into: Float64Array): Float64Array | number {
    return this.finalDrain.onceInto(into) ?? this.liveCounters().drainTelemetry(into);
  }

  /** @internal Runs input validation, counting a failure in the native `validation` error counter. */
  countValidationErrors<T>(fn: () => T, sink: { recordError(kind: 0): void } = this.cudaHandle ?? this.handle): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof ValidationError) sink.recordError(0);
      throw err;
    }
  }

  /**
   * @internal For calls whose native work runs on another thread: copies of x and of caller-given complexity
   * (replaced in `prepared`), so that the caller detaching or transferring their buffers meanwhile cannot pull
   * memory from under the native code. The outputs are allocated here and stay private until the call resolves.
   * Copies by the Float32Array constructor: slice() would follow a subclass's Symbol.species, which can hand back
   * a view of memory the caller still holds. Complexity is copied whatever produced it (an estimator subclass may
   * return a buffer it keeps).
   */
  privateInputs(x: Float32Array, prepared: PreparedRouting): Float32Array {
    if (prepared.complexity) prepared.complexity = new Float32Array(prepared.complexity);
    return new Float32Array(x);
  }

  /**
   * @internal As {@link prepare}, for the CUDA backend: when the estimator can run on the GPU (router entropy,
   * row norms of x), nothing is computed here and `device` carries the request; else the host prepares.
   */
  prepareFor(
    x: Float32Array,
    opts: RouteOptions,
    onDevice = this.backend === 'cuda',
    checkTokens?: (tokens: number) => void,
  ): PreparedDeviceRouting {
    opts = callOptions(opts);
    if (onDevice && this.config.selection === 'dynamic') {
      const T = this.tokensOf(x, 'x');
      checkTokens?.(T);
      const device = deviceComplexityFor(this.estimator, T, opts);
      if (device) return { prepared: { tokens: T, complexity: null, logits: null, complexityNs: 0 }, device };
    }
    return { prepared: this.prepare(x, opts, checkTokens), device: null };
  }

  /** @internal finish(), plus the complexity and calibration state a device estimator sent back. */
  finishDevice(buffers: RoutingBuffers, device: NativeDeviceComplexity | null): RoutingResult {
    const result = finish(buffers);
    if (device) {
      result.complexity = device.complexityOut;
      absorbDeviceComplexity(this.estimator, device);
    }
    return result;
  }

  /** @internal Validates x and computes what the dynamic rule needs. */
  prepare(x: Float32Array, opts: RouteOptions, checkTokens?: (tokens: number) => void): PreparedRouting {
    const T = this.tokensOf(x, 'x');
    checkTokens?.(T); // a caller's own bound (a layer's), before anything is computed
    if (this.config.selection !== 'dynamic') return { tokens: T, complexity: null, logits: null, complexityNs: 0 };
    const start = process.hrtime.bigint();
    let logits: Float32Array | null = null;
    if (!opts.complexity && this.estimator?.needsLogits) logits = this.gate(x);
    const complexity = this.complexityFor(x, T, logits, opts);
    return { tokens: T, complexity, logits, complexityNs: Number(process.hrtime.bigint() - start) };
  }

  private complexityFor(
    x: Float32Array | null,
    T: number,
    logits: Float32Array | null,
    opts: RouteOptions,
  ): Float32Array | null {
    if (this.config.selection !== 'dynamic') return null;
    if (opts.complexity) {
      const c = requireFloat32('complexity', opts.complexity, { length: T });
      for (let i = 0; i < T; i++) {
        if (!(c[i] >= 0 && c[i] <= 1))
          throw new ValidationError(`complexity: element ${i} is ${c[i]}, expected a value in [0, 1]`);
      }
      return c;
    }
    const estimator = this.estimator!;
    // (the router's own facts last: a context cannot replace them)
    const c = estimator.estimate({
      ...opts.context,
      x: x ?? new Float32Array(0),
      tokens: T,
      hiddenSize: this.hiddenSize,
      logits: logits ?? undefined,
      numExperts: this.numExperts,
    });
    for (let i = 0; i < T; i++) {
      if (!(c[i] >= 0 && c[i] <= 1)) {
        throw new ValidationError(
          `${estimator.name} estimator: score ${i} is ${c[i]}, expected a value in [0, 1] (non-finite input?)`,
        );
      }
    }
    return c;
  }

  /** @internal Output arrays for one call. */
  allocate(prepared: PreparedRouting, opts: RouteOptions): RoutingBuffers {
    const T = prepared.tokens;
    const E = this.numExperts;
    const K = this.maxK;
    const result: RoutingResult = {
      tokens: T,
      maxK: K,
      indices: new Int32Array(T * K),
      weights: new Float32Array(T * K),
      k: new Int32Array(T),
      stats: { expertCounts: new Int32Array(E), meanK: 0, auxLoss: 0, zLoss: 0, loadBalance: 0, assignments: 0 },
    };
    if (opts.returnLogits) result.logits = prepared.logits ?? new Float32Array(T * E);
    if (opts.returnProbs) result.probs = new Float32Array(T * E);
    if (prepared.complexity) result.complexity = prepared.complexity;
    return { result, stats: new Float64Array(5) };
  }

  private nativeArgs(input: Float32Array, prepared: PreparedRouting, b: RoutingBuffers) {
    const r = b.result;
    const fromLogits = prepared.logits !== null;
    return [
      fromLogits ? 1 : 0,
      fromLogits ? prepared.logits! : input,
      prepared.tokens,
      r.indices,
      r.weights,
      r.k,
      r.stats.expertCounts,
      b.stats,
      fromLogits ? null : (r.logits ?? null),
      r.probs ?? null,
      prepared.complexity,
      prepared.complexityNs,
    ] as const;
  }
}

/** @internal Copies the native stats vector into the result. */
export function finish(b: RoutingBuffers): RoutingResult {
  const s = b.result.stats;
  s.meanK = b.stats[0];
  s.auxLoss = b.stats[1];
  s.zLoss = b.stats[2];
  s.loadBalance = b.stats[3];
  s.assignments = b.stats[4];
  return b.result;
}
