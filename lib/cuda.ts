/**
 * The CUDA backend's TypeScript side: finds the plugin (cuda/ -> moe_cuda.so, a separate shared library with a C
 * ABI), loads it on first request, says why it is not available, and turns a dynamic router's estimator into a
 * request for complexity computed on the GPU. Kernels: cuda/*.cu; binding: native/binding/cuda_wrap.cc.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BackendError, ValidationError } from './errors';
import { GradientNormEstimator, RouterEntropyEstimator, type ComplexityEstimator } from './estimators';
import { native, packageRoot, type CudaDeviceInfo, type NativeDeviceComplexity } from './native';
import type { RouteOptions } from './types';

/** The most tokens one CUDA call takes: the kernels' grid of 65535 blocks of 8 tokens (cuda/layer.cu). */
export const MAX_CUDA_TOKENS = 65535 * 8;

/** Where a router or layer runs: 'cpu', 'cuda', or 'auto' (the GPU when the plugin loads and a GPU answers). */
export type BackendName = 'auto' | 'cpu' | 'cuda';

export interface CudaStatus {
  available: boolean;
  /** Why not, when unavailable: what was looked for, what failed, what to do. */
  reason?: string;
  /** The plugin file that loaded. */
  path?: string;
  device?: CudaDeviceInfo;
}

/** The plugin files tried, in order: $MOE_CUDA_PLUGIN, the local build, a bundled prebuild. */
export function cudaPluginCandidates(): string[] {
  const out: string[] = [];
  if (process.env.MOE_CUDA_PLUGIN) out.push(path.resolve(process.env.MOE_CUDA_PLUGIN));
  out.push(path.join(packageRoot, 'build-cuda', 'moe_cuda.so'));
  out.push(path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}-cuda`, 'moe_cuda.so'));
  return out;
}

let status: CudaStatus | undefined;

/**
 * Loads the CUDA plugin once (later calls return the same answer) and reports whether it can run here. The answer
 * is a copy: changing it changes nothing the backend choice reads.
 */
export function cudaStatus(): CudaStatus {
  const s = loadStatus();
  return { ...s, device: s.device && { ...s.device } };
}

function loadStatus(): CudaStatus {
  if (status) return status;
  if (process.platform !== 'linux') {
    status = { available: false, reason: `the CUDA backend is built for Linux only (this is ${process.platform})` };
    return status;
  }
  const explicit = process.env.MOE_CUDA_PLUGIN;
  if (explicit && !fs.existsSync(path.resolve(explicit))) {
    // a path the user named is not silently replaced by another plugin
    status = { available: false, reason: `MOE_CUDA_PLUGIN is ${explicit}, which does not exist` };
    return status;
  }
  const candidates = cudaPluginCandidates();
  const file = candidates.find((p) => fs.existsSync(p));
  if (!file) {
    status = {
      available: false,
      reason:
        `no CUDA plugin found (looked for ${candidates.join(', ')}); build it with "npm run build:cuda" ` +
        '(needs the CUDA toolkit) or point MOE_CUDA_PLUGIN at moe_cuda.so',
    };
    return status;
  }
  const r = native().cudaLoad(file);
  status = r.loaded
    ? { available: true, path: r.path, device: r.device }
    : { available: false, path: file, reason: r.error ?? 'unknown error' };
  return status;
}

/** The backend to use for `requested`; throws BackendError when 'cuda' was asked for and cannot run. */
export function resolveBackend(requested: unknown, what: string): 'cpu' | 'cuda' {
  if (requested !== 'auto' && requested !== 'cpu' && requested !== 'cuda')
    throw new ValidationError(`${what}.backend: expected 'auto', 'cpu' or 'cuda', got ${String(requested)}`);
  if (requested === 'cpu') return 'cpu';
  const s = cudaStatus();
  if (s.available) return 'cuda';
  if (requested === 'auto') return 'cpu';
  throw new BackendError(`${what}: backend 'cuda' is not available: ${s.reason}`);
}

/**
 * With backend 'auto': whether `err`, thrown while a router or layer was being set up on the GPU, sends it to the
 * CPU instead. Only failures of the CUDA side qualify (a configuration the kernels refuse, GPU memory running
 * out: the plugin's errors); the caller's own mistakes (wrong lengths, NaN weights) are rethrown, since the CPU
 * would refuse them too.
 */
export function isCudaSetupFailure(err: unknown): err is BackendError {
  return err instanceof BackendError && (err.cause as { code?: unknown } | undefined)?.code === 'ERR_MOE_CUDA';
}

const warned = new Set<string>();

/**
 * A router or layer asked for 'auto' goes to the CPU because the GPU refused it: `reason`, which the object keeps
 * (`cpuFallbackReason`), and one process warning (code MOE_CUDA_FALLBACK) per distinct reason, so that a model of
 * 48 layers warns once.
 */
export function cpuFallback(reason: string): string {
  if (!warned.has(reason)) {
    warned.add(reason);
    process.emitWarning(`backend 'auto' runs on the CPU: ${reason}`, { code: 'MOE_CUDA_FALLBACK' });
  }
  return reason;
}

/**
 * The GPU's share of a dynamic routing call: complexity from router entropy or the row norms of x, with the
 * estimator's calibration, or null when the host must compute it (caller scores, other estimators).
 */
export function deviceComplexityFor(
  estimator: ComplexityEstimator | undefined,
  tokens: number,
  opts: RouteOptions,
): NativeDeviceComplexity | null {
  if (!estimator || opts.complexity) return null;
  let mode: number;
  if (estimator instanceof RouterEntropyEstimator) mode = 2;
  else if (estimator instanceof GradientNormEstimator && !opts.context?.tensor) mode = estimator.norm === 'l1' ? 4 : 3;
  else return null;
  const calibration = estimator.calibrator.deviceState();
  if (!calibration) return null;
  return { mode, ...calibration, sent: Float64Array.from(calibration.state), complexityOut: new Float32Array(tokens) };
}

/**
 * When a queued async call starts: the calibration as it is now, with the batches of the calls before it
 * absorbed (the snapshot taken when the call was made would drop them: each call writes its state back).
 */
export function refreshDeviceComplexity(estimator: ComplexityEstimator | undefined, device: NativeDeviceComplexity) {
  const now = estimator?.calibrator.deviceState();
  if (!now) return;
  device.calibration = now.calibration;
  device.state.set(now.state);
  device.sent = Float64Array.from(now.state);
  device.knots = now.knots;
}

/** After a host-mode device call: the running calibration statistics now include that batch. */
export function absorbDeviceComplexity(estimator: ComplexityEstimator | undefined, device: NativeDeviceComplexity) {
  estimator?.calibrator.absorbDeviceState(device.state, device.sent);
}
