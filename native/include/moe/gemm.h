// Packed-panel GEMM used by both the router's gate and the experts.
//
// C[M, N] = A[M, K] · B[N, K]^T, where B is a weight matrix in Hugging Face layout ([out, in]) packed once into
// panels of kPanelWidth output rows. A panel stores, for each k, the kPanelWidth weights of that k side by side,
// so the micro-kernel loads two 512-bit vectors per k and broadcasts one activation per row.
//   fp32 panel: [K][32] floats.
//   bf16 panel: [K/2][32] uint32, each holding the bf16 pair (W[n][2kp], W[n][2kp+1]) — the vdpbf16ps layout.
// A is row-major activations with a row stride; for bf16 it holds bf16 pairs as uint32 (K even).
// The kernel writes the raw MR x 32 accumulator tile; callers apply their own epilogue.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/cpu_features.h"

namespace moe {

constexpr int kPanelWidth = 32;

enum class DType : int32_t { F32 = 0, BF16 = 1 };

// Lines to pull into L2 while a kernel runs (its own panel is prefetched separately): the next slice of
// weights, so that the first row block over a new slice does not stall on memory. `lines` 64-byte lines from
// `data`, one per k step; null/0 for none. The AMX kernel's tile loop reads it as the whole stream (data set, lines
// may be 0: the loop prefetches nothing else) or, with data null, streams its panel itself; the rows and K pairs it
// hands to the AVX-512 kernel stream as that kernel does.
struct L2Prefetch {
  const char* data = nullptr;
  int lines = 0;
};

// One rows x 32 tile over K (or K pairs): tile = A·panel, or tile += A·panel when `accumulate`.
using KernelF32 = void (*)(int rows, int K, const float* A, size_t lda, const float* panel, float* tile,
                           bool accumulate, L2Prefetch next);
using KernelBF16 = void (*)(int rows, int Kpairs, const uint32_t* A, size_t lda, const uint32_t* panel,
                            float* tile, bool accumulate, L2Prefetch next);

// h[i] = silu(gate[i]) * up[i] for one tile row: gate = tile[0..16), up = tile[16..32). Writes 16 floats,
// or 16 bf16 (8 pairs) when `bf16` is set.
using SwigluRow = void (*)(const float* tileRow, void* out, bool bf16);
// n floats to n bf16 (n/2 pairs; a zero pads an odd n).
using ToBf16 = void (*)(const float* src, int64_t n, uint32_t* dst);

struct GemmKernels {
  Isa isa;
  int maxRows;  // largest `rows` one f32 call accepts (the register-blocked M of the micro-kernel)
  KernelF32 f32;
  KernelBF16 bf16;
  SwigluRow swiglu;
  ToBf16 toBf16;
  int bf16Rows;  // largest `rows` one bf16 call accepts (maxRows, or 32 with AMX tiles)
};

// Fewest rows the AMX kernel runs on the tiles, and the K pairs of one tile step; fewer rows, and K pairs past the
// last whole step, go through the AVX-512 kernel (gemm_amx.cc).
constexpr int kAmxMinRows = 4;
constexpr int kAmxStepPairs = 16;

const GemmKernels& gemmKernels();  // chosen once from bestIsa()
const GemmKernels& gemmKernelsFor(Isa isa);

// Number of panels for N outputs, and the element counts of a packed matrix.
inline int64_t panelCount(int64_t n) { return (n + kPanelWidth - 1) / kPanelWidth; }
inline int64_t packedKPairs(int64_t k) { return (k + 1) / 2; }
inline size_t packedSizeF32(int64_t n, int64_t k) { return size_t(panelCount(n)) * size_t(k) * kPanelWidth; }
inline size_t packedSizeBF16(int64_t n, int64_t k) {
  return size_t(panelCount(n)) * size_t(packedKPairs(k)) * kPanelWidth;
}

uint16_t floatToBf16(float v);  // round to nearest even
inline float bf16ToFloat(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// Packs rows [rowBegin, rowBegin+rows) of W (row stride ldw floats, K columns) into `panels` consecutive
// panels starting at `dst`. Rows beyond `rows` inside the last panel are zero.
void packPanelsF32(const float* W, size_t ldw, int64_t rows, int64_t K, float* dst);
void packPanelsBF16(const float* W, size_t ldw, int64_t rows, int64_t K, uint32_t* dst);
// Interleaves two matrices (gate and up, each [rows, K]) into panels of 16 gate rows then 16 up rows, so one
// micro-kernel pass yields both halves of SwiGLU for the same 16 outputs.
void packGateUpF32(const float* gate, const float* up, int64_t rows, int64_t K, float* dst);
void packGateUpBF16(const float* gate, const float* up, int64_t rows, int64_t K, uint32_t* dst);

// Converts n floats (K even or padded) to bf16 pairs: dst[K/2] (padding with a zero when K is odd).
void rowToBf16Pairs(const float* src, int64_t K, uint32_t* dst);

}  // namespace moe
