// Decode path: a forward of at most kGemvDefaultTokens tokens (MOE_CUDA_GEMV_MAX_TOKENS, up to kGemvMaxRows) gives
// every expert at most that many rows, and the expert stage is pure weight streaming. A warp reads one output row
// of the weight matrix at a time with 16-byte loads and dots it with each of the expert's (few) activation rows,
// which stay in L1. Blocks are laid out over (output rows, active expert slot) and loop over the rows (one wave, no
// tail of short blocks); slots past the number of experts that got tokens exit at once, so no host
// synchronisation is needed. The kernels are compiled per bound on the rows (1, 2, 4, 8), so T = 1 keeps few
// registers and full occupancy.
#include <algorithm>
#include <cstdlib>

#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ float dot8(const int4& w, const int4& x) {
  const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
  float acc = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = __bfloat1622float2(wp[i]), b = __bfloat1622float2(xp[i]);
    acc = fmaf(a.x, b.x, fmaf(a.y, b.y, acc));
  }
  return acc;
}

__device__ __forceinline__ int4 streamLoad(const bf16* p) {
  return __ldcs(reinterpret_cast<const int4*>(p));  // read once: do not keep in cache
}

struct Rows {
  int first, count;
};
// The expert of active slot `slot` and its rows (at most MAXR); false past the number of active experts.
template <int MAXR>
__device__ __forceinline__ bool expertRows(const GemvSchedule& s, int slot, Rows& rows, int& expert) {
  if (slot >= *s.numActive) return false;
  expert = s.active[slot];
  rows.first = s.offsets[expert];
  rows.count = min(s.offsets[expert + 1] - rows.first, MAXR);
  return true;
}
// The activation rows of an expert's rows (the last one repeated up to MAXR).
template <int MAXR>
__device__ __forceinline__ void activationRows(const bf16* xb, const int32_t* rowToken, int dPad, const Rows& rows,
                                               const bf16* (&x)[MAXR]) {
#pragma unroll
  for (int r = 0; r < MAXR; ++r) {
    const int row = rows.first + min(r, rows.count - 1);
    x[r] = xb + size_t(rowToken ? rowToken[row] : row) * dPad;
  }
}

// Hidden unit f of expert e for its rows, by one warp: the gate and up rows dotted with each activation row.
template <int MAXR>
__device__ __forceinline__ void gateUpRow(int f, int e, const Rows& rows, const bf16* const (&x)[MAXR], int dPad,
                                          const bf16* __restrict__ gateUp, int fPad, bf16* __restrict__ hidden) {
  const int lane = threadIdx.x % 32;
  const int packed = (f / 8) * 16 + f % 8;  // gate row; the up row is 8 further
  const bf16* wg = gateUp + size_t(e) * 2 * fPad * dPad + size_t(packed) * dPad;
  const bf16* wu = wg + size_t(8) * dPad;
  float g[MAXR] = {}, u[MAXR] = {};
#pragma unroll 4
  for (int c = lane * 8; c < dPad; c += 256) {
    const int4 wgv = streamLoad(wg + c), wuv = streamLoad(wu + c);
#pragma unroll
    for (int r = 0; r < MAXR; ++r) {
      if (r < rows.count) {
        const int4 xv = *reinterpret_cast<const int4*>(x[r] + c);
        g[r] += dot8(wgv, xv);
        u[r] += dot8(wuv, xv);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < MAXR; ++r) {
    if (r < rows.count) {
      const float gs = warpSum(g[r]), us = warpSum(u[r]);
      if (lane == 0) hidden[size_t(rows.first + r) * fPad + f] = __float2bfloat16_rn(gs / (1.0f + __expf(-gs)) * us);
    }
  }
}

// Output n of expert e for its rows, by one warp, scaled by each row's routing weight.
template <int MAXR>
__device__ __forceinline__ void downRow(int n, int e, const Rows& rows, const bf16* __restrict__ hidden, int fPad,
                                        const bf16* __restrict__ down, int dPad, const float* __restrict__ scale,
                                        float* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const bf16* w = down + size_t(e) * dPad * fPad + size_t(n) * fPad;
  float acc[MAXR] = {};
#pragma unroll 4
  for (int c = lane * 8; c < fPad; c += 256) {
    const int4 wv = streamLoad(w + c);
#pragma unroll
    for (int r = 0; r < MAXR; ++r)
      if (r < rows.count)
        acc[r] += dot8(wv, *reinterpret_cast<const int4*>(hidden + size_t(rows.first + r) * fPad + c));
  }
#pragma unroll
  for (int r = 0; r < MAXR; ++r) {
    if (r < rows.count) {
      const float v = warpSum(acc[r]);
      const int row = rows.first + r;
      if (lane == 0) out[size_t(row) * dPad + n] = v * (scale ? scale[row] : 1.0f);
    }
  }
}

// Grid (blocks per slot, slots): block (x, y) takes active slot y; its warps loop over the slot's outputs. MINB:
// blocks per multiprocessor the registers must allow (launchGemvs; 0: the compiler's choice).
template <int MAXR, int MINB>
__global__ void __launch_bounds__(kWarps * 32, MINB)
    gateUpGemvKernel(const bf16* __restrict__ xb, const int32_t* __restrict__ rowToken, int dPad,
                     const bf16* __restrict__ gateUp, int fPad, GemvSchedule s, bf16* __restrict__ hidden) {
  Rows rows;
  int e;
  if (!expertRows<MAXR>(s, blockIdx.y, rows, e)) return;
  const bf16* x[MAXR];
  activationRows<MAXR>(xb, rowToken, dPad, rows, x);
  for (int f = blockIdx.x * kWarps + threadIdx.x / 32; f < fPad; f += gridDim.x * kWarps)
    gateUpRow<MAXR>(f, e, rows, x, dPad, gateUp, fPad, hidden);
}

template <int MAXR, int MINB>
__global__ void __launch_bounds__(kWarps * 32, MINB)
    downGemvKernel(const bf16* __restrict__ hidden, int fPad, const bf16* __restrict__ down, int dPad, GemvSchedule s,
                   const float* __restrict__ scale, float* __restrict__ out) {
  Rows rows;
  int e;
  if (!expertRows<MAXR>(s, blockIdx.y, rows, e)) return;
  for (int n = blockIdx.x * kWarps + threadIdx.x / 32; n < dPad; n += gridDim.x * kWarps)
    downRow<MAXR>(n, e, rows, hidden, fPad, down, dPad, scale, out);
}

// Experimental, off by default (MOE_CUDA_GEMV_T1_BLOCKS=8; bench/gpu/check.sh MOE_CHECK_AB_ENV times it): the
// T = 1 kernels held to 32 registers, so 8 blocks fit a multiprocessor instead of 6 (37 registers) and the
// one-wave grid has a third more warps: OLMoE gate/up then gives every warp one row (now 232 of 792 take two).
// Sized for GPUs of 2048 threads per multiprocessor (sm_80, sm_90); on sm_86/89 (1536) it is 1.33 waves.
int gemvT1Blocks() {
  static const int blocks = [] {
    const char* v = std::getenv("MOE_CUDA_GEMV_T1_BLOCKS");
    return v && v[0] == '8' && v[1] == 0 ? 8 : 6;
  }();
  return blocks;
}

// Blocks per slot: one warp per output row, except for one token per expert (T = 1), where every slot is an
// active expert and about one resident wave over all of them, each warp looping over rows, avoids a tail of short
// blocks. With more tokens some slots may be empty, so a cap would idle part of the GPU (CUDA run 5).
unsigned gemvBlocks(int outputs, const GemvSchedule& s, int blocksPerMultiprocessor) {
  const int64_t needed = ceilDiv(outputs, kWarps);
  if (s.maxRows > 1) return unsigned(needed);
  const int64_t wave =
      std::max<int64_t>(1, int64_t(s.multiprocessors) * blocksPerMultiprocessor / std::max(1, s.slots));
  return unsigned(std::min(needed, wave));
}

template <int MAXR, int MINB = 0>
void launchGemvs(const bf16* xb, const int32_t* rowToken, int dPad, const bf16* gateUp, const bf16* down, int fPad,
                 const GemvSchedule& g, const float* scale, bf16* hidden, float* out, cudaStream_t s) {
  const int perMultiprocessor = MINB > 6 ? MINB : 6;
  gateUpGemvKernel<MAXR, MINB><<<dim3(gemvBlocks(fPad, g, perMultiprocessor), unsigned(g.slots)), kWarps * 32, 0, s>>>(
      xb, rowToken, dPad, gateUp, fPad, g, hidden);
  checkLaunch("gateUpGemvKernel");
  downGemvKernel<MAXR, MINB><<<dim3(gemvBlocks(dPad, g, perMultiprocessor), unsigned(g.slots)), kWarps * 32, 0, s>>>(
      hidden, fPad, down, dPad, g, scale, out);
  checkLaunch("downGemvKernel");
}

}  // namespace

void launchExpertGemvs(const bf16* xb, const int32_t* rowToken, int dPad, const bf16* gateUp, const bf16* down,
                       int fPad, const GemvSchedule& g, const float* scale, bf16* hidden, float* out, cudaStream_t s) {
  if (g.maxRows <= 1 && gemvT1Blocks() == 8)
    return launchGemvs<1, 8>(xb, rowToken, dPad, gateUp, down, fPad, g, scale, hidden, out, s);
  if (g.maxRows <= 1) return launchGemvs<1>(xb, rowToken, dPad, gateUp, down, fPad, g, scale, hidden, out, s);
  if (g.maxRows <= 2) return launchGemvs<2>(xb, rowToken, dPad, gateUp, down, fPad, g, scale, hidden, out, s);
  if (g.maxRows <= 4) return launchGemvs<4>(xb, rowToken, dPad, gateUp, down, fPad, g, scale, hidden, out, s);
  launchGemvs<kGemvMaxRows>(xb, rowToken, dPad, gateUp, down, fPad, g, scale, hidden, out, s);
}

}  // namespace moe_cuda
