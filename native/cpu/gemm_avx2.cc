// AVX2+FMA micro-kernels for the packed-panel GEMM (see moe/gemm.h), for CPUs without AVX-512. A 32-wide panel
// is four 256-bit vectors, so up to 3 activation rows fit in the 16 ymm registers. bf16 weights are widened to
// fp32 in registers (a shift for the even element, a mask for the odd one) and accumulated with FMA; fp8 (E4M3)
// weights through fp16 (F16C).
#include <immintrin.h>

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <cstring>

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

// fp8 weights: 8 E4M3 bytes (8 columns of a k step) as 8 floats, 2^-8 of their values, through fp16 as in
// gemm_avx512.cc; each vector is scaled by its block's scales (which carry the 2^8) before the rows use it.
template <int MR>
void tileFP8(int K, const float* A, size_t lda, const uint8_t* B, float* C, bool accumulate) {
  const __m128i fields = _mm_set1_epi16(static_cast<int16_t>(0xbf80));
  __m256 acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = accumulate ? _mm256_loadu_ps(C + m * 32 + 8 * j) : _mm256_setzero_ps();
  const float* scale = nullptr;
  for (int k = 0; k < K; ++k, B += kPanelWidth) {
    if (k % kFp8Block == 0) {
      if (k > 0) B += kPanelWidth * 4;  // past the last block's scales
      scale = reinterpret_cast<const float*>(B + size_t(std::min(kFp8Block, K - k)) * kPanelWidth);
    }
    if (!(k & 1)) _mm_prefetch(reinterpret_cast<const char*>(B) + 2048, _MM_HINT_T0);
    __m256 a[MR];
    for (int m = 0; m < MR; ++m) a[m] = _mm256_broadcast_ss(A + m * lda + k);
    for (int j = 0; j < 4; ++j) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(B + 8 * j));
      const __m128i half = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(bytes), 7), fields);
      const __m256 w = _mm256_mul_ps(_mm256_cvtph_ps(half), _mm256_loadu_ps(scale + 8 * j));
      for (int m = 0; m < MR; ++m) acc[m][j] = _mm256_fmadd_ps(a[m], w, acc[m][j]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(C + m * 32 + 8 * j, acc[m][j]);
}

// e^x for x <= 0, as in gemm_avx512.cc: Cody–Waite reduction x = n ln2 + r, the same degree-6 polynomial for e^r
// (relative error ~2e-7), and 2^n built in the exponent field (n >= -126 after the clamp: a normal float).
inline __m256 expNonPositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
}

// sigmoid(z) for 8 lanes via e = exp(-|z|): z >= 0 -> 1/(1+e), z < 0 -> e/(1+e). No overflow.
inline __m256 sigmoid8(__m256 z) {
  const __m256 absZ = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
  const __m256 e = expNonPositive(_mm256_sub_ps(_mm256_setzero_ps(), absZ));
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  const __m256 negative = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ);
  return _mm256_blendv_ps(inv, _mm256_mul_ps(inv, e), negative);
}

// silu(g) * u for 8 lanes.
inline __m256 swiglu8(__m256 g, __m256 u) { return _mm256_mul_ps(_mm256_mul_ps(g, sigmoid8(g)), u); }

// A tile row's 16 outputs from h: 16 floats, or 16 bf16 rounded as the scalar path rounds them.
inline void storeGluRow(const float* h, void* out, bool bf16) {
  if (bf16) scalar::toBf16(h, 16, static_cast<uint32_t*>(out));
  else std::memcpy(out, h, 16 * sizeof(float));
}

}  // namespace

int maxRows() { return kMaxRows; }

// A panel row's 16 gate then 16 up values -> 16 outputs (bf16: rounded as the scalar path rounds them).
void swigluRow(const float* tileRow, void* out, bool bf16) {
  static_assert(kPanelWidth == 32, "a panel row is 16 gate and 16 up values");
  alignas(32) float h[16];
  _mm256_store_ps(h, swiglu8(_mm256_loadu_ps(tileRow), _mm256_loadu_ps(tileRow + 16)));
  _mm256_store_ps(h + 8, swiglu8(_mm256_loadu_ps(tileRow + 8), _mm256_loadu_ps(tileRow + 24)));
  storeGluRow(h, out, bf16);
}

// gpt-oss's clamped SwiGLU, 8 lanes at a time as swigluRow (NaN kept: min/max take the clamp first).
void clampedGluRow(const float* tileRow, const float* bias, float alpha, float limit, void* out, bool bf16) {
  alignas(32) float h[16];
  const __m256 hi = _mm256_set1_ps(limit), lo = _mm256_set1_ps(-limit), one = _mm256_set1_ps(1.0f);
  for (int i = 0; i < 16; i += 8) {
    __m256 g = _mm256_loadu_ps(tileRow + i);
    __m256 u = _mm256_loadu_ps(tileRow + 16 + i);
    if (bias) {
      g = _mm256_add_ps(g, _mm256_loadu_ps(bias + i));
      u = _mm256_add_ps(u, _mm256_loadu_ps(bias + 16 + i));
    }
    g = _mm256_min_ps(hi, g);
    u = _mm256_min_ps(hi, _mm256_max_ps(lo, u));
    const __m256 sigmoid = sigmoid8(_mm256_mul_ps(g, _mm256_set1_ps(alpha)));
    _mm256_store_ps(h + i, _mm256_mul_ps(_mm256_add_ps(u, one), _mm256_mul_ps(g, sigmoid)));
  }
  storeGluRow(h, out, bf16);
}

void toBf16(const float* src, int64_t n, uint32_t* dst) { scalar::toBf16(src, n, dst); }

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

void kernelFP8(int rows, int K, const float* A, size_t lda, const uint8_t* B, float* C, bool accumulate,
               L2Prefetch) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileFP8<decltype(mr)::value>(K, A, lda, B, C, accumulate);
  });
}

}  // namespace avx2
}  // namespace moe
