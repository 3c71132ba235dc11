// Device functions of align and permute, shared by align.cu and the fused small-batch route + align kernel
// (route_align.cu). See align.cu for the algorithm.
#pragma once
#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

constexpr int kAlignThreads = 1024;
constexpr int kSliceWarps = 8;  // large path: warps (slices of the pairs) per expert
constexpr int kNoBadToken = 0x7f7f7f7f;

// Lowest token with k = 0 into *bad (a shared or global int holding kNoBadToken), and the count of such tokens.
__device__ __forceinline__ int findBadTokens(int T, const int32_t* __restrict__ k, int* bad) {
  int zero = 0;
  for (int t = threadIdx.x; t < T; t += blockDim.x)
    if (k[t] == 0) {
      ++zero;
      atomicMin(bad, t);
    }
  return zero;
}

// Offsets, tile prefix, active list and counters from counts[e] (shared or global). Warp 0 scans 32 at a time.
__device__ __forceinline__ void alignOffsets(int T, int E, const int* counts, int tileRows, int zeroK,
                                             const AlignOut& out, int* offsetsCopy) {
  const int lane = threadIdx.x % 32;
  if (threadIdx.x >= 32) return;
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
      out.counts[e] = c;
      out.offsets[e] = rowBase + rows - c;
      if (offsetsCopy) offsetsCopy[e] = rowBase + rows - c;
      out.tilesBefore[e] = tileBase + tl - tiles;
      if (c > 0) out.active[activeBase + act - 1] = e;
      if (out.counters && c > 0) redAdd(out.counters + 4 + e, static_cast<unsigned long long>(c));
    }
    rowBase += __shfl_sync(kFullMask, rows, 31);
    tileBase += __shfl_sync(kFullMask, tl, 31);
    activeBase += __shfl_sync(kFullMask, act, 31);
  }
  if (lane == 0) {
    out.offsets[E] = rowBase;
    out.tilesBefore[E] = tileBase;
    *out.numActive = activeBase;
    if (out.counters) {  // (red: no load to wait for, unlike +=)
      redAdd(out.counters + 0, 1ull);
      redAdd(out.counters + 1, static_cast<unsigned long long>(T));
      redAdd(out.counters + 2, static_cast<unsigned long long>(rowBase));
      if (zeroK > 0) redAdd(out.counters + 3, static_cast<unsigned long long>(zeroK));
    }
  }
}

// Pairs of expert e within [begin, end) of `indices`: counted (write = false) or written from row `base` on.
__device__ __forceinline__ int scatterExpert(int e, int begin, int end, int base, int maxK, const int32_t* indices,
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

// The one-block align ranks pairs by chunks of 32 when a [chunks, E] table of counts fits this many ints; beyond,
// each warp scans every pair for each of its experts.
constexpr int kChunkTableInts = 16384;
__host__ __device__ inline bool alignByChunks(int64_t pairs, int E) {
  return ceilDiv(pairs, 32) * E <= kChunkTableInts;
}
// Shared memory of alignSmall: indices, counts, offsets, and for the chunked path the table and the ranks.
__host__ __device__ inline size_t alignSmallSharedBytes(int64_t pairs, int E) {
  const int64_t table = alignByChunks(pairs, E) ? ceilDiv(pairs, 32) * E + pairs : 0;
  return size_t(pairs + 2 * int64_t(E) + table) * sizeof(int);
}

// The whole align in one block; `shared` holds alignSmallSharedBytes. Callers have made indices, weights and k
// visible to the block (a kernel boundary, or __syncthreads after writing them).
__device__ __forceinline__ void alignSmall(int T, int maxK, int E, const int32_t* indices, const float* weights,
                                           const int32_t* k, int tileRows, const AlignOut& out, int* shared) {
  const int pairs = T * maxK;
  int* sIndices = shared;
  int* sCounts = shared + pairs;
  int* sOffsets = sCounts + E;
  __shared__ int bad, zeroK;
  if (threadIdx.x == 0) {
    bad = kNoBadToken;
    zeroK = 0;
  }
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32, lane = threadIdx.x % 32;
  if (alignByChunks(pairs, E)) {
    // Pair p = 32 c + lane: its rank among the pairs of its chunk with the same expert (match_any), and per chunk
    // and expert the count, turned into the expert's rows before the chunk. Row = offset + before + rank: (token,
    // slot) order within each expert, as the scan below gives. O(pairs) work instead of O(E pairs / 32).
    const int chunks = (pairs + 31) / 32;
    int* table = sOffsets + E;
    int* rank = table + chunks * E;
    for (int i = threadIdx.x; i < chunks * E; i += blockDim.x) table[i] = 0;
    __syncthreads();
    const int zero = findBadTokens(T, k, &bad);
    if (zero) atomicAdd(&zeroK, zero);
    for (int c = warp; c < chunks; c += warps) {
      const int p = c * 32 + lane;
      int e = p < pairs ? indices[p] : -1;
      if (e >= E) e = -1;
      const unsigned peers = __match_any_sync(kFullMask, e);
      const int r = __popc(peers & ((1u << lane) - 1));
      if (p < pairs) {
        sIndices[p] = e;
        rank[p] = r;
      }
      if (e >= 0 && r == 0) table[c * E + e] = __popc(peers);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      int before = 0;
      for (int c = 0; c < chunks; ++c) {
        const int n = table[c * E + e];
        table[c * E + e] = before;
        before += n;
      }
      sCounts[e] = before;
    }
    __syncthreads();
    alignOffsets(T, E, sCounts, tileRows, zeroK, out, sOffsets);
    if (threadIdx.x == 0) *out.badToken = bad;
    __syncthreads();
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
      const int e = sIndices[p];
      if (e < 0) continue;
      const int row = sOffsets[e] + table[(p / 32) * E + e] + rank[p];
      out.rowToken[row] = p / maxK;
      out.rowWeight[row] = weights[p];
      out.slotRow[p] = row;
    }
    return;
  }
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) sIndices[p] = indices[p];
  __syncthreads();
  const int zero = findBadTokens(T, k, &bad);
  if (zero) atomicAdd(&zeroK, zero);
  for (int e = warp; e < E; e += warps) {
    const int c = scatterExpert(e, 0, pairs, 0, maxK, sIndices, weights, out, false);
    if (threadIdx.x % 32 == 0) sCounts[e] = c;
  }
  __syncthreads();
  alignOffsets(T, E, sCounts, tileRows, zeroK, out, sOffsets);
  if (threadIdx.x == 0) *out.badToken = bad;
  __syncthreads();
  for (int e = warp; e < E; e += warps)
    if (sCounts[e] > 0) scatterExpert(e, 0, pairs, sOffsets[e], maxK, sIndices, weights, out, true);
}

}  // namespace moe_cuda
