// Align and permute: a stable counting sort of the (token, slot) pairs into expert-contiguous rows, with the
// per-expert offsets, the GEMM row-tile prefix and the list of experts that got rows. Nothing is copied to the
// host: the GEMMs read the offsets on the device, so a whole forward can be captured in a CUDA graph.
// Row order inside an expert is (token, slot) order, so the result is the same run after run.
#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

namespace {

constexpr int kAlignThreads = 1024;
constexpr int kSmallPairs = 4096;  // up to this many pairs, one block does offsets and scatter in one launch
constexpr int kScatterWarps = 8;

// Offsets, tile prefix, active list and counters. Warp 0 scans in chunks of 32 experts.
__device__ void alignOffsets(int T, int E, const int32_t* __restrict__ k, const int32_t* __restrict__ counts,
                             int tileRows, const AlignOut& out) {
  __shared__ int zeroK;
  if (threadIdx.x == 0) zeroK = 0;
  __syncthreads();
  int mine = 0;
  for (int t = threadIdx.x; t < T; t += blockDim.x) mine += k[t] == 0;
  if (mine) atomicAdd(&zeroK, mine);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == 0) {
    int rowBase = 0, tileBase = 0, activeBase = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const int e = e0 + lane;
      const int c = e < E ? counts[e] : 0;
      const int tiles = (c + tileRows - 1) / tileRows;
      int rows = c, tl = tiles, act = c > 0;
      for (int o = 1; o < 32; o <<= 1) {  // inclusive scans
        const int r = __shfl_up_sync(kFullMask, rows, o), tt = __shfl_up_sync(kFullMask, tl, o),
                  a = __shfl_up_sync(kFullMask, act, o);
        if (lane >= o) {
          rows += r;
          tl += tt;
          act += a;
        }
      }
      if (e < E) {
        out.offsets[e] = rowBase + rows - c;
        out.tilesBefore[e] = tileBase + tl - tiles;
        if (c > 0) out.active[activeBase + act - 1] = e;
        if (out.counters) out.counters[4 + e] += c;
      }
      rowBase += __shfl_sync(kFullMask, rows, 31);
      tileBase += __shfl_sync(kFullMask, tl, 31);
      activeBase += __shfl_sync(kFullMask, act, 31);
    }
    if (lane == 0) {
      out.offsets[E] = rowBase;
      out.tilesBefore[E] = tileBase;
      *out.numActive = activeBase;
      if (out.counters) {
        out.counters[0] += 1;
        out.counters[1] += T;
        out.counters[2] += rowBase;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0 && out.counters) out.counters[3] += zeroK;
}

// One warp writes the rows of expert e from pairs [begin, end), starting at row `base`; returns the rows written.
__device__ int scatterExpert(int e, int begin, int end, int base, int maxK, const int32_t* __restrict__ indices,
                             const float* __restrict__ weights, const AlignOut& out, bool write) {
  const int lane = threadIdx.x % 32;
  int written = 0;
  for (int p0 = begin; p0 < end; p0 += 32) {
    const int p = p0 + lane;
    const bool hit = p < end && indices[p] == e;
    const unsigned mask = __ballot_sync(kFullMask, hit);
    if (hit && write) {
      const int row = base + written + __popc(mask & ((1u << lane) - 1));
      out.rowToken[row] = p / maxK;
      out.rowWeight[row] = weights[p];
      out.slotRow[p] = row;
    }
    written += __popc(mask);
  }
  return written;
}

__global__ void alignSmallKernel(int T, int maxK, int E, const int32_t* __restrict__ indices,
                                 const float* __restrict__ weights, const int32_t* __restrict__ k,
                                 const int32_t* __restrict__ counts, int tileRows, AlignOut out) {
  alignOffsets(T, E, k, counts, tileRows, out);
  __syncthreads();
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int e = warp; e < E; e += warps)
    if (counts[e] > 0) scatterExpert(e, 0, T * maxK, out.offsets[e], maxK, indices, weights, out, true);
}

__global__ void alignOffsetsKernel(int T, int E, const int32_t* __restrict__ k, const int32_t* __restrict__ counts,
                                   int tileRows, AlignOut out) {
  alignOffsets(T, E, k, counts, tileRows, out);
}

// One block per expert; its warps take contiguous slices of the pairs: count, prefix, then write.
__global__ void scatterKernel(int pairs, int maxK, const int32_t* __restrict__ indices,
                              const float* __restrict__ weights, const int32_t* __restrict__ counts, AlignOut out) {
  const int e = blockIdx.x;
  if (counts[e] == 0) return;
  __shared__ int before[kScatterWarps + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slice = (pairs + kScatterWarps - 1) / kScatterWarps;
  const int begin = min(pairs, warp * slice), end = min(pairs, begin + slice);
  const int mine = scatterExpert(e, begin, end, 0, maxK, indices, weights, out, false);
  if (lane == 0) before[warp + 1] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {
    before[0] = 0;
    for (int w = 1; w <= kScatterWarps; ++w) before[w] += before[w - 1];
  }
  __syncthreads();
  scatterExpert(e, begin, end, out.offsets[e] + before[warp], maxK, indices, weights, out, true);
}

}  // namespace

void launchAlign(int64_t T, int maxK, int E, const int32_t* indices, const float* weights, const int32_t* k,
                 const int32_t* counts, const int32_t* /*badToken*/, int tileRows, const AlignOut& out,
                 cudaStream_t s) {
  const int64_t pairs = T * maxK;
  if (pairs <= kSmallPairs) {
    alignSmallKernel<<<1, kAlignThreads, 0, s>>>(int(T), maxK, E, indices, weights, k, counts, tileRows, out);
    checkLaunch("alignSmallKernel");
    return;
  }
  alignOffsetsKernel<<<1, kAlignThreads, 0, s>>>(int(T), E, k, counts, tileRows, out);
  checkLaunch("alignOffsetsKernel");
  scatterKernel<<<unsigned(E), kScatterWarps * 32, 0, s>>>(int(pairs), maxK, indices, weights, counts, out);
  checkLaunch("scatterKernel");
}

}  // namespace moe_cuda
