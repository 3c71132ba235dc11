/** Which backends the package can use here, and why the others cannot. */
import { cudaStatus, type CudaStatus } from './cuda';
import { native } from './native';

export interface BackendInfo {
  /** The backend `backend: 'auto'` picks. */
  backend: 'cpu' | 'cuda';
  /** The SIMD level of the CPU kernels: amx (AVX-512 plus AMX tiles for bf16), avx512, avx2 or scalar (MOE_ISA can cap it). */
  isa: string;
  /** Threads of the shared compute pool (MOE_THREADS, default: all cores). */
  threads: number;
  /**
   * An expert of a `dtype: 'fp8'` layer that gets at least this many rows of a batch runs on bf16 pairs, with bf16
   * activations (AMX tiles, or vdpbf16ps on AMD's AVX-512); 0: every fp8 expert takes fp32 activations.
   * MOE_FP8_PAIRS=1 or 0 turns the pairs on (where a kernel exists) or off.
   */
  fp8Bf16Rows: number;
  cpuFeatures: Record<string, boolean>;
  /** The CUDA plugin: whether it loaded and found a GPU, which one, or why not. */
  cuda: CudaStatus;
  /** Backends not in use by 'auto', with the reason. */
  unavailable: Record<string, string>;
}

/** Reports the loaded backends. Loads the CUDA plugin if one is found (never throws for its absence). */
export function backendInfo(): BackendInfo {
  const info = native().backendInfo();
  const cuda = cudaStatus();
  return {
    backend: cuda.available ? 'cuda' : 'cpu',
    isa: info.isa,
    threads: info.threads,
    fp8Bf16Rows: info.fp8Bf16Rows,
    cpuFeatures: info.cpuFeatures,
    cuda,
    unavailable: cuda.available ? {} : { cuda: cuda.reason ?? 'unknown' },
  };
}
