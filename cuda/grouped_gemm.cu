// Grouped expert GEMM on tensor cores: C = A · Bᵀ per expert, A = the expert's permuted rows (bf16), B = its
// weight matrix [N, K] (bf16, K contiguous), fp32 accumulation with mma.sync m16n8k16 (sm_80 and later).
//
// Block tiles, all 8 warps with a cp.async pipeline into XOR-swizzled shared memory read with ldmatrix:
// 128 x 128 x 32 (warps 2 x 4 of 64 x 32, 4 stages), the same with K steps of 64 (3 stages), 128 x 256 (warps
// 64 x 64) and 32 x 128 for experts with few rows, where the pass streams weights and a 128-row tile would do
// 4-16x the useful work per weight byte. The gate/up pass has gate and up rows interleaved by 8, so
// each thread holds matching gate and up accumulators and applies SwiGLU in registers (epilogue writes bf16
// hidden); the down pass scales each row by its routing weight (epilogue writes fp32).
//
// Scheduling is device-side: block b finds its expert by a binary search of the row-tile prefix, then walks
// that expert's tiles N-major, M-minor, so the blocks running together share one weight tile in L2 and the
// expert's activations stay in L2 across its N sweep. Blocks past the last tile exit.
#include "common.cuh"
#include "grouped_gemm.cuh"
#include "kernels.h"

namespace moe_cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps

// Byte offset of 16-byte chunk `chunk` of tile row `row`. Rows of BK = 32 bf16 (4 chunks) XOR the chunk with
// (row / 2) % 4, rows of 64 (8 chunks) with row % 8: either way the 8 rows an ldmatrix phase reads, and the
// chunks a cp.async phase writes, hit 8 different bank groups.
template <int BK>
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  static_assert(BK == 32 || BK == 64, "tile K");
  const int x = BK == 32 ? (row >> 1) & 3 : row & 7;
  return uint32_t(row * BK * 2 + ((chunk ^ x) << 4));
}

// The block tile is (WM * 16 * MI) x (WN * 8 * NI) x BK: WM x WN warps, each holding MI x NI m16n8
// accumulators, with a STAGES-deep cp.async pipeline.
template <int WM_, int WN_, int MI_, int NI_, int BK_ = 32, int STAGES_ = 4>
struct Tile {
  static_assert(WM_ * WN_ == kThreads / 32, "8 warps");
  static_assert(NI_ % 2 == 0, "B fragments are loaded in pairs, and SwiGLU pairs gate with up");
  static constexpr int WN = WN_, MI = MI_, NI = NI_, BK = BK_, STAGES = STAGES_;
  static constexpr int M = WM_ * 16 * MI_, N = WN_ * 8 * NI_;
  static constexpr int rowChunks = BK_ / 8;                                 // 16-byte chunks per tile row
  static constexpr int aChunks = M * rowChunks, bChunks = N * rowChunks;  // per stage
  static constexpr size_t smemBytes = size_t(STAGES_) * (M + N) * BK_ * sizeof(bf16);
  static constexpr int minBlocks = MI_ * NI_ >= 32 ? 1 : 2;
};

template <typename TL, bool kSwiGLU>
__global__ void __launch_bounds__(kThreads, TL::minBlocks) groupedGemmKernel(GemmArgs a) {
  constexpr int BM = TL::M, BN = TL::N, WN = TL::WN, MI = TL::MI, NI = TL::NI, BK = TL::BK, kStages = TL::STAGES;
  constexpr int RC = TL::rowChunks;
  extern __shared__ __align__(128) unsigned char smem[];
  BlockTile tile;
  if (!blockTile(a.sched, a.N / BN, BM, tile)) return;
  const int e = tile.expert, nTile = tile.nTile, row0 = tile.row0, rowEnd = tile.rowEnd;
  const bf16* B = a.B + size_t(e) * a.strideB + size_t(nTile) * BN * a.K;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t sA = smemAddress(smem), sB = sA + kStages * BM * BK * 2;

  // Copy roles: chunk c of a stage is tile row c / RC, 16-byte chunk c % RC; thread tid takes c = tid + 256 i.
  constexpr int aPer = (TL::aChunks + kThreads - 1) / kThreads, bPer = TL::bChunks / kThreads;
  static_assert(TL::bChunks % kThreads == 0, "B chunks spread evenly");
  const bf16* aSrc[aPer];
  const bf16* bSrc[bPer];
  uint32_t aDst[aPer], bDst[bPer];
#pragma unroll
  for (int i = 0; i < aPer; ++i) {
    const int c = min(tid + kThreads * i, TL::aChunks - 1), r = c / RC;
    const int row = min(row0 + r, rowEnd - 1);  // rows past the expert's end are read (valid) and never stored
    const int src = a.rowToken ? a.rowToken[row] : row;
    aSrc[i] = a.A + size_t(src) * a.lda + (c % RC) * 8;
    aDst[i] = swizzled<BK>(r, c % RC);
  }
#pragma unroll
  for (int i = 0; i < bPer; ++i) {
    const int c = tid + kThreads * i, r = c / RC;
    bSrc[i] = B + size_t(r) * a.K + (c % RC) * 8;
    bDst[i] = swizzled<BK>(r, c % RC);
  }
  const bool aLoader = TL::aChunks % kThreads == 0 || tid < TL::aChunks;  // small tiles: fewer A chunks than threads
  const int kTiles = a.K / BK;  // K is a multiple of 32 (padding); Deep tiles are only launched when of 64
  auto load = [&](int stage, int kt) {
    const uint32_t aStage = sA + stage * BM * BK * 2, bStage = sB + stage * BN * BK * 2;
#pragma unroll
    for (int i = 0; i < aPer; ++i)
      if (i < aPer - 1 || aLoader) cpAsync16(aStage + aDst[i], aSrc[i] + kt * BK);
#pragma unroll
    for (int i = 0; i < bPer; ++i) cpAsync16(bStage + bDst[i], bSrc[i] + kt * BK);
  };

  const int wm = (warp / WN) * 16 * MI, wn = (warp % WN) * 8 * NI;
  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0;

#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < kTiles) load(st, st);
    cpAsyncCommit();
  }
  // ldmatrix lane roles: matrix j = lane / 8 supplies row lane % 8.
  const int mat = lane / 8, matRow = lane % 8;
  for (int kt = 0; kt < kTiles; ++kt) {
    cpAsyncWait<kStages - 2>();
    __syncthreads();
    const int next = kt + kStages - 1;
    if (next < kTiles) load(next % kStages, next);
    cpAsyncCommit();
    const int stage = kt % kStages;
    const uint32_t aStage = sA + stage * BM * BK * 2, bStage = sB + stage * BN * BK * 2;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const int row = wm + mi * 16 + matRow + (mat & 1) * 8;
        ldmatrixX4(aStage + swizzled<BK>(row, 2 * kk + (mat >> 1)), af[mi][0], af[mi][1], af[mi][2], af[mi][3]);
      }
#pragma unroll
      for (int nj = 0; nj < NI / 2; ++nj) {
        const int row = wn + nj * 16 + matRow + (mat >> 1) * 8;
        ldmatrixX4(bStage + swizzled<BK>(row, 2 * kk + (mat & 1)), bfr[2 * nj][0], bfr[2 * nj][1], bfr[2 * nj + 1][0],
                   bfr[2 * nj + 1][1]);
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma16816(acc[mi][ni], af[mi], bfr[ni]);
    }
  }
  cpAsyncWait<0>();

  const int quadRow = lane / 4, quadCol = (lane % 4) * 2;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + wm + mi * 16 + quadRow + half * 8;
      if (row >= rowEnd) continue;
      if constexpr (kSwiGLU) {
        const int group0 = (nTile * BN + wn) / 16;  // 16 packed rows = 8 gate + 8 up of the same 8 outputs
#pragma unroll
        for (int p = 0; p < NI / 2; ++p) {
          const float* g = acc[mi][2 * p] + half * 2;
          const float* u = acc[mi][2 * p + 1] + half * 2;
          const int f = (group0 + p) * 8 + quadCol;
          *reinterpret_cast<__nv_bfloat162*>(a.H + size_t(row) * a.ldh + f) =
              __floats2bfloat162_rn(silu(g[0]) * u[0], silu(g[1]) * u[1]);
        }
      } else {
        const float sc = a.scale ? a.scale[row] : 1.0f;
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
          const int n = nTile * BN + wn + ni * 8 + quadCol;
          *reinterpret_cast<float2*>(a.O + size_t(row) * a.ldo + n) =
              make_float2(acc[mi][ni][half * 2] * sc, acc[mi][ni][half * 2 + 1] * sc);
        }
      }
    }
  }
}

template <typename TL, bool kSwiGLU>
void launchTile(const GemmArgs& args, cudaStream_t s) {
  static SharedAllowance allowance;
  allowance.ensure(reinterpret_cast<const void*>(groupedGemmKernel<TL, kSwiGLU>), TL::smemBytes,
                   "grouped GEMM shared memory");
  const int64_t blocks = int64_t(args.sched.maxTiles) * (args.N / TL::N);
  if (blocks <= 0) return;
  groupedGemmKernel<TL, kSwiGLU><<<unsigned(blocks), kThreads, TL::smemBytes, s>>>(args);
  checkLaunch(kSwiGLU ? "groupedGemmKernel<gate/up>" : "groupedGemmKernel<down>");
}

using SmallTile = Tile<1, 8, 2, 2>;         // 32 x 128: few rows per expert (weight streaming on tensor cores)
using LargeTile = Tile<2, 4, 4, 4>;         // 128 x 128
using WideTile = Tile<2, 4, 4, 8>;          // 128 x 256, warp tiles 64 x 64
using DeepTile = Tile<2, 4, 4, 4, 64, 3>;   // 128 x 128 with K steps of 64 (half the barriers), 3 stages
using NarrowTile = Tile<2, 4, 1, 2>;        // 32 x 64: few rows, twice the blocks of Small for short N passes
using StreamTile = Tile<2, 4, 1, 2, 64, 6>;  // 32 x 64 x 64, 6 stages: ~5x the weight bytes in flight of Narrow

template <bool kSwiGLU>
void launch(const GemmArgs& args, GemmTile tile, cudaStream_t s) {
  if (tile == GemmTile::Small) return launchTile<SmallTile, kSwiGLU>(args, s);
  if (tile == GemmTile::Narrow) return launchTile<NarrowTile, kSwiGLU>(args, s);
  if (tile == GemmTile::Stream && args.K % StreamTile::BK == 0) return launchTile<StreamTile, kSwiGLU>(args, s);
  if (tile == GemmTile::Stream) return launchTile<NarrowTile, kSwiGLU>(args, s);
  if (tile == GemmTile::Wide && args.N % WideTile::N == 0) return launchTile<WideTile, kSwiGLU>(args, s);
  if (tile == GemmTile::Hopper && launchHopperGemm(args, kSwiGLU, s)) return;
  if ((tile == GemmTile::Deep || tile == GemmTile::Hopper) && args.K % DeepTile::BK == 0)
    return launchTile<DeepTile, kSwiGLU>(args, s);
  launchTile<LargeTile, kSwiGLU>(args, s);
}

}  // namespace

void launchGateUpGemm(const bf16* xb, const int32_t* rowToken, int dPad, const bf16* gateUp, int fPad,
                      const GroupedSchedule& sched, bf16* hidden, cudaStream_t s) {
  static_assert(SmallTile::M == kGemmSmallTileM && NarrowTile::M == kGemmSmallTileM &&
                    StreamTile::M == kGemmSmallTileM && LargeTile::M == kGemmTileM &&
                    WideTile::M == kGemmTileM && DeepTile::M == kGemmTileM,
                "tile rows of the align prefix");
  GemmArgs a{};
  a.A = xb;
  a.rowToken = rowToken;
  a.lda = dPad;
  a.B = gateUp;
  a.strideB = int64_t(2) * fPad * dPad;
  a.N = 2 * fPad;
  a.K = dPad;
  a.sched = sched;
  a.H = hidden;
  a.ldh = fPad;
  launch<true>(a, sched.tile, s);
}

void launchDownGemm(const bf16* hidden, int fPad, const bf16* down, int dPad, const GroupedSchedule& sched,
                    const float* scale, float* out, cudaStream_t s) {
  GemmArgs a{};
  a.A = hidden;
  a.lda = fPad;
  a.B = down;
  a.strideB = int64_t(dPad) * fPad;
  a.N = dPad;
  a.K = fPad;
  a.sched = sched;
  a.O = out;
  a.ldo = dPad;
  a.scale = scale;
  launch<false>(a, sched.tile, s);
}

}  // namespace moe_cuda
