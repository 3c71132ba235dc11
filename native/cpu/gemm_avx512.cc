// AVX-512 micro-kernels for the packed-panel GEMM (see moe/gemm.h). Compiled with AVX-512 flags in its own
// translation unit and only called after CPUID says so. Each call computes a rows x 32 tile over the full K:
// two vectors of weights per k, one broadcast per activation row, 2*rows accumulators in registers.
// The bf16 kernel uses vdpbf16ps, which multiplies bf16 pairs and accumulates in fp32; the fp8 kernel widens E4M3
// weights to fp32 in registers (through fp16) and scales them per 128-element block of K.
// Two builds of each kernel differ only in how they prefetch the weight stream (gemm.cc picks one per CPU vendor).
// GCC 12 warns that the undefined pass-through operand inside _mm512_cvtph_ps and _mm512_extracti64x4_epi64 may be
// uninitialized (it is unused: the operations take no mask); the warning points into the header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <algorithm>

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

// The E4M3 bytes of one k step (32 columns) as two vectors of floats, each 2^-8 of its value: a byte's sign,
// exponent and mantissa moved into an fp16's fields (bias 15 where E4M3's is 7; subnormals map to subnormals), then
// widened. The kernels' scales carry the 2^8.
inline void decodeFp8(const uint8_t* B, __m512& w0, __m512& w1) {
  const __m512i wide = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(B)));
  const __m512i half = _mm512_and_si512(_mm512_slli_epi16(wide, 7), _mm512_set1_epi16(static_cast<int16_t>(0xbf80)));
  w0 = _mm512_cvtph_ps(_mm512_castsi512_si256(half));
  w1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(half, 1));
}

// fp8 weights: a k step is 32 bytes, so the weight stream's prefetch (the same distances in bytes as
// prefetchWeights) runs on every other step.
template <bool TWO_LEVEL>
inline void prefetchFp8(const uint8_t* panel) {
  const char* p = reinterpret_cast<const char*>(panel);
  if (TWO_LEVEL) {
    _mm_prefetch(p + 16384, _MM_HINT_T1);
    _mm_prefetch(p + 2048, _MM_HINT_T0);
  } else {
    _mm_prefetch(p + 8192, _MM_HINT_T0);
  }
}

// A block's sums stay in registers of their own and are scaled once per block, so a step only decodes and
// multiplies (20% faster than scaling each decoded vector, even at 12 rows where the sums spill). Every row count
// runs the same arithmetic, so a row's result does not depend on the rows beside it (where the kernels have fp8
// pairs, a layer's experts of 8 or more rows take kernelFP8Pairs or the AMX tiles instead: layer.cc).
template <int MR, bool TWO_LEVEL>
void tileFP8(int K, const float* A, size_t lda, const uint8_t* B, float* C, bool accumulate, L2Prefetch next) {
  __m512 acc0[MR], acc1[MR];
  loadOrZero<MR>(C, accumulate, acc0, acc1);
  for (int k0 = 0; k0 < K; k0 += kFp8Block, B += kPanelWidth * 4) {  // (past the block's scales)
    const int k1 = k0 + kFp8Block < K ? k0 + kFp8Block : K;
    const float* S = reinterpret_cast<const float*>(B + size_t(k1 - k0) * kPanelWidth);
    const __m512 s0 = _mm512_loadu_ps(S);
    const __m512 s1 = _mm512_loadu_ps(S + 16);
    __m512 sum0[MR], sum1[MR];
#pragma GCC unroll 12
    for (int m = 0; m < MR; ++m) sum0[m] = sum1[m] = _mm512_setzero_ps();
    for (int k = k0; k < k1; ++k, B += kPanelWidth) {
      if (k < next.lines) _mm_prefetch(next.data + size_t(k) * 64, _MM_HINT_T1);
      if (!(k & 1)) prefetchFp8<TWO_LEVEL>(B);
      __m512 w0, w1;
      decodeFp8(B, w0, w1);
#pragma GCC unroll 12
      for (int m = 0; m < MR; ++m) {
        const __m512 a = _mm512_set1_ps(A[m * lda + k]);
        sum0[m] = _mm512_fmadd_ps(a, w0, sum0[m]);
        sum1[m] = _mm512_fmadd_ps(a, w1, sum1[m]);
      }
    }
#pragma GCC unroll 12
    for (int m = 0; m < MR; ++m) {
      acc0[m] = _mm512_fmadd_ps(sum0[m], s0, acc0[m]);
      acc1[m] = _mm512_fmadd_ps(sum1[m], s1, acc1[m]);
    }
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

// fp8 weights widened to bf16 pairs (fp8ToBf16) times bf16 activations, for AVX-512 CPUs without AMX (Zen 4):
// per block of 64 pairs each row's sums start at zero in registers, then go into C times the block's scales, as
// on the AMX tiles (gemm_amx.cc). Two vdpbf16ps per row and pair, where the fp32 kernel above needs four FMAs.
template <int MR>
void tileFP8Pairs(int Kp, const uint32_t* A, size_t lda, const uint32_t* B, const float* scales, float* C) {
  constexpr int kBlockPairs = kFp8Block / 2;
  for (int kb = 0; kb < Kp; kb += kBlockPairs, scales += kPanelWidth) {
    __m512 acc0[MR], acc1[MR];
    loadOrZero<MR>(C, false, acc0, acc1);
    const int end = std::min(Kp, kb + kBlockPairs);
    const uint32_t* b = B + size_t(kb) * kPanelWidth;
    for (int kp = kb; kp < end; ++kp, b += kPanelWidth) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 12
      for (int m = 0; m < MR; ++m) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[m * lda + kp]));
        acc0[m] = _mm512_dpbf16_ps(acc0[m], a, b0);
        acc1[m] = _mm512_dpbf16_ps(acc1[m], a, b1);
      }
    }
    const __m512 s0 = _mm512_loadu_ps(scales), s1 = _mm512_loadu_ps(scales + 16);
#pragma GCC unroll 12
    for (int m = 0; m < MR; ++m) {
      float* c = C + m * kPanelWidth;
      _mm512_storeu_ps(c, _mm512_fmadd_ps(acc0[m], s0, _mm512_loadu_ps(c)));
      _mm512_storeu_ps(c + 16, _mm512_fmadd_ps(acc1[m], s1, _mm512_loadu_ps(c + 16)));
    }
  }
}

// sigmoid(z) via e = exp(-|z|): z >= 0 -> 1/(1+e), z < 0 -> e/(1+e). No overflow.
inline __m512 sigmoid16(__m512 z) {
  const __m512 e = expNonPositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(z)));
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  const __mmask16 negative = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mul_ps(inv, negative, inv, e);
}

// A tile row's 16 outputs: 16 floats, or 16 bf16 (8 pairs).
inline void storeGluRow(__m512 h, void* out, bool bf16) {
  if (bf16) {
    _mm256_storeu_si256(static_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh(h));
  } else {
    _mm512_storeu_ps(static_cast<float*>(out), h);
  }
}

}  // namespace

int maxRows() { return kMaxRows; }

// silu(g) * u = g * sigmoid(g) * u.
void swigluRow(const float* tileRow, void* out, bool bf16) {
  const __m512 g = _mm512_loadu_ps(tileRow);
  const __m512 u = _mm512_loadu_ps(tileRow + 16);
  storeGluRow(_mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(g)), u), out, bf16);
}

// gpt-oss's clamped SwiGLU: the sigmoid of z = alpha * g as in swigluRow. min/max take the clamp first, so that a
// NaN accumulator stays NaN (they return their second operand when either is NaN).
void clampedGluRow(const float* tileRow, const float* bias, float alpha, float limit, void* out, bool bf16) {
  __m512 g = _mm512_loadu_ps(tileRow);
  __m512 u = _mm512_loadu_ps(tileRow + 16);
  if (bias) {
    g = _mm512_add_ps(g, _mm512_loadu_ps(bias));
    u = _mm512_add_ps(u, _mm512_loadu_ps(bias + 16));
  }
  const __m512 hi = _mm512_set1_ps(limit), lo = _mm512_set1_ps(-limit);
  g = _mm512_min_ps(hi, g);
  u = _mm512_min_ps(hi, _mm512_max_ps(lo, u));
  const __m512 sigmoid = sigmoid16(_mm512_mul_ps(g, _mm512_set1_ps(alpha)));
  storeGluRow(_mm512_mul_ps(_mm512_add_ps(u, _mm512_set1_ps(1.0f)), _mm512_mul_ps(g, sigmoid)), out, bf16);
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

void kernelFP8(int rows, int K, const float* A, size_t lda, const uint8_t* B, float* C, bool accumulate,
               L2Prefetch next) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileFP8<decltype(mr)::value, false>(K, A, lda, B, C, accumulate, next);
  });
}

void kernelFP8TwoLevel(int rows, int K, const float* A, size_t lda, const uint8_t* B, float* C, bool accumulate,
                       L2Prefetch next) {
  withRows<kMaxRows>(rows, [&](auto mr) {
    tileFP8<decltype(mr)::value, true>(K, A, lda, B, C, accumulate, next);
  });
}

void kernelFP8Pairs(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* pairs, const float* scales,
                    float* C, bool accumulate) {
  if (rows <= 0) return;
  if (!accumulate) std::fill(C, C + size_t(rows) * kPanelWidth, 0.0f);
  // Up to 32 rows in equal groups of at most kMaxRows (32 -> 11 + 11 + 10); a row's arithmetic is the same in any.
  const int groups = (rows + kMaxRows - 1) / kMaxRows;
  const int per = (rows + groups - 1) / groups;
  for (int r0 = 0; r0 < rows; r0 += per) {
    withRows<kMaxRows>(std::min(per, rows - r0), [&](auto mr) {
      tileFP8Pairs<decltype(mr)::value>(Kp, A + size_t(r0) * lda, lda, pairs, scales, C + size_t(r0) * kPanelWidth);
    });
  }
}

void fp8ToBf16(const uint8_t* panel, int K, uint32_t* pairs, float* scales) {
  // (word 2n of a pair row takes column n of the even step, word 2n + 1 column n of the odd one)
  alignas(64) static const uint16_t kInterleave[2][32] = {
      {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39, 8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47},
      {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
       24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63}};
  const __m512i low = _mm512_load_si512(kInterleave[0]), high = _mm512_load_si512(kInterleave[1]);
  const uint8_t* B = panel;
  uint32_t* out = pairs;
  for (int k0 = 0; k0 < K; k0 += kFp8Block, B += kPanelWidth * 4) {
    const int steps = std::min(kFp8Block, K - k0);
    std::memcpy(scales + size_t(k0 / kFp8Block) * kPanelWidth, B + size_t(steps) * kPanelWidth, kPanelWidth * 4);
    for (int k = 0; k < steps; k += 2, out += kPanelWidth) {
      prefetchFp8<true>(B);
      __m512 e0, e1, o0 = _mm512_setzero_ps(), o1 = _mm512_setzero_ps();
      decodeFp8(B, e0, e1);
      B += kPanelWidth;
      if (k + 1 < steps) {
        decodeFp8(B, o0, o1);
        B += kPanelWidth;
      }
      // (the values have four significant bits: bf16 holds them exactly)
      const __m512i even = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);  // words 0-15: columns 0-15, 16-31: 16-31
      const __m512i odd = (__m512i)_mm512_cvtne2ps_pbh(o1, o0);
      _mm512_storeu_si512(out, _mm512_permutex2var_epi16(even, low, odd));
      _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi16(even, high, odd));
    }
  }
  uint32_t* const end = pairs + size_t((K + 1) / 2 + kAmxStepPairs - 1) / kAmxStepPairs * kAmxStepPairs * kPanelWidth;
  for (; out < end; out += kPanelWidth) std::memset(out, 0, kPanelWidth * 4);
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
