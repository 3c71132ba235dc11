// Packed-panel GEMM used by both the router's gate and the experts.
//
// C[M, N] = A[M, K] · B[N, K]^T, where B is a weight matrix in Hugging Face layout ([out, in]) packed once into
// panels of kPanelWidth output rows. A panel stores, for each k, the kPanelWidth weights of that k side by side,
// so the micro-kernel loads two 512-bit vectors per k and broadcasts one activation per row.
//   fp32 panel: [K][32] floats.
//   bf16 panel: [K/2][32] uint32, each holding the bf16 pair (W[n][2kp], W[n][2kp+1]) — the vdpbf16ps layout.
//   fp8 panel: blocks of 128 k steps, each [128][32] E4M3 bytes then its 32 float scales (times 256, see
//   KernelFP8): W[n][k] is e4m3(byte) * scale of (k / 128, n). Scales ride in the weight stream, a 33rd part of a
//   block's bytes. fp8 weights take fp32 activations, or bf16 pairs (GemmKernels::fp8Tiles: AMX, AVX-512).
// A is row-major activations with a row stride; for bf16 it holds bf16 pairs as uint32 (K even).
// The kernel writes the raw MR x 32 accumulator tile; callers apply their own epilogue.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/cpu_features.h"

namespace moe {

constexpr int kPanelWidth = 32;

enum class DType : int32_t { F32 = 0, BF16 = 1, FP8 = 2 };

// The activations a weight type multiplies: bf16 pairs for bf16 weights, fp32 for fp32 and fp8 weights.
inline DType activationType(DType weights) { return weights == DType::BF16 ? DType::BF16 : DType::F32; }

// fp8 weights: one scale per output row and block of this many K elements (DeepSeek-V3's 128 x 128 blocks, a
// row's part of a block each). Kernels take fp8 K slices that start on a block.
constexpr int kFp8Block = 128;
constexpr size_t kFp8BlockBytes = size_t(kFp8Block) * kPanelWidth + kPanelWidth * 4;  // a block's bytes and scales
inline int64_t fp8Blocks(int64_t K) { return (K + kFp8Block - 1) / kFp8Block; }
// Bytes from the start of a panel to k0, a multiple of kFp8Block (so also the bytes of K = k0 steps).
inline size_t fp8Offset(int64_t k0) { return size_t(k0 / kFp8Block) * kFp8BlockBytes; }
// Bytes of the first K steps of an fp8 panel, the scales of a last short block included.
inline size_t fp8Bytes(int64_t K) {
  const int64_t rest = K % kFp8Block;
  return fp8Offset(K - rest) + (rest ? size_t(rest) * kPanelWidth + kPanelWidth * 4 : 0);
}
// Bytes of one fp8 panel over K, padded to a 64-byte line.
inline size_t fp8PanelBytes(int64_t K) { return (fp8Bytes(K) + 63) / 64 * 64; }

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
// fp32 activations times K fp8 weights of a panel, from `panel` (the start of a block) on. The stored scales are the
// weights' times 256: the kernels decode E4M3 as 2^-8 of its value.
using KernelFP8 = void (*)(int rows, int K, const float* A, size_t lda, const uint8_t* panel, float* tile,
                           bool accumulate, L2Prefetch next);

// h[i] = silu(gate[i]) * up[i] for one tile row: gate = tile[0..16), up = tile[16..32). Writes 16 floats,
// or 16 bf16 (8 pairs) when `bf16` is set.
using SwigluRow = void (*)(const float* tileRow, void* out, bool bf16);
// n floats to n bf16 (n/2 pairs; a zero pads an odd n).
using ToBf16 = void (*)(const float* src, int64_t n, uint32_t* dst);
// gpt-oss's clamped SwiGLU for one tile row (see GluEpilogue in expert_gemm.h): `bias` (32 floats: 16 gate, 16 up;
// may be null) added first, then h = (clamp(u, -limit, limit) + 1) * g * sigmoid(alpha * g), g = min(gate, limit).
// Written as SwigluRow writes. A NaN accumulator stays NaN.
using ClampedGluRow = void (*)(const float* tileRow, const float* bias, float alpha, float limit, void* out, bool bf16);

// fp8 weights on AMX tiles (or AVX-512 BF16 without AMX), for up to 32 rows of bf16 activations: `pairs` is a K
// slice of an fp8 panel widened to bf16 pairs (Fp8ToBf16), `scales` its blocks' [ceil(Kp/64)][32] scales; Kp a
// multiple of kAmxStepPairs (the widened slice and A's rows are zero past the last pair). Each block of 64 pairs
// (128 k) sums on its own, scaled into `tile` per column.
using KernelFP8Tiles = void (*)(int rows, int Kp, const uint32_t* A, size_t lda, const uint32_t* pairs,
                                const float* scales, float* tile, bool accumulate);
// Widens K steps of an fp8 panel from `panel` (the start of a block) into bf16 pairs [Kp'][32], Kp' = ceil(K/2)
// rounded up to kAmxStepPairs (zeros past K), each the E4M3 value times 2^-8 (exact), and copies the blocks' scales
// to `scales` [ceil(K/128)][32].
using Fp8ToBf16 = void (*)(const uint8_t* panel, int K, uint32_t* pairs, float* scales);

struct GemmKernels {
  Isa isa;
  int maxRows;  // largest `rows` one f32 call accepts (the register-blocked M of the micro-kernel)
  KernelF32 f32;
  KernelBF16 bf16;
  KernelFP8 fp8;  // up to maxRows rows
  SwigluRow swiglu;
  ToBf16 toBf16;
  int bf16Rows;  // largest `rows` one bf16 call accepts (maxRows, or 32 with AMX tiles)
  // Where bf16 pairs are faster (AMX; AVX-512 on AMD), else null; MOE_FP8_PAIRS=1|0 overrides (gemm.cc): jobs of
  // kFp8TileRows or more rows of an fp8 layer (layer.cc) run on bf16 pairs, their activations in bf16 (as a bf16
  // layer's), their weights the exact E4M3 values scaled per block.
  KernelFP8Tiles fp8Tiles;
  Fp8ToBf16 fp8ToBf16;
  ClampedGluRow clampedGlu;
};

// Fewest rows the AMX kernel runs on the tiles, and the K pairs of one tile step; fewer rows, and K pairs past the
// last whole step, go through the AVX-512 kernel (gemm_amx.cc).
constexpr int kAmxMinRows = 4;
constexpr int kAmxStepPairs = 16;

// Rows from which an fp8 expert runs on bf16 pairs (GemmKernels::fp8Tiles): each K slice of its panels is widened to
// bf16 first, which 8 rows repay (AMX: OLMoE T = 32, ~4 rows an expert: 27 ms from 4 rows up, 23 from 8, 23 never;
// Mixtral T = 64, ~16: 120 ms from 8, 166 from 16, 212 never; bench/RESULTS.md, step 30).
constexpr int64_t kFp8TileRows = 8;

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

// E4M3 (OCP FP8, as torch.float8_e4m3fn): the byte of a float, rounded to nearest even, magnitudes above 448
// saturating to 448 (NaN stays NaN: 0x7f).
uint8_t floatToE4m3(float v);
// Quantizes W [rows, K] (row stride ldw) to E4M3 with one scale per row and 128-column block: amax / 448 (a block
// whose scale is below FLT_MIN, zeros included, is stored as zeros with scale 0). q [rows, K], scales
// [rows, ceil(K/128)]. Weights must be finite.
void quantizeE4m3(const float* W, size_t ldw, int64_t rows, int64_t K, uint8_t* q, float* scales);
// fp8 panels from quantized rows: q [rows, K] E4M3, scales [rows, ceil(K/128)]; rows past `rows` are zero.
void packPanelsFP8(const uint8_t* q, const float* scales, int64_t rows, int64_t K, uint8_t* dst);
// Gate and up interleaved as packGateUpF32 does, from quantized rows.
void packGateUpFP8(const uint8_t* gateQ, const float* gateScales, const uint8_t* upQ, const float* upScales,
                   int64_t rows, int64_t K, uint8_t* dst);

// Converts n floats (K even or padded) to bf16 pairs: dst[K/2] (padding with a zero when K is odd).
void rowToBf16Pairs(const float* src, int64_t K, uint32_t* dst);

}  // namespace moe
