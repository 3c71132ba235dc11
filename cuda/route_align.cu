// Few tokens: gating and align in one launch of one block, so routing a decode step costs one kernel. Each warp
// gates tokens warp, warp + warps, ...; after a barrier the block aligns the pairs it just wrote.
#include "align_block.cuh"
#include "common.cuh"
#include "gating_token.cuh"
#include "kernels.h"

#include <cstdlib>

namespace moe_cuda {

namespace {

constexpr int kFusedMaxTokens = 16;  // beyond, one block gating every token is slower than a grid (CUDA run 3)

// Threads of the block: 1024; experimental, MOE_CUDA_FUSED_THREADS=128|256|512 (fewer warps to synchronise, no
// 64-register cap; bench/gpu/check.sh MOE_CHECK_AB_ENV times it against the default).
int fusedThreads() {
  static const int threads = [] {
    const char* v = std::getenv("MOE_CUDA_FUSED_THREADS");
    const int n = v ? std::atoi(v) : 0;
    return n == 128 || n == 256 || n == 512 ? n : 1024;
  }();
  return threads;
}

// Per warp the gating scratch; then the choices (indices, weights, k) and align's scratch.
size_t fusedSharedBytes(const MoeCudaRouting& cfg, int64_t T) {
  return size_t(fusedThreads() / 32) * gatingWarpFloats(cfg) * sizeof(float) +
         (2 * size_t(T) * cfg.maxK + size_t(T)) * 4 + alignSmallSharedBytes(T * cfg.maxK, cfg.numExperts);
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads) routeAlignKernel(MoeCudaRouting cfg, const float* __restrict__ logits,
                                                             int T, const float* __restrict__ bias,
                                                             const float* __restrict__ complexity, GatingOut g,
                                                             int tileRows, AlignOut out, bool byRank) {
  extern __shared__ float shared[];
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int perWarp = gatingWarpFloats(cfg), pairs = T * cfg.maxK;
  // Align reads the choices from a copy in shared memory, not back from global memory.
  GatingCopy copy;
  copy.indices = reinterpret_cast<int32_t*>(shared + warps * perWarp);
  copy.weights = reinterpret_cast<float*>(copy.indices + pairs);
  copy.k = reinterpret_cast<int32_t*>(copy.weights + pairs);
  for (int t = warp; t < T; t += warps)
    gateToken(cfg, logits, t, bias, complexity, g, shared + warp * perWarp, copy, byRank);
  __syncthreads();  // the copy is complete
  alignSmall(T, cfg.maxK, cfg.numExperts, copy.indices, copy.weights, copy.k, tileRows, out, copy.k + T);
}

template <int kThreads>
void launchFused(const MoeCudaRouting& cfg, const float* logits, int64_t T, const float* bias,
                 const float* complexity, const GatingOut& g, int tileRows, const AlignOut& out, cudaStream_t s) {
  const size_t smem = fusedSharedBytes(cfg, T);
  static SharedAllowance allowance;
  allowance.ensure(reinterpret_cast<const void*>(routeAlignKernel<kThreads>), smem, "route+align shared memory");
  routeAlignKernel<kThreads><<<1, kThreads, smem, s>>>(cfg, logits, int(T), bias, complexity, g, tileRows, out,
                                                       rankTopK(cfg));
  checkLaunch("routeAlignKernel");
}

}  // namespace

bool routeAlignFused(const MoeCudaRouting& cfg, int64_t T, size_t sharedLimit) {
  return T <= kFusedMaxTokens && T * cfg.maxK <= kSmallPairs && fusedSharedBytes(cfg, T) <= sharedLimit;
}

void launchRouteAlign(const MoeCudaRouting& cfg, const float* logits, int64_t T, const float* bias,
                      const float* complexity, const GatingOut& g, int tileRows, const AlignOut& out, cudaStream_t s) {
  switch (fusedThreads()) {
    case 128: return launchFused<128>(cfg, logits, T, bias, complexity, g, tileRows, out, s);
    case 256: return launchFused<256>(cfg, logits, T, bias, complexity, g, tileRows, out, s);
    case 512: return launchFused<512>(cfg, logits, T, bias, complexity, g, tileRows, out, s);
    default: return launchFused<1024>(cfg, logits, T, bias, complexity, g, tileRows, out, s);
  }
}

}  // namespace moe_cuda
