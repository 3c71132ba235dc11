// AVX-512 micro-kernels for the packed-panel GEMM (see moe/gemm.h). Compiled with AVX-512 flags in its own
// translation unit and only called after CPUID says so. Each call computes a rows x 32 tile over the full K:
// two vectors of weights per k, one broadcast per activation row, 2*rows accumulators in registers.
// The bf16 kernel uses vdpbf16ps, which multiplies bf16 pairs and accumulates in fp32.
// Two builds of each kernel differ only in how they prefetch the weight stream (gemm.cc picks one per CPU vendor).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "gemm_isa.h"

namespace moe {
namespace avx512 {
namespace {

constexpr int kMaxRows = 12;  // 24 accumulators + 2 weight vectors + 1 broadcast of the 32 zmm registers

// The weight stream's software prefetch, per k step (128 bytes of panel):
//  - near: 8 KiB ahead into L1 (tuned on AMD EPYC, Zen 4/5);
//  - two-level: 16 KiB ahead into L2 and 2 KiB ahead into L1 (tuned on an Intel Xeon with AMX, where the near
//    prefetch left a one-row GEMV at 1.16x a streaming read's time and this one at 1.00x: bench/RESULTS.md, step 18).
template <bool TWO_LEVEL>
inline void prefetchWeights(const void* panel) {
  const char* p = static_cast<const char*>(panel);
  if (TWO_LEVEL) {
    _mm_prefetch(p + 16384, _MM_HINT_T1);
    _mm_prefetch(p + 16384 + 64, _MM_HINT_T1);
    _mm_prefetch(p + 2048, _MM_HINT_T0);
    _mm_prefetch(p + 2048 + 64, _MM_HINT_T0);
  } else {
    _mm_prefetch(p + 8192, _MM_HINT_T0);
    _mm_prefetch(p + 8192 + 64, _MM_HINT_T0);
  }
}

template <int MR>
inline void loadOrZero(const float* C, bool accumulate, __m512* acc0, __m512* acc1) {
#pragma GCC unroll 12
  for (int m = 0; m < MR; ++m) {
    acc0[m] = accumulate ? _mm512_loadu_ps(C + m * 32) : _mm512_setzero_ps();
    acc1[m] = accumulate ? _mm512_loadu_ps(C + m * 32 + 16) : _mm512_setzero_ps();
  }
}

template <int MR, bool TWO_LEVEL>
void tileF32(int K, const float* A, size_t lda, const float* B, float* C, bool accumulate, L2Prefetch next) {
  __m512 acc0[MR], acc1[MR];
  loadOrZero<MR>(C, accumulate, acc0, acc1);
  for (int k = 0; k < K; ++k) {
    if (k < next.lines) _mm_prefetch(next.data + size_t(k) * 64, _MM_HINT_T1);
    prefetchWeights<TWO_LEVEL>(B);
    const __m512 b0 = _mm512_loadu_ps(B);
    const __m512 b1 = _mm512_loadu_ps(B + 16);
#pragma GCC unroll 12
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(A[m * lda + k]);
      acc0[m] = _mm512_fmadd_ps(a, b0, acc0[m]);
      acc1[m] = _mm512_fmadd_ps(a, b1, acc1[m]);
    }
    B += 32;
  }
#pragma GCC unroll 12
  for (int m = 0; m < MR; ++m) {
    _mm512_storeu_ps(C + m * 32, acc0[m]);
    _mm512_storeu_ps(C + m * 32 + 16, acc1[m]);
  }
}

template <int MR, bool TWO_LEVEL>
void tileBF16(int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate, L2Prefetch next) {
  __m512 acc0[MR], acc1[MR];
  loadOrZero<MR>(C, accumulate, acc0, acc1);
  for (int kp = 0; kp < Kp; ++kp) {
    if (kp < next.lines) _mm_prefetch(next.data + size_t(kp) * 64, _MM_HINT_T1);
    prefetchWeights<TWO_LEVEL>(B);
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(B);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(B + 16);
#pragma GCC unroll 12
    for (int m = 0; m < MR; ++m) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[m * lda + kp]));
      acc0[m] = _mm512_dpbf16_ps(acc0[m], a, b0);
      acc1[m] = _mm512_dpbf16_ps(acc1[m], a, b1);
    }
    B += 32;
  }
#pragma GCC unroll 12
  for (int m = 0; m < MR; ++m) {
    _mm512_storeu_ps(C + m * 32, acc0[m]);
    _mm512_storeu_ps(C + m * 32 + 16, acc1[m]);
  }
}

// e^x for x <= 0 (silu only needs exp(-|g|) style arguments after clamping): Cody–Waite range reduction
// x = n ln2 + r, a degree-6 polynomial for e^r on [-ln2/2, ln2/2] (relative error ~2e-7), then scalef by 2^n.
inline __m512 expNonPositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace

int maxRows() { return kMaxRows; }

// silu(g) = g * sigmoid(g); sigmoid via e = exp(-|g|): g >= 0 -> 1/(1+e), g < 0 -> e/(1+e). No overflow.
void swigluRow(const float* tileRow, void* out, bool bf16) {
  const __m512 g = _mm512_loadu_ps(tileRow);
  const __m512 u = _mm512_loadu_ps(tileRow + 16);
  const __m512 absG = _mm512_abs_ps(g);
  const __m512 e = expNonPositive(_mm512_sub_ps(_mm512_setzero_ps(), absG));
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 sigmoid = _mm512_mask_mul_ps(inv, negative, inv, e);
  const __m512 h = _mm512_mul_ps(_mm512_mul_ps(g, sigmoid), u);
  if (bf16) {
    _mm256_storeu_si256(static_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh(h));
  } else {
    _mm512_storeu_ps(static_cast<float*>(out), h);
  }
}

// XOR of n floats' bits, read with the same 8 KiB software prefetch as the GEMM panels: the stream-bandwidth
// anchor of the roofline should be the best streaming read this code can do.
uint64_t streamXor(const float* data, size_t n) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(data + i + 2048), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(data + i + 2048 + 16), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(data + i + 2048 + 32), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(data + i + 2048 + 48), _MM_HINT_T0);
    acc0 = _mm512_xor_si512(acc0, _mm512_loadu_si512(data + i));
    acc1 = _mm512_xor_si512(acc1, _mm512_loadu_si512(data + i + 16));
    acc2 = _mm512_xor_si512(acc2, _mm512_loadu_si512(data + i + 32));
    acc3 = _mm512_xor_si512(acc3, _mm512_loadu_si512(data + i + 48));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(acc0, acc1), _mm512_xor_si512(acc2, acc3)));
  uint64_t sum = 0;
  for (uint64_t v : lanes) sum ^= v;
  for (; i < n; ++i) {
    uint32_t bits;
    __builtin_memcpy(&bits, data + i, 4);
    sum ^= bits;
  }
  return sum;
}

void toBf16(const float* src, int64_t n, uint32_t* dst) {
  int64_t i = 0;
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    const __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
    alignas(32) uint16_t tail[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tail), v);
    for (int64_t j = i; j < n; ++j) out[j] = tail[j - i];
  }
  if (n & 1) out[n] = 0;
}

void kernelF32(int rows, int K, const float* A, size_t lda, const float* B, float* C, bool accumulate,
               L2Prefetch next) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileF32<decltype(mr)::value, false>(K, A, lda, B, C, accumulate, next);
  });
}

void kernelBF16(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate,
                L2Prefetch next) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileBF16<decltype(mr)::value, false>(Kp, A, lda, B, C, accumulate, next);
  });
}

void kernelF32TwoLevel(int rows, int K, const float* A, size_t lda, const float* B, float* C, bool accumulate,
                       L2Prefetch next) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileF32<decltype(mr)::value, true>(K, A, lda, B, C, accumulate, next);
  });
}

void kernelBF16TwoLevel(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C,
                        bool accumulate, L2Prefetch next) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileBF16<decltype(mr)::value, true>(Kp, A, lda, B, C, accumulate, next);
  });
}

}  // namespace avx512
}  // namespace moe
