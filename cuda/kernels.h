// Host-side launchers of every CUDA kernel, grouped by stage. Each file cuda/<stage>.cu holds its kernels and
// their launchers; cuda/layer.cu strings them together. All launches go to the given stream and never
// synchronise it.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "include/moe_cuda.h"

namespace moe_cuda {

using bf16 = __nv_bfloat16;

// ---- gating.cu
// logits[T, E] = x[T, d] · W[E, d]^T (+ logitBias), fp32; also writes x as bf16 [T, dPad] (zero padded).
void launchGateLogits(const float* x, int64_t T, int d, int dPad, const float* W, const float* logitBias, int E,
                      float* logits, bf16* xb, cudaStream_t s);
// x [T, d] fp32 -> bf16 [T, dPad] (when the logits came from the caller).
void launchToBf16(const float* x, int64_t T, int d, int dPad, bf16* xb, cudaStream_t s);
// Raw complexity signals, one per token: normalised entropy of softmax(logits), or an L1/L2 row norm of x.
void launchLogitEntropy(const float* logits, int64_t T, int E, float* raw, cudaStream_t s);
void launchRowNorms(const float* x, int64_t T, int d, int order, float* raw, cudaStream_t s);
// raw [T] -> complexity [T] in [0,1] (lib/estimators.ts Calibrator). `state` [3] (count, mean, M2) is read and,
// for the running zscore, updated with this batch first. `knots` for quantile.
void launchCalibrate(const float* raw, int64_t T, int mode, double* state, const double* knots, int knotCount,
                     float* complexity, cudaStream_t s);

struct GatingOut {
  int32_t* indices;   // [T, maxK]
  float* weights;     // [T, maxK]
  int32_t* k;         // [T]; 0 marks a token with non-finite logits (align reports the first)
  float* probsNorm;   // [T, E] or null: unbiased scores / mass, for the stats
  float* probs;       // [T, E] or null: unbiased scores
  float* lse2;        // [T] or null: logsumexp(logits)^2
};
// One warp per token: scores, bias, group limit, the rule's k, weights. Ties go to the lower index.
void launchGating(const MoeCudaRouting& cfg, const float* logits, int64_t T, const float* bias,
                  const float* complexity, const GatingOut& out, cudaStream_t s);
// meanK, auxLoss, zLoss, loadBalance, assignments -> stats[5] (double), summed in a fixed order. Needs the
// counts from align.
void launchRouteStats(int64_t T, int E, const float* probsNorm, const float* lse2, const int32_t* counts,
                      double* stats, cudaStream_t s);
// Per-token sigmoid(x · gate) (Qwen2-MoE shared expert gate).
void launchSharedGate(const float* x, int64_t T, int d, const float* gate, float* scale, cudaStream_t s);

// ---- align.cu
constexpr int kSmallPairs = 4096;  // up to this many (token, slot) pairs, align runs in one block
struct AlignOut {
  int32_t* counts;        // [E] tokens per expert
  int32_t* offsets;       // [E + 1] first permuted row of each expert
  int32_t* tilesBefore;   // [E + 1] GEMM row tiles of the experts before e
  int32_t* active;        // [E] experts with rows, in index order
  int32_t* numActive;     // [1]
  int32_t* rowToken;      // [T * maxK] token of each permuted row
  float* rowWeight;       // [T * maxK] its routing weight
  int32_t* slotRow;       // [T * maxK] permuted row of each (token, slot)
  unsigned long long* counters;  // [4 + E] or null: cumulative calls, tokens, assignments, nonFinite, per expert
  int32_t* badToken;      // [1] first token with k = 0 (non-finite logits), else 0x7f7f7f7f
  int32_t* sliceCounts;   // [E * 8] scratch of the large path
};
// Stable counting sort of the (token, slot) pairs into expert-contiguous rows; `tileRows` is the GEMM's M tile.
// Everything stays on the device.
void launchAlign(int64_t T, int maxK, int E, const int32_t* indices, const float* weights, const int32_t* k,
                 int tileRows, const AlignOut& out, cudaStream_t s);

// ---- route_align.cu: gating and align fused into one single-block launch, for up to 16 tokens.
// Whether T tokens take it: few enough, and its shared memory within `sharedLimit` (sharedOptinBytes).
bool routeAlignFused(const MoeCudaRouting& cfg, int64_t T, size_t sharedLimit);
void launchRouteAlign(const MoeCudaRouting& cfg, const float* logits, int64_t T, const float* bias,
                      const float* complexity, const GatingOut& g, int tileRows, const AlignOut& out, cudaStream_t s);

// ---- grouped_gemm.cu (tensor cores, mma.sync m16n8k16 bf16 -> fp32)
constexpr int kGemmTileM = 128;       // rows of the large tiles
constexpr int kGemmSmallTileM = 32;   // rows of the small tile
constexpr int kGemmTileN = 128;       // padding unit of N (d, and 2f)
constexpr int kGemmTileK = 32;
// 32 x 128, 128 x 128, 128 x 256 (needs N % 256 == 0), 128 x 128 with K steps of 64 (needs K % 64 == 0), 32 x 64,
// 32 x 64 with K steps of 64 and 6 stages (needs K % 64 == 0), and the sm_90a wgmma 128 x 256 x 64 (128 x 128
// where N % 256 != 0; needs hopperGemmAvailable()); a tile whose condition fails runs as the one of its rows
// without it (Large or Deep, Narrow).
enum class GemmTile { Small, Large, Wide, Deep, Narrow, Stream, Hopper };
constexpr int kGemmTiles = 7;
// True when the current device is sm_90 and this plugin holds sm_90a code for it (a tiny probe kernel: a build
// with only compute_90 PTX cannot run wgmma). Synchronises: call it at set-up, never while a stream captures.
bool hopperGemmAvailable();
inline int gemmTileRows(GemmTile t) {
  return t == GemmTile::Small || t == GemmTile::Narrow || t == GemmTile::Stream ? kGemmSmallTileM : kGemmTileM;
}
struct GroupedSchedule {
  const int32_t* offsets;      // [E + 1]
  const int32_t* tilesBefore;  // [E + 1], counted in tiles of gemmTileRows(tile)
  int E;
  int maxTiles;                // upper bound of sum over experts of ceil(rows / tile): sizes the grid
  GemmTile tile;
};
// hidden[r, :f] = silu(x_r · W1ᵀ) ⊙ (x_r · W3ᵀ) for every permuted row r, with x_r = xb[rowToken[r]] (or row r
// when rowToken is null). gateUp holds per expert [2 fPad, dPad] bf16, gate and up rows interleaved by 8.
void launchGateUpGemm(const bf16* xb, const int32_t* rowToken, int dPad, const bf16* gateUp, int fPad,
                      const GroupedSchedule& sched, bf16* hidden, cudaStream_t s);
// out[r, :] = scale[r] · hidden[r] · W2ᵀ (scale null: 1). down holds per expert [dPad, fPad] bf16.
void launchDownGemm(const bf16* hidden, int fPad, const bf16* down, int dPad, const GroupedSchedule& sched,
                    const float* scale, float* out, cudaStream_t s);

// ---- expert_gemv.cu (decode: every expert has at most kGemvMaxRows rows; pure weight streaming)
constexpr int kGemvMaxRows = 8;
// Forwards of at most this many tokens take the GEMV kernels; above, the grouped GEMM's streaming tile. On an H200
// (bench/RESULTS.md, run 9) the 32-row tile streams the weights at 0.79-0.80 of copy at T = 8 where the GEMV kernels
// reach 0.61-0.65 (each warp re-reads the expert's activation rows per output), and the GEMV kernels lead up to
// T = 4 (0.77-0.90 against 0.69-0.79). MOE_CUDA_GEMV_MAX_TOKENS=0..8 overrides it (A/B runs).
constexpr int kGemvDefaultTokens = 4;
struct GemvSchedule {
  const int32_t* offsets;    // [E + 1]
  const int32_t* active;     // [E] experts with rows
  const int32_t* numActive;  // [1]
  int slots;                 // grid bound: at most this many active experts
  int maxRows;               // at most this many rows per expert (<= kGemvMaxRows)
  int multiprocessors;       // of the device, to size the grid to about one wave
};
// hidden = SwiGLU(x W1ᵀ, x W3ᵀ) then out = scale · hidden W2ᵀ for every active expert's rows (two launches).
void launchExpertGemvs(const bf16* xb, const int32_t* rowToken, int dPad, const bf16* gateUp, const bf16* down,
                       int fPad, const GemvSchedule& g, const float* scale, bf16* hidden, float* out, cudaStream_t s);

// ---- combine.cu
// y[t] = sum over slots j < k[t] of out[slotRow[t, j]] (in slot order) + shared[t] (if any). Tokens with k = 0
// (non-finite logits) get NaN rows.
void launchCombine(int64_t T, int d, int dPad, int maxK, const int32_t* k, const int32_t* slotRow,
                   const float* out, const float* shared, float* y, cudaStream_t s);

// ---- pack.cu
// fp32 [rows, cols] on the device -> bf16 [rowsPad, colsPad], zero padded.
void launchPackBf16(const float* src, int rows, int cols, bf16* dst, int rowsPad, int colsPad, cudaStream_t s);
// Gate and up ([f, d] each, fp32 on the device) -> [2 fPad, dPad] with rows interleaved by 8.
void launchPackGateUp(const float* w1, const float* w3, int f, int d, bf16* dst, int fPad, int dPad,
                      cudaStream_t s);

}  // namespace moe_cuda

namespace moe_cuda {
// ---- combine.cu: the schedule of a dense pass over all T tokens (the shared expert).
void launchIdentitySchedule(int64_t T, int tileRows, int32_t* offsets, int32_t* tilesBefore, int32_t* active,
                            int32_t* numActive, cudaStream_t s);
size_t gatingSharedBytes(const MoeCudaRouting& cfg);
}  // namespace moe_cuda
