/**
 * Loads the native addon once (a bundled prebuild, or the local node-gyp build) and turns its errors into the
 * package's error classes. Everything native goes through here.
 */
import * as path from 'node:path';
import { BackendError, DynamicMoEError, ExpertDispatchError, ValidationError } from './errors';

/** The raw addon surface; see native/binding/*.cc for the argument order of each method. */
export interface NativeAddon {
  NativeRouter: new (
    config: object,
    gateWeight: Float32Array,
    bias: Float32Array | null,
    threads: number,
    logitBias: Float32Array | null,
  ) => NativeRouterHandle;
  NativeLayer: new (
    router: NativeRouterHandle,
    dtype: number,
    staticK: number,
    threads: number,
    shareWeightsOf?: NativeLayerHandle | null,
    activation?: { alpha?: number; limit?: number; weightInputs?: boolean } | null,
  ) => NativeLayerHandle;
  rowNorms(x: Float32Array, T: number, d: number, order: number, out: Float32Array): void;
  attentionEntropy(a: Float32Array, heads: number, T: number, S: number, reduceMax: boolean, out: Float32Array): void;
  logitEntropy(logits: Float32Array, T: number, V: number, temperature: number, out: Float32Array): void;
  bench: {
    streamRead(data: Float32Array, threads: number): number;
    denseGemmSeconds(M: number, N: number, K: number, dtype: number, reps: number, threads: number): number;
    fillNormal(out: Float32Array, seed: number, std: number): void;
  };
  /** The metrics text of lib/observability/text-plan.ts (native/telemetry/exposition_text.h). */
  exposition: {
    renderText(blob: Uint8Array, ops: Uint32Array, values: Float64Array): string;
    /** Bytes written into `out`, or minus the bytes it needs (nothing written) when it may be too small. */
    renderInto(blob: Uint8Array, ops: Uint32Array, values: Float64Array, out: Uint8Array): number;
    formatNumber(x: number): string;
  };
  backendInfo(): {
    isa: string;
    threads: number;
    cpuFeatures: Record<string, boolean>;
    gemmRows: number;
    gemmRowsBf16: number;
    /** An fp8 expert with at least this many rows of a batch runs on bf16 pairs (bf16 activations); 0: never. */
    fp8Bf16Rows: number;
    /** Output bytes above which an expert pass writes whole lines with non-temporal stores. */
    streamStoreMinBytes: number;
  };
  /**
   * The process-wide bound on async calls (native/binding/async_gate.h): slots, slots held, calls waiting, calls
   * running on libuv threads now and at most since the previous call of asyncGate(), calls started since the load.
   */
  asyncGate(): {
    limit: number;
    running: number;
    waiting: number;
    executing: number;
    peakExecuting: number;
    started: number;
  };
  /** Loads the CUDA plugin at `path` (once per process) and probes the GPU. */
  cudaLoad(path: string): { loaded: boolean; error?: string; path?: string; device?: CudaDeviceInfo };
  /** Median seconds of one device-to-device copy of `bytes` (the bandwidth anchor). */
  cudaBenchCopy(bytes: number, iterations: number): number;
  NativeCudaLayer: new (router: NativeRouterHandle, staticK: number, intermediateSize: number) => NativeCudaLayerHandle;
  /** Test helpers for forwardDevice: plain device memory (cudaMalloc), freed with cudaFree. */
  cudaAlloc(bytes: number): bigint;
  cudaFree(ptr: bigint): void;
  /** Copies a Float32Array to (toDevice) or from device memory; synchronises with the device. */
  cudaCopy(ptr: bigint, host: Float32Array, toDevice: boolean): void;
}

export interface CudaDeviceInfo {
  name: string;
  index: number;
  computeCapability: string;
  multiprocessors: number;
  memoryBytes: number;
  driverVersion: number;
  runtimeVersion: number;
}

/** Complexity computed on the GPU (cuda/gating.cu), and where its results come back. */
export interface NativeDeviceComplexity {
  /** 2 router entropy, 3 L2 row norm of x, 4 L1 row norm. */
  mode: number;
  /** 0 none, 1 running zscore, 2 frozen zscore, 3 quantile. */
  calibration: number;
  /** count, mean, M2: read, and written back after a host-mode call. */
  state: Float64Array;
  /** (TypeScript only) the state as the call started from it, to merge its batch if other calls finished first. */
  sent?: Float64Array;
  knots: Float64Array | null;
  complexityOut: Float32Array;
}

export interface CudaBenchResult {
  forwardMs: number;
  routeAlignMs: number;
  routeAlignFromXMs: number;
  expertMs: number;
  /** The expert stage with each GEMM tile forced: 32x128, 128x128, 128x256, 128x128x64, 32x64, 32x64x64, wgmma. */
  expertMsByTile: number[];
  expertFlops: number;
  expertBytes: number;
  /** A graph of one empty kernel timed the same way: the floor of the graph-timed figures. */
  emptyGraphMs: number;
  /** Route + align from logits as two launches (gating, then align), each timed alone. */
  gatingMs: number;
  alignMs: number;
  /** routeAlignMs and emptyGraphMs as the mean of 200 graph replays issued back to back. */
  routeAlignStreamMs: number;
  emptyGraphStreamMs: number;
}

/** A layer (or, with intermediateSize 0, a router) on the GPU; see native/binding/cuda_wrap.cc. */
export interface NativeCudaLayerHandle {
  /** The flat drain record; decodeTelemetry() (lib/observability/telemetry-types.ts) reads it. */
  drainTelemetry(): Float64Array;
  /** The same record written into `into` when it fits (returns the number of values), else a new array. */
  drainTelemetry(into: Float64Array): Float64Array | number;
  /** The last drain before a dispose: waits until the device counters of every call so far are copied. */
  drainTelemetry(into: null, final: true): Float64Array;
  recordError(kind: NativeErrorKind): void;
  setExpert(e: number, w1: Float32Array, w3: Float32Array, w2: Float32Array, f: number): void;
  setSharedExpert(w1: Float32Array, w3: Float32Array, w2: Float32Array, f: number, gate: Float32Array | null): void;
  forward(...args: [...ForwardArgs, device: NativeDeviceComplexity | null]): void;
  forwardAsync(...args: [...ForwardArgs, device: NativeDeviceComplexity | null]): Promise<void>;
  forwardDevice(
    input: bigint,
    output: bigint,
    tokens: number,
    stream: bigint | null,
    device: NativeDeviceComplexity | null,
  ): void;
  /** Tests only: forwardDevice captured into a CUDA graph (after one uncaptured call) and replayed `replays` times. */
  captureForward(input: bigint, output: bigint, tokens: number, replays: number): void;
  route(...args: [...RouteArgs, device: NativeDeviceComplexity | null]): void;
  routeAsync(...args: [...RouteArgs, device: NativeDeviceComplexity | null]): Promise<void>;
  info(): {
    weightBytes: number;
    workspaceBytes: number;
    device: number;
    dtype: string;
    isa: string;
    /** Forwards of at most this many tokens take the decode GEMV kernels (MOE_CUDA_GEMV_MAX_TOKENS). */
    gemvMaxTokens: number;
    /** The GEMM tile MOE_CUDA_TILE forces (cuda/kernels.h order), -1 when the layer chooses. */
    forcedTile: number;
  };
  bench(tokens: number, iterations: number, graph: boolean): CudaBenchResult;
  randomize(seed: number, std: number): void;
  dispose(): void;
}

type RouteArgs = [
  mode: number,
  input: Float32Array,
  T: number,
  indices: Int32Array,
  weights: Float32Array,
  k: Int32Array,
  counts: Int32Array,
  stats: Float64Array,
  logits: Float32Array | null,
  probs: Float32Array | null,
  complexity: Float32Array | null,
  complexityNs: number,
];

/** Error kinds counted natively: 0 validation, 1 non_finite, 2 internal. */
export type NativeErrorKind = 0 | 1 | 2;

export interface NativeRouterHandle {
  /** The flat drain record; decodeTelemetry() (lib/observability/telemetry-types.ts) reads it. */
  drainTelemetry(): Float64Array;
  /** The same record written into `into` when it fits (returns the number of values), else a new array. */
  drainTelemetry(into: Float64Array): Float64Array | number;
  recordError(kind: NativeErrorKind): void;
  route(...args: RouteArgs): void;
  routeAsync(...args: RouteArgs): Promise<void>;
  gate(x: Float32Array, T: number, logits: Float32Array): void;
  info(): { threads: number; weightBytes: number };
}

type ForwardArgs = [
  x: Float32Array,
  T: number,
  y: Float32Array,
  indices: Int32Array,
  weights: Float32Array,
  k: Int32Array,
  counts: Int32Array,
  routeStats: Float64Array,
  layerStats: Float64Array,
  logits: Float32Array | null,
  complexity: Float32Array | null,
  complexityNs: number,
  logitsOut: Float32Array | null,
  probsOut: Float32Array | null,
];

/** w1, w3 [f, d] and w2 [d, f] in E4M3, each followed by its scales [rows, ceil(cols / 128)]. */
type Fp8ExpertArgs = [
  q1: Uint8Array,
  s1: Float32Array,
  q3: Uint8Array,
  s3: Float32Array,
  q2: Uint8Array,
  s2: Float32Array,
];

export interface NativeLayerHandle {
  /** The flat drain record; decodeTelemetry() (lib/observability/telemetry-types.ts) reads it. */
  drainTelemetry(): Float64Array;
  /** The same record written into `into` when it fits (returns the number of values), else a new array. */
  drainTelemetry(into: Float64Array): Float64Array | number;
  recordError(kind: NativeErrorKind): void;
  setExpert(e: number, w1: Float32Array, w3: Float32Array, w2: Float32Array, f: number, ...bias: BiasArgs): void;
  setSharedExpert(
    w1: Float32Array,
    w3: Float32Array,
    w2: Float32Array,
    f: number,
    gate: Float32Array | null,
    ...bias: BiasArgs
  ): void;
  /** fp8 layers: E4M3 bytes (q) and their scales per row and 128 columns (s), packed as given. */
  setExpertFP8(...args: [e: number, ...Fp8ExpertArgs, f: number, ...BiasArgs]): void;
  setSharedExpertFP8(...args: [...Fp8ExpertArgs, f: number, gate: Float32Array | null, ...BiasArgs]): void;
  forward(...args: ForwardArgs): void;
  forwardAsync(...args: ForwardArgs): Promise<void>;
  info(): {
    weightBytes: number;
    dtype: string;
    isa: string;
    activation?: { alpha: number; limit: number };
    weightInputs: boolean;
  };
  dispose(): void;
}

/** An expert's optional biases: gate [f], up [f], down [d] (null: none). */
export type BiasArgs = [] | [gate: Float32Array | null, up: Float32Array | null, down: Float32Array | null];

let addon: NativeAddon | undefined;
let loadError: Error | undefined;

/** The package root (dist/.. or lib/..), where node-gyp-build looks for prebuilds/ and build/. */
export const packageRoot = path.resolve(__dirname, '..');

/**
 * Every member of the addon this package calls. A .node that lacks one is another addon, or a build older than this
 * code (a stale build/Release/ shadows the bundled prebuild); test/robustness.test.ts keeps this list equal to
 * what native/binding exports.
 */
export const addonSurface = {
  functions: [
    'rowNorms',
    'attentionEntropy',
    'logitEntropy',
    'backendInfo',
    'asyncGate',
    'cudaLoad',
    'cudaAlloc',
    'cudaFree',
    'cudaCopy',
    'cudaBenchCopy',
  ],
  namespaces: {
    bench: ['streamRead', 'denseGemmSeconds', 'fillNormal'],
    exposition: ['renderText', 'renderInto', 'formatNumber'],
  },
  classes: {
    NativeRouter: ['route', 'routeAsync', 'gate', 'info', 'drainTelemetry', 'recordError'],
    NativeLayer: [
      'setExpert',
      'setSharedExpert',
      'setExpertFP8',
      'setSharedExpertFP8',
      'forward',
      'forwardAsync',
      'info',
      'dispose',
      'drainTelemetry',
      'recordError',
    ],
    NativeCudaLayer: [
      'setExpert',
      'setSharedExpert',
      'forward',
      'forwardAsync',
      'forwardDevice',
      'captureForward',
      'route',
      'routeAsync',
      'info',
      'bench',
      'randomize',
      'drainTelemetry',
      'recordError',
      'dispose',
    ],
  },
} as const;

/** The members of {@link addonSurface} that `candidate` lacks (e.g. `NativeLayer.prototype.forwardAsync`). */
export function missingAddonMembers(candidate: unknown): string[] {
  const missing: string[] = [];
  const given = (typeof candidate === 'object' && candidate !== null ? candidate : {}) as Record<string, unknown>;
  const isFunction = (owner: unknown, key: string) =>
    (typeof owner === 'object' || typeof owner === 'function') &&
    owner !== null &&
    typeof (owner as Record<string, unknown>)[key] === 'function';
  for (const name of addonSurface.functions) if (!isFunction(given, name)) missing.push(name);
  for (const [name, members] of Object.entries(addonSurface.namespaces)) {
    const ns = given[name];
    for (const m of members) if (!isFunction(ns, m)) missing.push(`${name}.${m}`);
  }
  for (const [name, members] of Object.entries(addonSurface.classes)) {
    const ctor = given[name];
    if (typeof ctor !== 'function') {
      missing.push(name);
      continue;
    }
    for (const m of members) if (!isFunction(ctor.prototype, m)) missing.push(`${name}.prototype.${m}`);
  }
  return missing;
}

/**
 * The addon, loaded on first use: the file `MOE_NATIVE_ADDON` names (an absolute path, e.g. a sanitizer build of
 * scripts/test-sanitized.sh), else the local build or the bundled prebuild (node-gyp-build's order). Throws
 * BackendError saying which file was tried, why it failed, and what to do.
 */
export function native(): NativeAddon {
  if (addon) return addon;
  if (loadError) throw loadError;
  const override = process.env.MOE_NATIVE_ADDON;
  let file: string | undefined;
  try {
    if (override) {
      if (!path.isAbsolute(override) || path.extname(override) !== '.node')
        throw new Error('MOE_NATIVE_ADDON must be the absolute path of a .node file');
      file = override;
    } else {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      const gypBuild = require('node-gyp-build') as { resolve(dir: string): string };
      file = gypBuild.resolve(packageRoot);
    }
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const loaded: unknown = require(file);
    const missing = missingAddonMembers(loaded);
    if (missing.length > 0)
      throw new Error(
        `it is not this version's addon (it lacks ${missing.slice(0, 4).join(', ')}` +
          `${missing.length > 4 ? ` and ${missing.length - 4} more` : ''})`,
      );
    addon = loaded as NativeAddon;
    warnAboutEnvironment();
    return addon;
  } catch (cause) {
    const where = override
      ? `MOE_NATIVE_ADDON=${override}`
      : file
        ? file
        : `${packageRoot} (looked for build/Release/*.node and prebuilds/${process.platform}-${process.arch}/*.node)`;
    loadError = new BackendError(
      `could not load the native addon of dynamic-moe-router-kit from ${where}: ${(cause as Error).message}. ` +
        (override
          ? 'Unset it to load the bundled addon.'
          : 'Rebuild it: "npm rebuild dynamic-moe-router-kit" in your project, or "npm run build:native" in a ' +
            'clone of this package (either needs python3, make and a C++17 compiler).'),
      { cause },
    );
    throw loadError;
  }
}

/**
 * The native code reads MOE_ISA, MOE_THREADS and MOE_FP8_PAIRS once and ignores values it cannot use (so that a typo
 * cannot stop a service from starting); this says so, once per process, instead of letting a setting silently not
 * apply.
 */
function warnAboutEnvironment(): void {
  const isa = process.env.MOE_ISA;
  if (isa !== undefined && !/^[ \t]*(amx|avx512|avx2|scalar)[ \t]*$/i.test(isa))
    process.emitWarning(`MOE_ISA=${JSON.stringify(isa)} is not amx, avx512, avx2 or scalar; it is ignored`, {
      code: 'MOE_ENV',
    });
  const threads = process.env.MOE_THREADS;
  if (threads !== undefined && !(/^\s*\+?\d+[ \t]*$/.test(threads) && +threads >= 1 && +threads <= 1024))
    process.emitWarning(
      `MOE_THREADS=${JSON.stringify(threads)} is not an integer in [1, 1024]; it is ignored (all cores are used)`,
      { code: 'MOE_ENV' },
    );
  const pairs = process.env.MOE_FP8_PAIRS;
  if (pairs !== undefined && !/^[ \t]*[01][ \t]*$/.test(pairs))
    process.emitWarning(`MOE_FP8_PAIRS=${JSON.stringify(pairs)} is not 1 or 0; it is ignored`, { code: 'MOE_ENV' });
}

/** Maps an error thrown by the addon (with its `code`) to the package's classes; others pass through. */
export function translateNativeError(err: unknown, context: string): unknown {
  if (err instanceof DynamicMoEError || !(err instanceof Error)) return err;
  const code = (err as Error & { code?: string }).code;
  if (code === 'ERR_MOE_VALIDATION') return new ValidationError(`${context}: ${err.message}`, { cause: err });
  if (code === 'ERR_MOE_DISPOSED') return new ExpertDispatchError(`${context}: ${err.message}`, { cause: err });
  if (code === 'ERR_MOE_CUDA') return new BackendError(`${context}: CUDA backend: ${err.message}`, { cause: err });
  return new BackendError(`${context}: native call failed: ${err.message}`, { cause: err });
}

/** Runs a synchronous native call, translating its errors. */
export function callNative<T>(context: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw translateNativeError(err, context);
  }
}

/** Awaits an asynchronous native call, translating its errors. */
export async function callNativeAsync<T>(context: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw translateNativeError(err, context);
  }
}
