// Roofline anchors and bench data generation. The dense GEMM deliberately reuses the layer's panel product,
// so "percent of dense GEMM rate" compares the MoE layer with the best this kernel does on a large square
// problem, not with an idealised peak.
#include "moe/roofline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "moe/aligned.h"
#include "moe/expert_gemm.h"
#include "gemm_isa.h"

namespace moe {

uint64_t streamRead(const float* data, size_t n, ThreadPool& pool, int workers) {
  constexpr size_t kChunk = size_t(1) << 21;  // 8 MiB of floats per work item
  const int64_t items = int64_t((n + kChunk - 1) / kChunk);
  const bool avx512 = bestIsa() >= Isa::Avx512;
  std::vector<uint64_t> partial(size_t(std::max(1, workers)), 0);
  pool.parallelFor(workers, items, [&](int64_t item, int worker) {
    const size_t begin = size_t(item) * kChunk, end = std::min(n, begin + kChunk);
    uint64_t acc = 0;
    if (avx512) {
      acc = avx512::streamXor(data + begin, end - begin);
    } else {
      const uint32_t* w = reinterpret_cast<const uint32_t*>(data);
      uint32_t lanes[8] = {};
      size_t i = begin;
      for (; i + 8 <= end; i += 8)
        for (int j = 0; j < 8; ++j) lanes[j] ^= w[i + j];
      for (; i < end; ++i) lanes[0] ^= w[i];
      for (uint32_t v : lanes) acc ^= v;
    }
    partial[size_t(worker)] ^= acc;
  });
  uint64_t sum = 0;
  for (uint64_t v : partial) sum ^= v;
  return sum;
}

void fillNormal(float* out, size_t n, uint64_t seed, float stddev, ThreadPool& pool, int workers) {
  constexpr size_t kBlock = size_t(1) << 16;
  const int64_t blocks = int64_t((n + kBlock - 1) / kBlock);
  pool.parallelFor(workers, blocks, [&](int64_t block, int) {
    uint64_t s = (seed + 1) * 0x9e3779b97f4a7c15ULL ^ (uint64_t(block) + 1) * 0xbf58476d1ce4e5b9ULL;
    auto next = [&s] {  // xorshift64*
      s ^= s >> 12;
      s ^= s << 25;
      s ^= s >> 27;
      return (s * 0x2545f4914f6cdd1dULL) >> 11;  // 53 bits
    };
    const size_t begin = size_t(block) * kBlock, end = std::min(n, begin + kBlock);
    for (size_t i = begin; i < end; i += 2) {
      const double u1 = (double(next()) + 1.0) / 9007199254740993.0, u2 = double(next()) / 9007199254740992.0;
      const double r = std::sqrt(-2.0 * std::log(u1)) * stddev;
      out[i] = float(r * std::cos(6.283185307179586 * u2));
      if (i + 1 < end) out[i + 1] = float(r * std::sin(6.283185307179586 * u2));
    }
  });
}

double denseGemmSeconds(int64_t M, int64_t N, int64_t K, DType dtype, int reps, ThreadPool& pool, int workers) {
  const bool f32 = dtype == DType::F32;
  AlignedBuffer<float> a(size_t(M * K)), b(size_t(N * K)), c(size_t(M * N));
  fillNormal(a.data(), a.size(), 1, 1.0f, pool, workers);
  fillNormal(b.data(), b.size(), 2, 1.0f, pool, workers);
  AlignedBuffer<float> packedF32;
  AlignedBuffer<uint32_t> packedBF16, aBF16;
  const size_t lda = f32 ? size_t(K) : size_t(packedKPairs(K));
  if (f32) {
    packedF32.ensure(packedSizeF32(N, K));
    packPanelsF32(b.data(), size_t(K), N, K, packedF32.data());
  } else {
    packedBF16.ensure(packedSizeBF16(N, K));
    packPanelsBF16(b.data(), size_t(K), N, K, packedBF16.data());
    aBF16.ensure(size_t(M) * lda);
    for (int64_t m = 0; m < M; ++m) rowToBf16Pairs(a.data() + m * K, K, aBF16.data() + m * lda);
  }
  const GemmKernels& kern = gemmKernels();
  constexpr int64_t kRowChunk = 192;  // rows per work item: their slice of A stays in cache across panels
  const int64_t rowChunks = (M + kRowChunk - 1) / kRowChunk, panels = panelCount(N);
  const size_t stride = panelBytes(dtype, K);
  AlignedBuffer<float> acc(size_t(workers) * kRowChunk * kPanelWidth);
  const bool streamC = streamsOutput(size_t(M) * size_t(N) * sizeof(float));
  std::vector<double> times;
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool.parallelFor(workers, rowChunks * panels, [&](int64_t item, int worker) {
      const int64_t chunk = item / panels, panel = item % panels;
      const int64_t row0 = chunk * kRowChunk, rows = std::min(kRowChunk, M - row0);
      const Activations A = f32 ? Activations{dtype, a.data() + row0 * K, lda}
                                : Activations{dtype, aBF16.data() + row0 * int64_t(lda), lda};
      const char* packed = f32 ? reinterpret_cast<const char*>(packedF32.data())
                               : reinterpret_cast<const char*>(packedBF16.data());
      const void* p = packed + size_t(panel) * stride;
      float* accum = acc.data() + size_t(worker) * kRowChunk * kPanelWidth;
      panelProduct(kern, A, rows, K, dtype, p, accum, nullptr, /*wideSlices=*/true);  // the best dense rate of this code
      const int cols = int(std::min<int64_t>(kPanelWidth, N - panel * kPanelWidth));
      // C goes around the caches as the layer's outputs do: ordinary stores of its 64 MiB (at 4096) cost the anchor
      // a fifth of its bf16 rate (bench/RESULTS.md, step 25)
      if (storePanelRows(accum, rows, cols, nullptr, c.data() + row0 * N + panel * kPanelWidth, size_t(N), streamC))
        streamFence();
    });
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace moe
