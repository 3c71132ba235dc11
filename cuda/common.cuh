// Shared by the kernels: error checks, bf16 helpers, warp reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace moe_cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw CudaError(std::string(what) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}
// After a launch: a bad configuration shows up here, a fault at the next synchronisation.
inline void checkLaunch(const char* kernel) { check(cudaGetLastError(), kernel); }

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ double warpSum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
// Best (score, index) over the warp: higher score wins, ties go to the lower index; -1 when all are empty.
__device__ __forceinline__ void warpArgMax(float& score, int& index) {
  for (int o = 16; o > 0; o >>= 1) {
    const float s = __shfl_xor_sync(kFullMask, score, o);
    const int i = __shfl_xor_sync(kFullMask, index, o);
    if (i >= 0 && (index < 0 || s > score || (s == score && i < index))) {
      score = s;
      index = i;
    }
  }
}

__host__ __device__ inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t roundUp(int64_t a, int64_t b) { return ceilDiv(a, b) * b; }

}  // namespace moe_cuda
