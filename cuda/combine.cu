// Combine: each token's output is the sum of its expert rows (already scaled by the routing weights) in slot
// order, plus the shared expert's row. A fixed order, so the output is the same run after run.
#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

namespace {

__global__ void combineKernel(int d, int dPad, int maxK, const int32_t* __restrict__ k,
                              const int32_t* __restrict__ slotRow, const float* __restrict__ out,
                              const float* __restrict__ shared, float* __restrict__ y) {
  const int t = blockIdx.x;
  const int kt = k[t];
  const int32_t* rows = slotRow + size_t(t) * maxK;
  float* yt = y + size_t(t) * d;
  if ((d % 4) == 0 && (reinterpret_cast<uintptr_t>(y) % 16) == 0) {
    for (int i = threadIdx.x * 4; i < d; i += blockDim.x * 4) {
      float4 acc = kt == 0 ? make_float4(NAN, NAN, NAN, NAN) : make_float4(0, 0, 0, 0);
      for (int j = 0; j < kt; ++j) {
        const float4 v = *reinterpret_cast<const float4*>(out + size_t(rows[j]) * dPad + i);
        acc.x += v.x;
        acc.y += v.y;
        acc.z += v.z;
        acc.w += v.w;
      }
      if (shared) {
        const float4 v = *reinterpret_cast<const float4*>(shared + size_t(t) * dPad + i);
        acc.x += v.x;
        acc.y += v.y;
        acc.z += v.z;
        acc.w += v.w;
      }
      *reinterpret_cast<float4*>(yt + i) = acc;
    }
    return;
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float acc = kt == 0 ? NAN : 0.0f;
    for (int j = 0; j < kt; ++j) acc += out[size_t(rows[j]) * dPad + i];
    if (shared) acc += shared[size_t(t) * dPad + i];
    yt[i] = acc;
  }
}

// The schedule of a dense pass over all T tokens (the shared expert): one expert, rows 0..T-1.
__global__ void identityScheduleKernel(int T, int tileRows, int32_t* offsets, int32_t* tilesBefore,
                                       int32_t* active, int32_t* numActive) {
  offsets[0] = 0;
  offsets[1] = T;
  tilesBefore[0] = 0;
  tilesBefore[1] = (T + tileRows - 1) / tileRows;
  active[0] = 0;
  *numActive = 1;
}

}  // namespace

void launchCombine(int64_t T, int d, int dPad, int maxK, const int32_t* k, const int32_t* slotRow,
                   const float* out, const float* shared, float* y, cudaStream_t s) {
  const int threads = d >= 1024 ? 256 : 128;
  combineKernel<<<unsigned(T), threads, 0, s>>>(d, dPad, maxK, k, slotRow, out, shared, y);
  checkLaunch("combineKernel");
}

void launchIdentitySchedule(int64_t T, int tileRows, int32_t* offsets, int32_t* tilesBefore, int32_t* active,
                            int32_t* numActive, cudaStream_t s) {
  identityScheduleKernel<<<1, 1, 0, s>>>(int(T), tileRows, offsets, tilesBefore, active, numActive);
  checkLaunch("identityScheduleKernel");
}

}  // namespace moe_cuda
