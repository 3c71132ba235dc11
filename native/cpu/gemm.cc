// Packing of weights into panels, the scalar micro-kernels (always present, and the reference for the SIMD
// ones), and the run-time choice of kernel set.
#include "moe/gemm.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "gemm_isa.h"

namespace moe {

namespace {

constexpr int kScalarMaxRows = 4;

void scalarF32(int rows, int K, const float* A, size_t lda, const float* B, float* C, bool accumulate, L2Prefetch) {
  for (int m = 0; m < rows; ++m) {
    float acc[kPanelWidth] = {};
    if (accumulate) std::memcpy(acc, C + m * kPanelWidth, sizeof(acc));
    const float* b = B;
    for (int k = 0; k < K; ++k, b += kPanelWidth) {
      const float a = A[m * lda + k];
      for (int n = 0; n < kPanelWidth; ++n) acc[n] += a * b[n];
    }
    std::memcpy(C + m * kPanelWidth, acc, sizeof(acc));
  }
}

void scalarBF16(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate,
                L2Prefetch) {
  for (int m = 0; m < rows; ++m) {
    float acc[kPanelWidth] = {};
    if (accumulate) std::memcpy(acc, C + m * kPanelWidth, sizeof(acc));
    const uint32_t* b = B;
    for (int kp = 0; kp < Kp; ++kp, b += kPanelWidth) {
      const uint32_t pair = A[m * lda + kp];
      const float aEven = bf16ToFloat(uint16_t(pair & 0xffff));
      const float aOdd = bf16ToFloat(uint16_t(pair >> 16));
      for (int n = 0; n < kPanelWidth; ++n) {
        acc[n] += aEven * bf16ToFloat(uint16_t(b[n] & 0xffff));
        acc[n] += aOdd * bf16ToFloat(uint16_t(b[n] >> 16));
      }
    }
    std::memcpy(C + m * kPanelWidth, acc, sizeof(acc));
  }
}

// The 256 values of E4M3, decoded once.
struct E4m3Table {
  float value[256];
  E4m3Table() {
    for (int b = 0; b < 256; ++b) {
      const int e = (b >> 3) & 15, m = b & 7;
      const float magnitude = e == 15 && m == 7 ? NAN : e == 0 ? std::ldexp(float(m), -9) : std::ldexp(8.0f + m, e - 10);
      value[b] = b & 0x80 ? -magnitude : magnitude;
    }
  }
};
const E4m3Table& e4m3Table() {
  static const E4m3Table table;
  return table;
}

void scalarFP8(int rows, int K, const float* A, size_t lda, const uint8_t* B, float* C, bool accumulate,
               L2Prefetch) {
  const float* value = e4m3Table().value;
  for (int m = 0; m < rows; ++m) {
    float acc[kPanelWidth] = {};
    if (accumulate) std::memcpy(acc, C + m * kPanelWidth, sizeof(acc));
    for (int k = 0; k < K; ++k) {
      const float a = A[m * lda + k];
      const int64_t k0 = k / kFp8Block * kFp8Block, steps = std::min<int64_t>(kFp8Block, K - k0);
      const uint8_t* block = B + fp8Offset(k0);
      const uint8_t* b = block + size_t(k - k0) * kPanelWidth;
      // (the stored scales are 256 times the weights', for the SIMD kernels' decoding; either way the weight is
      // E4M3 times the scale, rounded once)
      const float* scale = reinterpret_cast<const float*>(block + size_t(steps) * kPanelWidth);
      for (int n = 0; n < kPanelWidth; ++n) acc[n] += a * (value[b[n]] * (scale[n] * (1.0f / 256)));
    }
    std::memcpy(C + m * kPanelWidth, acc, sizeof(acc));
  }
}

inline uint32_t bf16Pair(float even, float odd) {
  return uint32_t(floatToBf16(even)) | (uint32_t(floatToBf16(odd)) << 16);
}

const GemmKernels kScalar{Isa::Scalar,    kScalarMaxRows, scalarF32,      scalarBF16,     scalarFP8,
                          scalar::swigluRow, scalar::toBf16, kScalarMaxRows, nullptr,        nullptr,
                          scalar::clampedGluRow};
const GemmKernels kAvx2{Isa::Avx2,        avx2::maxRows(), avx2::kernelF32, avx2::kernelBF16, avx2::kernelFP8,
                        avx2::swigluRow,  avx2::toBf16,    avx2::maxRows(), nullptr,          nullptr,
                        avx2::clampedGluRow};
const GemmKernels kAvx512{Isa::Avx512,           avx512::maxRows(), avx512::kernelF32, avx512::kernelBF16,
                          avx512::kernelFP8,     avx512::swigluRow, avx512::toBf16,    avx512::maxRows(),
                          avx512::kernelFP8Pairs, avx512::fp8ToBf16, avx512::clampedGluRow};
// The same on Intel, with its weight-stream prefetch (gemm_avx512.cc). Its fp8 pairs are off unless MOE_FP8_PAIRS=1:
// on Intel, vdpbf16ps does fewer multiply-adds per cycle than the two FMA ports (a bf16 layer ran 1.37x slower than
// an fp32 one on a Xeon forced to AVX-512; on AMD's EPYC, 2x faster), and fp8 on bf16 pairs ran slower than the fp32
// kernel (bench/RESULTS.md, step 31).
const GemmKernels kAvx512Intel{Isa::Avx512,        avx512::maxRows(), avx512::kernelF32TwoLevel,
                               avx512::kernelBF16TwoLevel, avx512::kernelFP8TwoLevel, avx512::swigluRow,
                               avx512::toBf16,     avx512::maxRows(), avx512::kernelFP8Pairs, avx512::fp8ToBf16,
                               avx512::clampedGluRow};
// AMX (Intel only): AVX-512 for everything but the bf16 tiles (and the fp8 experts of 8 or more rows: layer.cc).
const GemmKernels kAmx{Isa::Amx,          avx512::maxRows(), avx512::kernelF32TwoLevel, amx::kernelBF16,
                       avx512::kernelFP8TwoLevel, avx512::swigluRow, avx512::toBf16, amx::maxRows(),
                       amx::kernelFP8Tiles, avx512::fp8ToBf16, avx512::clampedGluRow};

// One panel column: `width` weight rows starting at `row`, the rest zero.
template <typename Emit>
void forEachPanelRow(int64_t rows, Emit&& emit) {
  for (int64_t p = 0; p < panelCount(rows); ++p)
    for (int n = 0; n < kPanelWidth; ++n) emit(p, n, p * kPanelWidth + n < rows ? p * kPanelWidth + n : -1);
}

// MOE_FP8_PAIRS (read once): "1" runs fp8 experts of kFp8TileRows rows or more on bf16 pairs wherever a kernel
// exists (AMX, AVX-512), "0" never (every fp8 expert with fp32 activations: results independent of the batch, at
// fp32's speed for large ones); unset (or another value, which lib/native.ts warns about): where it is faster.
int fp8PairsSetting() {
  static const int setting = [] {
    const char* v = std::getenv("MOE_FP8_PAIRS");
    if (!v) return -1;
    std::string s(v);
    s.erase(0, s.find_first_not_of(" \t"));
    s.erase(s.find_last_not_of(" \t") + 1);
    return s == "1" ? 1 : s == "0" ? 0 : -1;
  }();
  return setting;
}

GemmKernels withFp8Pairs(GemmKernels kern, bool byDefault) {
  const int setting = fp8PairsSetting();
  if (setting == 0 || (setting < 0 && !byDefault)) kern.fp8Tiles = nullptr, kern.fp8ToBf16 = nullptr;
  return kern;
}

}  // namespace

const GemmKernels& gemmKernelsFor(Isa isa) {
  static const GemmKernels amx = withFp8Pairs(kAmx, true), amd = withFp8Pairs(kAvx512, true),
                           intel = withFp8Pairs(kAvx512Intel, false);
  switch (isa) {
    case Isa::Amx: return amx;
    case Isa::Avx512: return cpuFeatures().intel ? intel : amd;
    case Isa::Avx2: return kAvx2;
    default: return kScalar;
  }
}

const GemmKernels& gemmKernels() { return gemmKernelsFor(bestIsa()); }

uint16_t floatToBf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

void packPanelsF32(const float* W, size_t ldw, int64_t rows, int64_t K, float* dst) {
  forEachPanelRow(rows, [&](int64_t p, int n, int64_t row) {
    float* panel = dst + size_t(p) * size_t(K) * kPanelWidth;
    for (int64_t k = 0; k < K; ++k) panel[k * kPanelWidth + n] = row < 0 ? 0.0f : W[size_t(row) * ldw + k];
  });
}

void packPanelsBF16(const float* W, size_t ldw, int64_t rows, int64_t K, uint32_t* dst) {
  const int64_t Kp = packedKPairs(K);
  forEachPanelRow(rows, [&](int64_t p, int n, int64_t row) {
    uint32_t* panel = dst + size_t(p) * size_t(Kp) * kPanelWidth;
    for (int64_t kp = 0; kp < Kp; ++kp) {
      if (row < 0) {
        panel[kp * kPanelWidth + n] = 0;
        continue;
      }
      const float* w = W + size_t(row) * ldw;
      const float odd = 2 * kp + 1 < K ? w[2 * kp + 1] : 0.0f;
      panel[kp * kPanelWidth + n] = bf16Pair(w[2 * kp], odd);
    }
  });
}

// Gate/up panels hold 16 gate rows then the same 16 up rows, so rows/16 panels cover the intermediate size.
void packGateUpF32(const float* gate, const float* up, int64_t rows, int64_t K, float* dst) {
  constexpr int half = kPanelWidth / 2;
  const int64_t panels = (rows + half - 1) / half;
  for (int64_t p = 0; p < panels; ++p) {
    float* panel = dst + size_t(p) * size_t(K) * kPanelWidth;
    for (int n = 0; n < half; ++n) {
      const int64_t row = p * half + n;
      for (int64_t k = 0; k < K; ++k) {
        panel[k * kPanelWidth + n] = row < rows ? gate[size_t(row) * K + k] : 0.0f;
        panel[k * kPanelWidth + half + n] = row < rows ? up[size_t(row) * K + k] : 0.0f;
      }
    }
  }
}

void packGateUpBF16(const float* gate, const float* up, int64_t rows, int64_t K, uint32_t* dst) {
  constexpr int half = kPanelWidth / 2;
  const int64_t panels = (rows + half - 1) / half;
  const int64_t Kp = packedKPairs(K);
  for (int64_t p = 0; p < panels; ++p) {
    uint32_t* panel = dst + size_t(p) * size_t(Kp) * kPanelWidth;
    for (int n = 0; n < half; ++n) {
      const int64_t row = p * half + n;
      const float* g = row < rows ? gate + size_t(row) * K : nullptr;
      const float* u = row < rows ? up + size_t(row) * K : nullptr;
      for (int64_t kp = 0; kp < Kp; ++kp) {
        const bool hasOdd = 2 * kp + 1 < K;
        panel[kp * kPanelWidth + n] = g ? bf16Pair(g[2 * kp], hasOdd ? g[2 * kp + 1] : 0.0f) : 0;
        panel[kp * kPanelWidth + half + n] = u ? bf16Pair(u[2 * kp], hasOdd ? u[2 * kp + 1] : 0.0f) : 0;
      }
    }
  }
}

uint8_t floatToE4m3(float v) {
  if (std::isnan(v)) return 0x7f;
  const uint8_t sign = std::signbit(v) ? 0x80 : 0;
  const float a = std::fabs(v);
  if (a >= 448.0f) return sign | 0x7e;
  if (a < 0x1p-6f) return sign | uint8_t(std::nearbyint(a * 512.0f));  // subnormals (8 rounds up to 2^-6, code 8)
  int e = std::ilogb(a);                                                 // -6..8
  int q = int(std::nearbyint(std::ldexp(a, 3 - e)));                     // 8..16: 1.mmm times 8, to nearest even
  if (q == 16) q = 8, ++e;
  return sign | uint8_t(((e + 7) << 3) | (q - 8));
}

void quantizeE4m3(const float* W, size_t ldw, int64_t rows, int64_t K, uint8_t* q, float* scales) {
  const int64_t blocks = fp8Blocks(K);
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = W + size_t(r) * ldw;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * kFp8Block, k1 = std::min<int64_t>(K, k0 + kFp8Block);
      float amax = 0;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(w[k]));
      float scale = amax / 448.0f;
      if (!(scale >= FLT_MIN)) scale = 0;
      for (int64_t k = k0; k < k1; ++k) q[size_t(r) * K + k] = scale == 0 ? 0 : floatToE4m3(w[k] / scale);
      scales[size_t(r) * blocks + b] = scale;
    }
  }
}

namespace {
// One fp8 panel: column n from quantized row `row` (-1: zeros).
void fp8PanelColumn(const uint8_t* q, const float* scales, int64_t row, int64_t K, int n, uint8_t* panel) {
  const int64_t blocks = fp8Blocks(K);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * kFp8Block, steps = std::min<int64_t>(kFp8Block, K - k0);
    uint8_t* block = panel + fp8Offset(k0);
    for (int64_t k = 0; k < steps; ++k) block[k * kPanelWidth + n] = row < 0 ? 0 : q[size_t(row) * K + k0 + k];
    float scale = row < 0 ? 0.0f : scales[size_t(row) * blocks + b] * 256.0f;
    std::memcpy(block + steps * kPanelWidth + n * 4, &scale, 4);
  }
}
}  // namespace

void packPanelsFP8(const uint8_t* q, const float* scales, int64_t rows, int64_t K, uint8_t* dst) {
  const size_t bytes = fp8PanelBytes(K);
  std::memset(dst, 0, size_t(panelCount(rows)) * bytes);  // (the line padding too)
  forEachPanelRow(rows, [&](int64_t p, int n, int64_t row) { fp8PanelColumn(q, scales, row, K, n, dst + p * bytes); });
}

void packGateUpFP8(const uint8_t* gateQ, const float* gateScales, const uint8_t* upQ, const float* upScales,
                   int64_t rows, int64_t K, uint8_t* dst) {
  constexpr int half = kPanelWidth / 2;
  const int64_t panels = (rows + half - 1) / half;
  const size_t bytes = fp8PanelBytes(K);
  std::memset(dst, 0, size_t(panels) * bytes);
  for (int64_t p = 0; p < panels; ++p) {
    for (int n = 0; n < half; ++n) {
      const int64_t row = p * half + n < rows ? p * half + n : -1;
      fp8PanelColumn(gateQ, gateScales, row, K, n, dst + p * bytes);
      fp8PanelColumn(upQ, upScales, row, K, half + n, dst + p * bytes);
    }
  }
}

void rowToBf16Pairs(const float* src, int64_t K, uint32_t* dst) { gemmKernels().toBf16(src, K, dst); }

namespace scalar {

void toBf16(const float* src, int64_t n, uint32_t* dst) {
  const int64_t pairs = packedKPairs(n);
  for (int64_t kp = 0; kp < pairs; ++kp) dst[kp] = bf16Pair(src[2 * kp], 2 * kp + 1 < n ? src[2 * kp + 1] : 0.0f);
}

void swigluRow(const float* tileRow, void* out, bool bf16) {
  constexpr int half = kPanelWidth / 2;
  float h[half];
  for (int i = 0; i < half; ++i) {
    const float g = tileRow[i];
    h[i] = g / (1.0f + std::exp(-g)) * tileRow[half + i];
  }
  if (bf16) toBf16(h, half, static_cast<uint32_t*>(out));
  else std::memcpy(out, h, sizeof(h));
}

void clampedGluRow(const float* tileRow, const float* bias, float alpha, float limit, void* out, bool bf16) {
  constexpr int half = kPanelWidth / 2;
  float h[half];
  for (int i = 0; i < half; ++i) {
    // (min(limit, NaN) is NaN here, as in the vector paths)
    float g = tileRow[i] + (bias ? bias[i] : 0.0f);
    float u = tileRow[half + i] + (bias ? bias[half + i] : 0.0f);
    g = g > limit ? limit : g;
    u = u > limit ? limit : (u < -limit ? -limit : u);
    h[i] = (u + 1.0f) * (g / (1.0f + std::exp(-alpha * g)));
  }
  if (bf16) toBf16(h, half, static_cast<uint32_t*>(out));
  else std::memcpy(out, h, sizeof(h));
}

int maxRows() { return kScalarMaxRows; }

}  // namespace scalar

}  // namespace moe
