// Shared by the kernels: error checks, bf16 helpers, warp reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <mutex>
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

// The most dynamic shared memory one block may opt in to on `device` (227 KB on sm_90, 163 KB on sm_80, 99 KB on
// sm_86 / sm_89), less what the kernels' static __shared__ variables may take beside it (a few words; 1 KB kept).
inline size_t sharedOptinBytes(int device) {
  int bytes = 0;
  check(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "shared memory opt-in");
  return bytes > 1024 ? size_t(bytes) - 1024 : 0;
}

// One kernel's dynamic shared-memory allowance (cudaFuncAttributeMaxDynamicSharedMemorySize, per device): raised
// when a launch needs more, never lowered — another thread may be launching the same kernel with more at that
// moment, and a lower setting would fail its launch. One per kernel (a function-local static at its launch site).
// Fast path: one atomic load.
class SharedAllowance {
 public:
  void ensure(const void* kernel, size_t bytes, const char* what) {
    if (bytes <= 48 * 1024) return;  // every kernel may use this much without opting in
    int device = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    if (device < 0 || device >= kDevices) throw CudaError(std::string(what) + ": device index out of range");
    std::atomic<size_t>& allowed = allowed_[device];
    if (bytes <= allowed.load(std::memory_order_acquire)) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (bytes <= allowed.load(std::memory_order_relaxed)) return;
    const cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    if (status != cudaSuccess) {
      (void)cudaGetLastError();  // not left for the next launch check (of this or another layer) to report
      check(status, what);
    }
    allowed.store(bytes, std::memory_order_release);
  }

 private:
  static constexpr int kDevices = 64;
  std::atomic<size_t> allowed_[kDevices] = {};
  std::mutex mutex_;
};

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
// An unsigned key in the order of the floats (finite or infinite, not NaN); -0 and +0 get the same key, as they
// compare equal. 0 is no float's key.
__device__ __forceinline__ unsigned orderedKey(float s) {
  const unsigned b = s == 0.0f ? 0u : __float_as_uint(s);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
// Index of the best (score, index) over the warp: higher score wins, ties go to the lower index; -1 when every
// lane's index is -1. Two warp reductions (redux.sync, sm_80+) instead of a five-step shuffle tree.
__device__ __forceinline__ int warpArgMax(float score, int index) {
  const unsigned key = index >= 0 ? orderedKey(score) : 0u;
  const unsigned top = __reduce_max_sync(kFullMask, key);
  if (top == 0) return -1;
  return int(__reduce_min_sync(kFullMask, key == top ? unsigned(index) : 0xffffffffu));
}

// *address += value on global memory without waiting for the old value (red: fire and forget, unlike +=, whose load
// the warp waits for).
__device__ __forceinline__ void redAdd(unsigned long long* address, unsigned long long value) {
  asm volatile("red.add.u64 [%0], %1;" ::"l"(address), "l"(value) : "memory");
}

__host__ __device__ inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t roundUp(int64_t a, int64_t b) { return ceilDiv(a, b) * b; }

}  // namespace moe_cuda
