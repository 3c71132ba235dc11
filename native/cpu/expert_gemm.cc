// Expert GEMM passes on top of the micro-kernels. Each panel product handles one 32-wide weight panel for all of an
// expert's rows: the panel is read from memory once and reused across row blocks from cache, which is what
// makes the small-batch (1-4 token) case pure weight streaming and the large one compute-bound. The passes run an
// item's range of panels and write the rows' outputs, around the caches when they are large.
#include "moe/expert_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>  // (x86-64 has SSE2 everywhere: the non-temporal stores)
#endif

namespace moe {

namespace {
// K is processed in slices of this many elements: 2048 fp32 = 256 KiB of panel, 4096 bf16 = 256 KiB. On AMX tiles
// 2048 bf16 = 128 KiB: with d = 4096 (Mixtral) a 32-row block's slice of A is then 128 KiB, not 256, and the gate/up
// pass ran 14-18% faster in a replay; the dense anchor's 192-row chunks are 5% faster with the wide slices
// (bench/RESULTS.md, step 23).
constexpr int64_t kSliceF32 = 2048;
constexpr int64_t kSlicePairs = 2048;
constexpr int64_t kSlicePairsAmx = 1024;

}  // namespace

namespace {

// fp8 weights with bf16 activations (GemmKernels::fp8Tiles: AMX tiles, or vdpbf16ps on AVX-512): each K slice of the
// panel is widened to bf16 pairs once, into the worker's scratch, and every block of 32 rows runs over it.
void fp8TilesProduct(const GemmKernels& kern, const Activations& A, int64_t rows, int64_t K, const void* panel,
                     float* acc, uint32_t* scratch) {
  constexpr int64_t kSlice = kSliceF32;  // 16 blocks of 128 k: 1024 pairs (128 KiB widened) and 16 x 32 scales
  static_assert(kFp8TileScratchWords == size_t(kSlice / 2 + kSlice / kFp8Block) * kPanelWidth, "one slice");
  uint32_t* pairs = scratch;
  float* scales = reinterpret_cast<float*>(scratch + size_t(kSlice / 2) * kPanelWidth);
  if (K == 0) std::fill(acc, acc + rows * kPanelWidth, 0.0f);
  const uint32_t* a = static_cast<const uint32_t*>(A.data);
  for (int64_t k0 = 0; k0 < K; k0 += kSlice) {
    const int kc = int(std::min(kSlice, K - k0));
    kern.fp8ToBf16(static_cast<const uint8_t*>(panel) + fp8Offset(k0), kc, pairs, scales);
    const int kp = int((kc + 1) / 2 + kAmxStepPairs - 1) / kAmxStepPairs * kAmxStepPairs;
    for (int64_t r0 = 0; r0 < rows; r0 += 32) {
      kern.fp8Tiles(int(std::min<int64_t>(32, rows - r0)), kp, a + r0 * A.ld + k0 / 2, A.ld, pairs, scales,
                    acc + r0 * kPanelWidth, k0 > 0);
    }
  }
}

}  // namespace

void panelProduct(const GemmKernels& kern, const Activations& A, int64_t rows, int64_t K, DType weights,
                  const void* panel, float* acc, const void* nextPanel, bool wideSlices, uint32_t* tileScratch) {
  const bool f32 = A.dtype == DType::F32;
  const bool fp8 = weights == DType::FP8;
  if (fp8 && !f32) return fp8TilesProduct(kern, A, rows, K, panel, acc, tileScratch);
  const bool amx = !f32 && kern.isa == Isa::Amx;
  const int64_t depth = f32 ? K : packedKPairs(K);
  const int64_t slice = f32 ? kSliceF32 : amx && !wideSlices ? kSlicePairsAmx : kSlicePairs;
  static_assert(kSliceF32 % kFp8Block == 0, "fp8 slices start on a block of scales");
  if (depth == 0) std::fill(acc, acc + rows * kPanelWidth, 0.0f);  // no slice writes them
  for (int64_t k0 = 0; k0 < depth; k0 += slice) {
    const int kc = int(std::min(slice, depth - k0));
    // Equal blocks (64 rows -> 6 x 11, not 5 x 12 + 4): a short last block would run at low FMA density. AMX
    // tiles instead cost the same for 1 to 16 rows: full blocks of 32 then the rest (70 rows -> 32 + 32 + 6, 5
    // row tiles where 3 x 24 takes 6), with a rest too short for the tiles shared with the block before it.
    const int maxRows = f32 ? kern.maxRows : kern.bf16Rows;
    const int64_t blocks = (rows + maxRows - 1) / maxRows;
    const int64_t blockRows = amx ? maxRows : (rows + blocks - 1) / blocks;
    const int64_t rest = rows - (blocks - 1) * blockRows;
    const int64_t splitFrom = amx && blocks > 1 && rest < kAmxMinRows ? (blocks - 2) * blockRows : rows;
    // While blocks 1.. run from cache, they pull the next slice (of this panel, or the next panel) into L2, so
    // that block 0 of the next slice does not wait on memory. Each k step of a panel is 128 bytes. Where the AMX
    // tiles run, every block, block 0 included, takes its share of the next slice, and their loop prefetches
    // nothing else.
    // (fp8: 32 bytes a step, and a block's scales after its steps)
    const auto bytesTo = [&](int64_t k) { return fp8 ? int64_t(fp8Bytes(k)) : k * kPanelWidth * 4; };
    const char* nextSlice = nullptr;
    int64_t nextBytes = 0;
    if (k0 + kc < depth) {
      nextSlice = static_cast<const char*>(panel) + bytesTo(k0 + kc);
      nextBytes = bytesTo(std::min(depth, k0 + kc + slice)) - bytesTo(k0 + kc);
    } else if (nextPanel) {
      nextSlice = static_cast<const char*>(nextPanel);
      nextBytes = bytesTo(std::min(slice, depth));
    }
    // (spread evenly over the blocks and, within each, over its steps, the weights arrive at the pace the tiles
    // consume them: bench/RESULTS.md, step 19; under kAmxMinRows rows, or a slice shorter than one tile step, the
    // AVX-512 kernel does the work and the stream is as for it)
    const bool spread = amx && rows >= kAmxMinRows && kc >= kAmxStepPairs;
    const int64_t sharing = spread ? blocks : blocks - 1;
    const int64_t linesPerBlock = sharing > 0 ? (nextBytes / 64 + sharing - 1) / sharing : 0;
    for (int64_t r0 = 0, block = 0, mr = 0; r0 < rows; r0 += mr, ++block) {
      mr = r0 < splitFrom ? std::min(blockRows, rows - r0) : r0 == splitFrom ? (rows - r0) / 2 : rows - r0;
      L2Prefetch next;
      if ((spread || block > 0) && nextSlice) {
        const int64_t first = (spread ? block : block - 1) * linesPerBlock;
        next.data = nextSlice + first * 64;
        next.lines = int(std::max<int64_t>(0, std::min(linesPerBlock, nextBytes / 64 - first)));
      } else if (spread && block > 0) {
        next.data = static_cast<const char*>(panel);  // nothing left to stream: block 0 brought this slice in
      }
      // The first slice writes the rows' accumulators, the later ones add to them inside the kernel.
      float* tile = acc + r0 * kPanelWidth;
      if (fp8) {
        kern.fp8(int(mr), kc, static_cast<const float*>(A.data) + r0 * A.ld + k0, A.ld,
                 static_cast<const uint8_t*>(panel) + fp8Offset(k0), tile, k0 > 0, next);
      } else if (f32) {
        kern.f32(int(mr), kc, static_cast<const float*>(A.data) + r0 * A.ld + k0, A.ld,
                 static_cast<const float*>(panel) + k0 * kPanelWidth, tile, k0 > 0, next);
      } else {
        kern.bf16(int(mr), kc, static_cast<const uint32_t*>(A.data) + r0 * A.ld + k0, A.ld,
                  static_cast<const uint32_t*>(panel) + k0 * kPanelWidth, tile, k0 > 0, next);
      }
    }
  }
}

namespace {

const void* panelAt(const void* panels, size_t stride, int64_t p) {
  return static_cast<const char*>(panels) + size_t(p) * stride;
}

// Whether rows `rowBytes` apart from `base` all start on 64-byte lines (so whole lines can be streamed).
bool rowsOnLines(const void* base, size_t rowBytes) {
  return reinterpret_cast<uintptr_t>(base) % 64 == 0 && rowBytes % 64 == 0;
}

// One 64-byte line from `src` (16-byte aligned) to `dst` (a line), around the caches.
inline void streamLine(void* dst, const void* src) {
#if defined(__SSE2__) || defined(_M_X64)
  for (int i = 0; i < 4; ++i)
    _mm_stream_si128(static_cast<__m128i*>(dst) + i, _mm_load_si128(static_cast<const __m128i*>(src) + i));
#else
  std::memcpy(dst, src, 64);
#endif
}

// 16 floats w * src[0..16) (16-byte aligned) into the line `dst`, around the caches.
inline void streamScaledLine(float* dst, const float* src, float w) {
#if defined(__SSE2__) || defined(_M_X64)
  const __m128 scale = _mm_set1_ps(w);
  for (int i = 0; i < 16; i += 4) _mm_stream_ps(dst + i, _mm_mul_ps(scale, _mm_load_ps(src + i)));
#else
  for (int i = 0; i < 16; ++i) dst[i] = w * src[i];
#endif
}

}  // namespace

void streamFence() {
#if defined(__SSE2__) || defined(_M_X64)
  _mm_sfence();
#endif
}

bool storePanelRows(const float* acc, int64_t rows, int cols, const float* rowWeight, float* out, size_t ldo,
                    bool stream) {
  const bool whole = stream && cols == kPanelWidth && rowsOnLines(out, ldo * sizeof(float));
  for (int64_t r = 0; r < rows; ++r) {
    const float w = rowWeight ? rowWeight[r] : 1.0f;
    const float* src = acc + r * kPanelWidth;
    float* dst = out + r * ldo;
    if (whole) {
      streamScaledLine(dst, src, w);
      streamScaledLine(dst + 16, src + 16, w);
    } else if (rowWeight) {
      for (int c = 0; c < cols; ++c) dst[c] = w * src[c];
    } else {
      std::copy(src, src + cols, dst);
    }
  }
  return whole && rows > 0;
}

void gluRow(const GemmKernels& kern, const float* tileRow, const GluEpilogue& ep, int64_t p, void* out, bool bf16) {
  const float* bias = ep.bias ? ep.bias + p * kPanelWidth : nullptr;
  if (ep.clamped) {
    kern.clampedGlu(tileRow, bias, ep.alpha, ep.limit, out, bf16);
    return;
  }
  alignas(64) float biased[kPanelWidth];
  for (int i = 0; i < kPanelWidth; ++i) biased[i] = tileRow[i] + (bias ? bias[i] : 0.0f);
  kern.swiglu(biased, out, bf16);
}

void gateUpPanels(const GemmKernels& kern, const Activations& x, int64_t rows, int64_t d, DType weights,
                  const void* gateUpPanels, int64_t p0, int64_t p1, void* hidden, size_t ldh, float* acc,
                  bool stream, uint32_t* tileScratch, const GluEpilogue& ep) {
  const size_t stride = panelBytes(weights, d);
  constexpr int half = kPanelWidth / 2;
  const bool bf16 = x.dtype == DType::BF16;
  // A panel's 16 outputs of a row: 64 bytes in fp32, 32 (half a line) in bf16, where two panels make a line.
  const int64_t perLine = bf16 ? 2 : 1;
  stream = stream && rows > 0 && rowsOnLines(hidden, ldh * 4);  // (4 bytes: a float or a pair)
  float* second = acc + rows * kPanelWidth;
  alignas(64) uint32_t line[16];
  // Where row r's outputs of panel p start in `hidden` (rows ldh 4-byte elements apart), and the panel after q.
  const auto hiddenAt = [&](int64_t r, int64_t p) {
    return static_cast<char*>(hidden) + size_t(r) * ldh * 4 + size_t(p) * (bf16 ? half * 2 : half * 4);
  };
  const auto nextOf = [&](int64_t q) { return q + 1 < p1 ? panelAt(gateUpPanels, stride, q + 1) : nullptr; };
  const bool plain = ep.plain();
  const auto epilogue = [&](const float* tileRow, int64_t p, void* out) {
    if (plain)
      kern.swiglu(tileRow, out, bf16);
    else
      gluRow(kern, tileRow, ep, p, out, bf16);
  };
  bool streamed = false;
  for (int64_t p = p0; p < p1;) {
    const void* panel = panelAt(gateUpPanels, stride, p);
    if (stream && p % perLine == 0 && p + perLine <= p1) {
      panelProduct(kern, x, rows, d, weights, panel, acc, nextOf(p), false, tileScratch);
      if (bf16) panelProduct(kern, x, rows, d, weights, nextOf(p), second, nextOf(p + 1), false, tileScratch);
      for (int64_t r = 0; r < rows; ++r) {
        epilogue(acc + r * kPanelWidth, p, line);
        if (bf16) epilogue(second + r * kPanelWidth, p + 1, line + half / 2);
        streamLine(hiddenAt(r, p), line);
      }
      streamed = true;
      p += perLine;
      continue;
    }
    panelProduct(kern, x, rows, d, weights, panel, acc, nextOf(p), false, tileScratch);
    for (int64_t r = 0; r < rows; ++r) epilogue(acc + r * kPanelWidth, p, hiddenAt(r, p));
    ++p;
  }
  if (streamed) streamFence();
}

void downPanels(const GemmKernels& kern, const Activations& h, int64_t rows, int64_t f, DType weights,
                const void* downPanels, int64_t p0, int64_t p1, int64_t d, const float* rowWeight, float* out,
                size_t ldo, float* acc, bool stream, uint32_t* tileScratch, const float* bias) {
  const size_t stride = panelBytes(weights, f);
  bool streamed = false;
  for (int64_t p = p0; p < p1; ++p) {
    panelProduct(kern, h, rows, f, weights, panelAt(downPanels, stride, p), acc,
                 p + 1 < p1 ? panelAt(downPanels, stride, p + 1) : nullptr, false, tileScratch);
    const int64_t col0 = p * kPanelWidth;
    const int cols = int(std::min<int64_t>(kPanelWidth, d - col0));
    if (bias)
      for (int64_t r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) acc[r * kPanelWidth + c] += bias[col0 + c];
    streamed = storePanelRows(acc, rows, cols, rowWeight, out + col0, ldo, stream) || streamed;
  }
  if (streamed) streamFence();
}

}  // namespace moe
