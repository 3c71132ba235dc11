// Entry points of the ISA-specific micro-kernel translation units (gemm_avx512.cc, gemm_avx2.cc).
// Only gemm.cc calls these, after checking CPU support.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/gemm.h"

namespace moe {
#define MOE_DECLARE_GEMM_ISA(ns)                                                                        \
  namespace ns {                                                                                        \
  int maxRows();                                                                                        \
  void kernelF32(int rows, int K, const float* A, size_t lda, const float* B, float* C, bool accumulate,      \
                 L2Prefetch next);                                                                       \
  void kernelBF16(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C,          \
                  bool accumulate, L2Prefetch next);                                                      \
  void swigluRow(const float* tileRow, void* out, bool bf16);                                            \
  void toBf16(const float* src, int64_t n, uint32_t* dst);                                               \
  }
MOE_DECLARE_GEMM_ISA(avx512)
MOE_DECLARE_GEMM_ISA(avx2)
MOE_DECLARE_GEMM_ISA(scalar)
namespace avx512 {
uint64_t streamXor(const float* data, size_t n);
}
#undef MOE_DECLARE_GEMM_ISA
}  // namespace moe
