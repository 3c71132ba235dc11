// Decode path: when every expert has at most kGemvMaxRows rows, the expert stage is pure weight streaming. One
// warp per output row of the weight matrix reads it once with 16-byte loads and dots it with each of the
// expert's (few) activation rows, which stay in L1. Blocks are laid out over (output rows, active expert slot);
// slots past the number of experts that got tokens exit at once, so no host synchronisation is needed.
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
__device__ __forceinline__ bool expertRows(const GemvSchedule& s, Rows& rows, int& expert) {
  if (int(blockIdx.y) >= *s.numActive) return false;
  expert = s.active[blockIdx.y];
  rows.first = s.offsets[expert];
  rows.count = min(s.offsets[expert + 1] - rows.first, kGemvMaxRows);
  return true;
}

__global__ void __launch_bounds__(kWarps * 32) gateUpGemvKernel(const bf16* __restrict__ xb,
                                                                const int32_t* __restrict__ rowToken, int dPad,
                                                                const bf16* __restrict__ gateUp, int fPad,
                                                                GemvSchedule s, bf16* __restrict__ hidden) {
  Rows rows;
  int e;
  if (!expertRows(s, rows, e)) return;
  const int f = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (f >= fPad) return;
  const int packed = (f / 8) * 16 + f % 8;  // gate row; the up row is 8 further
  const bf16* wg = gateUp + size_t(e) * 2 * fPad * dPad + size_t(packed) * dPad;
  const bf16* wu = wg + size_t(8) * dPad;
  const bf16* x[kGemvMaxRows];
#pragma unroll
  for (int r = 0; r < kGemvMaxRows; ++r)
    x[r] = xb + size_t(rowToken ? rowToken[rows.first + min(r, rows.count - 1)] : rows.first + min(r, rows.count - 1)) * dPad;
  float g[kGemvMaxRows] = {}, u[kGemvMaxRows] = {};
#pragma unroll 4
  for (int c = lane * 8; c < dPad; c += 256) {
    const int4 wgv = streamLoad(wg + c), wuv = streamLoad(wu + c);
#pragma unroll
    for (int r = 0; r < kGemvMaxRows; ++r) {
      if (r < rows.count) {
        const int4 xv = *reinterpret_cast<const int4*>(x[r] + c);
        g[r] += dot8(wgv, xv);
        u[r] += dot8(wuv, xv);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kGemvMaxRows; ++r) {
    if (r < rows.count) {
      const float gs = warpSum(g[r]), us = warpSum(u[r]);
      if (lane == 0) hidden[size_t(rows.first + r) * fPad + f] = __float2bfloat16_rn(gs / (1.0f + __expf(-gs)) * us);
    }
  }
}

__global__ void __launch_bounds__(kWarps * 32) downGemvKernel(const bf16* __restrict__ hidden, int fPad,
                                                              const bf16* __restrict__ down, int dPad,
                                                              GemvSchedule s, const float* __restrict__ scale,
                                                              float* __restrict__ out) {
  Rows rows;
  int e;
  if (!expertRows(s, rows, e)) return;
  const int n = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n >= dPad) return;
  const bf16* w = down + size_t(e) * dPad * fPad + size_t(n) * fPad;
  float acc[kGemvMaxRows] = {};
#pragma unroll 4
  for (int c = lane * 8; c < fPad; c += 256) {
    const int4 wv = streamLoad(w + c);
#pragma unroll
    for (int r = 0; r < kGemvMaxRows; ++r)
      if (r < rows.count)
        acc[r] += dot8(wv, *reinterpret_cast<const int4*>(hidden + size_t(rows.first + r) * fPad + c));
  }
#pragma unroll
  for (int r = 0; r < kGemvMaxRows; ++r) {
    if (r < rows.count) {
      const float v = warpSum(acc[r]);
      const int row = rows.first + r;
      if (lane == 0) out[size_t(row) * dPad + n] = v * (scale ? scale[row] : 1.0f);
    }
  }
}

}  // namespace

void launchGateUpGemv(const bf16* xb, const int32_t* rowToken, int dPad, const bf16* gateUp, int fPad,
                      const GemvSchedule& sched, bf16* hidden, cudaStream_t s) {
  const dim3 grid(unsigned(ceilDiv(fPad, kWarps)), unsigned(sched.slots));
  gateUpGemvKernel<<<grid, kWarps * 32, 0, s>>>(xb, rowToken, dPad, gateUp, fPad, sched, hidden);
  checkLaunch("gateUpGemvKernel");
}

void launchDownGemv(const bf16* hidden, int fPad, const bf16* down, int dPad, const GemvSchedule& sched,
                    const float* scale, float* out, cudaStream_t s) {
  const dim3 grid(unsigned(ceilDiv(dPad, kWarps)), unsigned(sched.slots));
  downGemvKernel<<<grid, kWarps * 32, 0, s>>>(hidden, fPad, down, dPad, sched, scale, out);
  checkLaunch("downGemvKernel");
}

}  // namespace moe_cuda
