// Entry points of the ISA-specific micro-kernel translation units (gemm_avx512.cc, gemm_amx.cc, gemm_avx2.cc),
// and the row-count dispatch they share.
// Only gemm.cc calls the entry points, after checking CPU support.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "moe/gemm.h"

namespace moe {

// Calls f(std::integral_constant<int, rows>) for rows in [First, Max), and with Max for anything else: the
// micro-kernels are compiled per row count, and this turns a run-time row count into that template argument.
template <int Max, int First = 1, typename F>
inline void withRows(int rows, F&& f) {
  if constexpr (First >= Max) {
    f(std::integral_constant<int, Max>{});
  } else {
    if (rows == First) return f(std::integral_constant<int, First>{});
    withRows<Max, First + 1>(rows, std::forward<F>(f));
  }
}

#define MOE_DECLARE_GEMM_ISA(ns)                                                                        \
  namespace ns {                                                                                        \
  int maxRows();                                                                                        \
  void kernelF32(int rows, int K, const float* A, size_t lda, const float* B, float* C, bool accumulate,      \
                 L2Prefetch next);                                                                       \
  void kernelBF16(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C,          \
                  bool accumulate, L2Prefetch next);                                                      \
  void kernelFP8(int rows, int K, const float* A, size_t lda, const uint8_t* B, float* C, bool accumulate, \
                 L2Prefetch next);                                                                       \
  void swigluRow(const float* tileRow, void* out, bool bf16);                                            \
  void clampedGluRow(const float* tileRow, const float* bias, float alpha, float limit, void* out, bool bf16); \
  void toBf16(const float* src, int64_t n, uint32_t* dst);                                               \
  }
MOE_DECLARE_GEMM_ISA(avx512)
MOE_DECLARE_GEMM_ISA(avx2)
MOE_DECLARE_GEMM_ISA(scalar)
namespace avx512 {
uint64_t streamXor(const float* data, size_t n);
// The same kernels with the weight-stream prefetch tuned on Intel (gemm_avx512.cc).
void kernelF32TwoLevel(int rows, int K, const float* A, size_t lda, const float* B, float* C, bool accumulate,
                       L2Prefetch next);
void kernelBF16TwoLevel(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C,
                        bool accumulate, L2Prefetch next);
void kernelFP8TwoLevel(int rows, int K, const float* A, size_t lda, const uint8_t* B, float* C, bool accumulate,
                       L2Prefetch next);
void fp8ToBf16(const uint8_t* panel, int K, uint32_t* pairs, float* scales);
// fp8 weights widened by fp8ToBf16, bf16 activations, vdpbf16ps (up to 32 rows; GemmKernels::fp8Tiles without AMX).
void kernelFP8Pairs(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* pairs, const float* scales,
                    float* C, bool accumulate);
}
// AMX tiles (gemm_amx.cc): a bf16 kernel of up to maxRows() rows; everything else is AVX-512's.
namespace amx {
bool built();  // whether the compiler could build the kernel (g++ 11+), else it forwards to AVX-512
int maxRows();
void kernelBF16(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate,
                L2Prefetch next);
void kernelFP8Tiles(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* pairs, const float* scales,
                    float* C, bool accumulate);
}
#undef MOE_DECLARE_GEMM_ISA
}  // namespace moe
