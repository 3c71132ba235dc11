// AMX micro-kernel for the bf16 packed-panel GEMM (see moe/gemm.h): a rows x 32 tile (rows <= 32) over K pairs,
// on the tile matrix unit of Intel Xeons since Sapphire Rapids. Compiled with AMX flags in its own translation
// unit and only called when CPUID, XCR0 and the kernel's permission (arch_prctl) all say yes (cpu_features.cc).
//
// The bf16 panel layout is already the AMX B-operand layout: a panel row is one K pair for 32 outputs, so 16
// consecutive pair rows at a stride of 128 bytes, 64 bytes each, are one B tile (16 pairs x 16 outputs); the
// other 64 bytes of each row are the second B tile. A tile is 16 activation rows x 16 pairs (64 bytes per row,
// at the activations' own stride). Tiles: C 0-3 (rows 0-15 / 16-31 x outputs 0-15 / 16-31), A 4-5, B 6-7.
// K pairs beyond the last multiple of 16 go through the AVX-512 kernel, accumulating into the same tile.
// One to three rows are pure weight streaming, a little faster with AVX-512 (no tile set-up): below kMinRows the
// AVX-512 kernel does the whole call (bench/RESULTS.md, step 17).
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "gemm_isa.h"

namespace moe {
namespace amx {

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
namespace {

constexpr int kMaxRows = 32;
constexpr int kMinRows = kAmxMinRows;
constexpr int kPairsPerStep = kAmxStepPairs;

// The 64-byte operand of LDTILECFG (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t startRow = 0;
  uint8_t reserved[14] = {};
  uint16_t colBytes[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// GCC's tile intrinsics are asm statements without a memory clobber: this keeps the compiler from moving C++ reads
// or writes of the operands across them should this code ever be inlined into a caller that touches them.
inline void memoryBarrier() { asm volatile("" ::: "memory"); }

void configure(int rows0, int rows1) {
  TileConfig cfg;
  auto set = [&cfg](int tile, int rows) {
    cfg.rows[tile] = uint8_t(rows);
    cfg.colBytes[tile] = rows > 0 ? 64 : 0;
  };
  for (int t : {0, 1, 4}) set(t, rows0);
  for (int t : {2, 3, 5}) set(t, rows1);
  set(6, kPairsPerStep);
  set(7, kPairsPerStep);
  // (GCC's _tile_loadconfig names only 8 bytes of its operand: make all 64 visible as read)
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// The AVX-512 kernel (its Intel prefetch) over any row count (it takes at most avx512::maxRows() rows a call), in
// equal blocks.
void avx512Rows(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate,
                L2Prefetch next) {
  const int most = avx512::maxRows();
  const int blocks = (rows + most - 1) / most, blockRows = (rows + blocks - 1) / blocks;
  for (int r0 = 0; r0 < rows; r0 += blockRows)
    avx512::kernelBF16TwoLevel(std::min(blockRows, rows - r0), Kp, A + size_t(r0) * lda, lda, B, C + r0 * 32,
                               accumulate, r0 == 0 ? next : L2Prefetch{});
}

// The weight stream's software prefetch. With a `next` range (data set) the caller streams the weights itself,
// one slice ahead spread over its row blocks (panelProduct): the range's lines, if any, go into L2 evenly over this
// call's steps, and nothing else is prefetched. More prefetches of lines already in L2 or on their way only take
// fill buffers from the tile loads (bench/RESULTS.md, steps 19 and 21). Without one (a lone call), the stream as the
// AVX-512 kernels prefetch it on Intel: 16 KiB ahead into L2, 2 KiB (one step) into L1.
class StreamPrefetch {
 public:
  StreamPrefetch(int Kp, L2Prefetch next)
      : ranged_(next.data != nullptr),
        next_(next.data),
        end_(ranged_ ? next.data + size_t(std::max(0, next.lines)) * 64 : nullptr),
        perStep_(ranged_ ? (std::max(0, next.lines) + Kp / kPairsPerStep - 1) / (Kp / kPairsPerStep) : 0) {}

  // (always_inline: GCC 12 left a helper like this out of line, found it free of side effects, prefetches being
  // hints, and deleted every call: until step 19 the kernel ran with no software prefetch at all)
  __attribute__((always_inline)) inline void step(const uint32_t* B, int kp, int Kp) {
    if (ranged_) {
      for (int i = 0; i < perStep_ && next_ < end_; ++i, next_ += 64) _mm_prefetch(next_, _MM_HINT_T1);
      return;
    }
    const char* step = reinterpret_cast<const char*>(B + size_t(kp) * 32);
    constexpr int kStepBytes = kPairsPerStep * 128;
    if (kp + 8 * kPairsPerStep < Kp)
      for (int line = 0; line < kStepBytes / 64; ++line) _mm_prefetch(step + 8 * kStepBytes + line * 64, _MM_HINT_T1);
    if (kp + kPairsPerStep < Kp)
      for (int line = 0; line < kStepBytes / 64; ++line) _mm_prefetch(step + kStepBytes + line * 64, _MM_HINT_T0);
  }

 private:
  bool ranged_;
  const char* next_;
  const char* end_;
  int perStep_;
};

// The C tiles (0-3; 2 and 3 only for rows 16..31, TWO) at rest, or read from / written to a rows x 32 float tile of
// row stride 32. Row tiles 0/1 hold rows 0-15, 2/3 rows 16-31; 0/2 outputs 0-15, 1/3 outputs 16-31.
constexpr size_t kRowBytes = 32 * 4;  // a C row, and a B (panel) row: 32 floats or 32 pairs

template <bool TWO>
__attribute__((always_inline)) inline void zeroC() {
  _tile_zero(0);
  _tile_zero(1);
  if (TWO) {
    _tile_zero(2);
    _tile_zero(3);
  }
}

template <bool TWO>
__attribute__((always_inline)) inline void loadC(const float* C) {
  _tile_loadd(0, C, kRowBytes);
  _tile_loadd(1, C + 16, kRowBytes);
  if (TWO) {
    _tile_loadd(2, C + 16 * 32, kRowBytes);
    _tile_loadd(3, C + 16 * 32 + 16, kRowBytes);
  }
}

template <bool TWO>
__attribute__((always_inline)) inline void storeC(float* C) {
  _tile_stored(0, C, kRowBytes);
  _tile_stored(1, C + 16, kRowBytes);
  if (TWO) {
    _tile_stored(2, C + 16 * 32, kRowBytes);
    _tile_stored(3, C + 16 * 32 + 16, kRowBytes);
  }
}

// One tile step: 16 K pairs from kp of A (rows lda pairs apart) times the two B tiles of the panel, into C.
template <bool TWO>
__attribute__((always_inline)) inline void tileStep(int kp, const uint32_t* A, size_t lda, const uint32_t* B) {
  const uint32_t* b = B + size_t(kp) * 32;
  _tile_loadd(6, b, kRowBytes);
  _tile_loadd(7, b + 16, kRowBytes);
  _tile_loadd(4, A + kp, lda * 4);
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  if (TWO) {
    _tile_loadd(5, A + 16 * lda + kp, lda * 4);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
}

// TWO: rows 16..31 exist (tiles 2, 3 and 5 are in use).
template <bool TWO>
void tiles(int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate, L2Prefetch next) {
  if (accumulate) loadC<TWO>(C);
  else zeroC<TWO>();
  StreamPrefetch stream(Kp, next);
  for (int kp = 0; kp < Kp; kp += kPairsPerStep) {
    stream.step(B, kp, Kp);
    tileStep<TWO>(kp, A, lda, B);
  }
  storeC<TWO>(C);
}

// fp8 on the tiles: per block of 64 pairs, zeroed C tiles sum A · (the E4M3 values), then each column's sums go
// into C times the block's scale. The widened slice and A's rows hold whole tile steps (zeros past K).
template <bool TWO>
void fp8Tiles(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, const float* scales, float* C) {
  constexpr int kBlockPairs = kFp8Block / 2;
  alignas(64) float sums[32 * 32];
  for (int kb = 0; kb < Kp; kb += kBlockPairs, scales += 32) {
    memoryBarrier();  // (the last block's sums are read before these tiles are stored over them)
    zeroC<TWO>();
    const int end = std::min(Kp, kb + kBlockPairs);
    for (int kp = kb; kp < end; kp += kPairsPerStep) tileStep<TWO>(kp, A, lda, B);
    storeC<TWO>(sums);
    memoryBarrier();
    const __m512 s0 = _mm512_loadu_ps(scales), s1 = _mm512_loadu_ps(scales + 16);
    for (int r = 0; r < rows; ++r) {
      float* c = C + r * 32;
      _mm512_storeu_ps(c, _mm512_fmadd_ps(_mm512_load_ps(sums + r * 32), s0, _mm512_loadu_ps(c)));
      _mm512_storeu_ps(c + 16, _mm512_fmadd_ps(_mm512_load_ps(sums + r * 32 + 16), s1, _mm512_loadu_ps(c + 16)));
    }
  }
}

}  // namespace

bool built() { return true; }
int maxRows() { return kMaxRows; }

void kernelBF16(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate,
                L2Prefetch next) {
  const int main = Kp / kPairsPerStep * kPairsPerStep;
  // (panelProduct spreads the stream over the blocks only where the tiles run: a range given here is a later
  // block's share of the next slice, which the AVX-512 kernel prefetches beside its own stream, as it always did)
  if (rows < kMinRows || main == 0) return avx512Rows(rows, Kp, A, lda, B, C, accumulate, next);
  const int rows0 = std::min(rows, 16), rows1 = rows - rows0;
  memoryBarrier();
  configure(rows0, rows1);
  if (rows1 > 0) tiles<true>(main, A, lda, B, C, accumulate, next);
  else tiles<false>(main, A, lda, B, C, accumulate, next);
  // The tiles' state is left at rest between calls: a thread switch or a signal then saves 8 KiB less, and no
  // other code on this thread inherits our configuration.
  _tile_release();
  memoryBarrier();
  if (main < Kp) avx512Rows(rows, Kp - main, A + main, lda, B + size_t(main) * 32, C, true, L2Prefetch{});
}

void kernelFP8Tiles(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* pairs, const float* scales,
                    float* C, bool accumulate) {
  if (!accumulate)
    for (int r = 0; r < rows; ++r) std::fill(C + r * 32, C + r * 32 + 32, 0.0f);
  const int rows0 = std::min(rows, 16), rows1 = rows - rows0;
  memoryBarrier();
  configure(rows0, rows1);
  if (rows1 > 0) fp8Tiles<true>(rows, Kp, A, lda, pairs, scales, C);
  else fp8Tiles<false>(rows, Kp, A, lda, pairs, scales, C);
  _tile_release();
  memoryBarrier();
}

#else
// A compiler without AMX support (g++ < 11) built this file: there is no kernel, and bestIsa() never picks AMX.
bool built() { return false; }
int maxRows() { return avx512::maxRows(); }
void kernelBF16(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* B, float* C, bool accumulate,
                L2Prefetch next) {
  avx512::kernelBF16(rows, Kp, A, lda, B, C, accumulate, next);
}
void kernelFP8Tiles(int, int, const uint32_t*, size_t, const uint32_t*, const float*, float*, bool) {}  // (never picked)
#endif

}  // namespace amx
}  // namespace moe
