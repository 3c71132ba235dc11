// Align and permute: a stable counting sort of the (token, slot) pairs into expert-contiguous rows, with the
// per-expert counts and offsets, the GEMM row-tile prefix, the list of experts that got rows, and the first token
// whose logits were not finite (gating gave it k = 0). Nothing is copied to the host: the GEMMs read the offsets
// on the device, so a whole forward can be captured in a CUDA graph. Row order inside an expert is (token, slot)
// order, so the result is the same run after run.
//
// Small batches (pairs <= kSmallPairs) take one block and one launch, with the expert indices in shared memory;
// larger ones take three launches: per-expert counts by warp slice, the offsets, then the scatter.
#include "align_block.cuh"
#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

namespace {

__global__ void alignSmallKernel(int T, int maxK, int E, const int32_t* __restrict__ indices,
                                 const float* __restrict__ weights, const int32_t* __restrict__ k, int tileRows,
                                 AlignOut out) {
  extern __shared__ int shared[];
  alignSmall(T, maxK, E, indices, weights, k, tileRows, out, shared);
}

// Large path 1: block e counts expert e's pairs per warp slice.
__global__ void countKernel(int pairs, int maxK, const int32_t* __restrict__ indices, AlignOut out) {
  const int e = blockIdx.x, warp = threadIdx.x / 32;
  const int slice = (pairs + kSliceWarps - 1) / kSliceWarps;
  const int begin = min(pairs, warp * slice), end = min(pairs, begin + slice);
  const int c = scatterExpert(e, begin, end, 0, maxK, indices, nullptr, out, false);
  if (threadIdx.x % 32 == 0) out.sliceCounts[e * kSliceWarps + warp] = c;
}

// Large path 2: totals, offsets and bad tokens in one block.
__global__ void offsetsKernel(int T, int E, const int32_t* __restrict__ k, int tileRows, AlignOut out) {
  __shared__ int bad, zeroK;
  if (threadIdx.x == 0) {
    bad = kNoBadToken;
    zeroK = 0;
  }
  __syncthreads();
  const int zero = findBadTokens(T, k, &bad);
  if (zero) atomicAdd(&zeroK, zero);
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int c = 0;
    for (int w = 0; w < kSliceWarps; ++w) c += out.sliceCounts[e * kSliceWarps + w];
    out.counts[e] = c;
  }
  __syncthreads();
  alignOffsets(T, E, out.counts, tileRows, zeroK, out, nullptr);
  if (threadIdx.x == 0) *out.badToken = bad;
}

// Large path 3: block e writes its rows, each warp from its slice's place in the expert's range.
__global__ void scatterKernel(int pairs, int maxK, const int32_t* __restrict__ indices,
                              const float* __restrict__ weights, AlignOut out) {
  const int e = blockIdx.x, warp = threadIdx.x / 32;
  if (out.counts[e] == 0) return;
  const int slice = (pairs + kSliceWarps - 1) / kSliceWarps;
  const int begin = min(pairs, warp * slice), end = min(pairs, begin + slice);
  int base = out.offsets[e];
  for (int w = 0; w < warp; ++w) base += out.sliceCounts[e * kSliceWarps + w];
  scatterExpert(e, begin, end, base, maxK, indices, weights, out, true);
}

}  // namespace

void launchAlign(int64_t T, int maxK, int E, const int32_t* indices, const float* weights, const int32_t* k,
                 int tileRows, const AlignOut& out, cudaStream_t s) {
  const int64_t pairs = T * maxK;
  if (pairs <= kSmallPairs) {
    const size_t smem = alignSmallSharedBytes(pairs, E);
    static SharedAllowance allowance;
    allowance.ensure(reinterpret_cast<const void*>(alignSmallKernel), smem, "align shared memory");
    alignSmallKernel<<<1, kAlignThreads, smem, s>>>(int(T), maxK, E, indices, weights, k, tileRows, out);
    checkLaunch("alignSmallKernel");
    return;
  }
  countKernel<<<unsigned(E), kSliceWarps * 32, 0, s>>>(int(pairs), maxK, indices, out);
  checkLaunch("countKernel");
  offsetsKernel<<<1, kAlignThreads, 0, s>>>(int(T), E, k, tileRows, out);
  checkLaunch("offsetsKernel");
  scatterKernel<<<unsigned(E), kSliceWarps * 32, 0, s>>>(int(pairs), maxK, indices, weights, out);
  checkLaunch("scatterKernel");
}

}  // namespace moe_cuda
