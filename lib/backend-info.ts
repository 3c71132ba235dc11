/** Which backend and CPU features the loaded addon uses, and why others were not chosen. */
import { native } from './native';

export interface BackendInfo {
  /** The backend `backend: 'auto'` picks. */
  backend: 'cpu';
  /** The SIMD level of the CPU kernels: avx512, avx2 or scalar (MOE_ISA can cap it). */
  isa: string;
  /** Threads of the shared compute pool (MOE_THREADS, default: all cores). */
  threads: number;
  cpuFeatures: Record<string, boolean>;
  /** Backends not in use, with the reason. */
  unavailable: Record<string, string>;
}

/** Reports the loaded backend. */
export function backendInfo(): BackendInfo {
  const info = native().backendInfo();
  return {
    backend: 'cpu',
    isa: info.isa,
    threads: info.threads,
    cpuFeatures: info.cpuFeatures,
    unavailable: { cuda: 'the CUDA backend is not built into this package version' },
  };
}
