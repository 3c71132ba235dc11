/**
 * Roofline anchors measured in the bench's own run: streaming-read bandwidth (GB/s) and the dense GEMM rate
 * (GFLOP/s, fp32 and bf16) of the package's own best kernel on a square problem. Layer timings are reported
 * against `max(bytes / bandwidth, flops / gemmRate)`.
 */
import { native } from '../native';

export interface Roofline {
  streamGBs: number;
  gemmGflops: { fp32: number; bf16: number };
  gemmSize: number;
  threads: number;
}

/** Best of `reps` streaming reads of `data` (after one untimed read), GB/s. */
function streamReadGBs(data: Float32Array, threads: number, reps: number): number {
  const rates: number[] = [];
  for (let i = 0; i < reps + 1; i++) {
    const start = process.hrtime.bigint();
    native().bench.streamRead(data, threads);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    if (i > 0) rates.push(data.byteLength / seconds / 1e9);
  }
  return Math.max(...rates); // the limit is what the machine reached at its best
}

export function measureStreamGBs(threads: number, bytes = 1 << 30, reps = 7): number {
  const data = new Float32Array(bytes / 4);
  native().bench.fillNormal(data, 7, 1);
  return streamReadGBs(data, threads, reps);
}

/** One round's anchors for one dtype. */
export interface AnchorSample {
  streamGBs: number;
  gemmGflops: number;
}

/**
 * Anchors measured again and again during a bench, between the bursts of the layer they are the floor of: the
 * stream buffer (1 GiB) is filled once and kept. Each sample is the best of 3 reads and the median of 3 dense
 * GEMMs (a single GEMM would count the page faults of its fresh buffers).
 */
export class AnchorSampler {
  private readonly data: Float32Array;
  constructor(
    readonly threads: number,
    readonly gemmSize = 4096,
    bytes = 1 << 30,
  ) {
    this.data = new Float32Array(bytes / 4);
    native().bench.fillNormal(this.data, 7, 1);
  }

  sample(dtype: 'fp32' | 'bf16'): AnchorSample {
    return {
      streamGBs: streamReadGBs(this.data, this.threads, 3),
      gemmGflops: measureGemmGflops(dtype, this.gemmSize, this.threads, 3),
    };
  }
}

export function measureGemmGflops(dtype: 'fp32' | 'bf16', n: number, threads: number, reps = 3): number {
  const seconds = native().bench.denseGemmSeconds(n, n, n, dtype === 'fp32' ? 0 : 1, reps, threads);
  return (2 * n ** 3) / seconds / 1e9;
}

export function measureRoofline(threads: number, gemmSize = 4096): Roofline {
  return {
    streamGBs: measureStreamGBs(threads),
    gemmGflops: {
      fp32: measureGemmGflops('fp32', gemmSize, threads),
      bf16: measureGemmGflops('bf16', gemmSize, threads),
    },
    gemmSize,
    threads,
  };
}
