// AVX2+FMA micro-kernels for the packed-panel GEMM (see moe/gemm.h), for CPUs without AVX-512. A 32-wide panel
// is four 256-bit vectors, so up to 3 activation rows fit in the 16 ymm registers. bf16 weights are widened to
// fp32 in registers (a shift for the even element, a mask for the odd one) and accumulated with FMA.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "gemm_isa.h"

namespace moe {
namespace avx2 {
namespace {

constexpr int kMaxRows = 3;

template <int MR>
void tileF32(int K, const float* A, size_t lda, const float* B, float* C, bool accumulate) {
  __m256 acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = accumulate ? _mm256_loadu_ps(C + m * 32 + 8 * j) : _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(B + 256), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(B + 256 + 16), _MM_HINT_T0);
    __m256 a[MR];
    for (int m = 0; m < MR; ++m) a[m] = _mm256_broadcast_ss(A + m * lda + k);
    for (int j = 0; j < 4; ++j) {
      const __m256 b = _mm256_loadu_ps(B + 8 * j);
      for (int m = 0; m < MR; ++m) acc[m][j] = _mm256_fmadd_ps(a[m], b, acc[m][j]);
    }
    B += 32;
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(C + m * 32 + 8 * j, acc[m][j]);
}

template <int MR>
void tileBF16(int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate) {
  const __m256i himask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  __m256 acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = accumulate ? _mm256_loadu_ps(C + m * 32 + 8 * j) : _mm256_setzero_ps();
  for (int kp = 0; kp < Kp; ++kp) {
    _mm_prefetch(reinterpret_cast<const char*>(B + 256), _MM_HINT_T0);
    __m256 aEven[MR], aOdd[MR];
    for (int m = 0; m < MR; ++m) {
      const __m256i pair = _mm256_set1_epi32(static_cast<int>(A[m * lda + kp]));
      aEven[m] = _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16));
      aOdd[m] = _mm256_castsi256_ps(_mm256_and_si256(pair, himask));
    }
    for (int j = 0; j < 4; ++j) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + 8 * j));
      const __m256 wEven = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
      const __m256 wOdd = _mm256_castsi256_ps(_mm256_and_si256(w, himask));
      for (int m = 0; m < MR; ++m) {
        acc[m][j] = _mm256_fmadd_ps(aEven[m], wEven, acc[m][j]);
        acc[m][j] = _mm256_fmadd_ps(aOdd[m], wOdd, acc[m][j]);
      }
    }
    B += 32;
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(C + m * 32 + 8 * j, acc[m][j]);
}

}  // namespace

int maxRows() { return kMaxRows; }

void kernelF32(int rows, int K, const float* A, size_t lda, const float* B, float* C, bool accumulate, L2Prefetch) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileF32<decltype(mr)::value>(K, A, lda, B, C, accumulate);
  });
}

void kernelBF16(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate,
                L2Prefetch) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileBF16<decltype(mr)::value>(Kp, A, lda, B, C, accumulate);
  });
}

}  // namespace avx2
}  // namespace moe
