// Grouped expert GEMM on tensor cores: C = A · Bᵀ per expert, A = the expert's permuted rows (bf16), B = its
// weight matrix [N, K] (bf16, K contiguous), fp32 accumulation with mma.sync m16n8k16 (sm_80 and later).
//
// Block tile 128 x 128 x 32, 8 warps as 2 (M) x 4 (N), each warp 64 x 32; a 4-stage cp.async pipeline into
// XOR-swizzled shared memory read with ldmatrix. The gate/up pass has gate and up rows interleaved by 8, so
// each thread holds matching gate and up accumulators and applies SwiGLU in registers (epilogue writes bf16
// hidden); the down pass scales each row by its routing weight (epilogue writes fp32).
//
// Scheduling is device-side: block b finds its expert by a binary search of the row-tile prefix, then walks
// that expert's tiles N-major, M-minor, so the blocks running together share one weight tile in L2 and the
// expert's activations stay in L2 across its N sweep. Blocks past the last tile exit.
#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

namespace {

constexpr int BM = kGemmTileM, BN = kGemmTileN, BK = kGemmTileK;
constexpr int kStages = 4;
constexpr int kThreads = 256;
constexpr size_t kSmemBytes = size_t(kStages) * (BM + BN) * BK * sizeof(bf16);  // 64 KiB

struct GemmArgs {
  const bf16* A;
  const int32_t* rowToken;  // null: A row = permuted row
  int lda;
  const bf16* B;
  int64_t strideB;  // elements per expert
  int N, K;
  GroupedSchedule sched;
  bf16* H;  // SwiGLU epilogue: hidden [rows, ldh]
  int ldh;
  float* O;  // scaled epilogue: out [rows, ldo]
  int ldo;
  const float* scale;
};

__device__ __forceinline__ uint32_t smemAddress(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cpAsync16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrixX4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Byte offset of 16-byte chunk `chunk` of tile row `row` (rows of BK = 32 bf16 = 4 chunks): the chunk index is
// XORed with (row / 2) % 4, so the 8 rows an ldmatrix phase reads hit 8 different bank groups.
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  return uint32_t(row * BK * 2 + ((chunk ^ ((row >> 1) & 3)) << 4));
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

template <bool kSwiGLU>
__global__ void __launch_bounds__(kThreads, 2) groupedGemmKernel(GemmArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const GroupedSchedule& s = a.sched;
  const int nTiles = a.N / BN;
  const int totalTiles = s.tilesBefore[s.E];
  const int b = blockIdx.x;
  if (b >= totalTiles * nTiles) return;
  int lo = 0, hi = s.E - 1;  // the last expert whose first block is at or before b
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (s.tilesBefore[mid] * nTiles <= b) lo = mid;
    else hi = mid - 1;
  }
  const int e = lo;
  const int mTiles = s.tilesBefore[e + 1] - s.tilesBefore[e];
  const int local = b - s.tilesBefore[e] * nTiles;
  const int nTile = local / mTiles, mTile = local % mTiles;
  const int row0 = s.offsets[e] + mTile * BM, rowEnd = s.offsets[e + 1];
  const bf16* B = a.B + size_t(e) * a.strideB + size_t(nTile) * BN * a.K;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t sA = smemAddress(smem), sB = sA + kStages * BM * BK * 2;

  // Each thread copies two 16-byte chunks of A and two of B per stage: rows tid/4 and tid/4 + 64, chunk tid%4.
  const int loadRow = tid / 4, loadChunk = tid % 4;
  const bf16* aSrc[2];
  const bf16* bSrc[2];
  uint32_t aDst[2], bDst[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = loadRow + 64 * i;
    const int row = min(row0 + r, rowEnd - 1);  // rows past the expert's end are read (valid) and never stored
    const int src = a.rowToken ? a.rowToken[row] : row;
    aSrc[i] = a.A + size_t(src) * a.lda + loadChunk * 8;
    bSrc[i] = B + size_t(r) * a.K + loadChunk * 8;
    aDst[i] = swizzled(r, loadChunk);
    bDst[i] = swizzled(r, loadChunk);
  }
  const int kTiles = a.K / BK;
  auto load = [&](int stage, int kt) {
    const uint32_t aStage = sA + stage * BM * BK * 2, bStage = sB + stage * BN * BK * 2;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      cpAsync16(aStage + aDst[i], aSrc[i] + kt * BK);
      cpAsync16(bStage + bDst[i], bSrc[i] + kt * BK);
    }
  };

  const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
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
    for (int kk = 0; kk < 2; ++kk) {
      uint32_t af[4][4], bfr[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const int row = wm + mi * 16 + matRow + (mat & 1) * 8;
        ldmatrixX4(aStage + swizzled(row, 2 * kk + (mat >> 1)), af[mi][0], af[mi][1], af[mi][2], af[mi][3]);
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        const int row = wn + nj * 16 + matRow + (mat >> 1) * 8;
        ldmatrixX4(bStage + swizzled(row, 2 * kk + (mat & 1)), bfr[2 * nj][0], bfr[2 * nj][1], bfr[2 * nj + 1][0],
                   bfr[2 * nj + 1][1]);
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma16816(acc[mi][ni], af[mi], bfr[ni]);
    }
  }
  cpAsyncWait<0>();

  const int quadRow = lane / 4, quadCol = (lane % 4) * 2;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + wm + mi * 16 + quadRow + half * 8;
      if (row >= rowEnd) continue;
      if constexpr (kSwiGLU) {
        const int group0 = (nTile * BN + wn) / 16;  // 16 packed rows = 8 gate + 8 up of the same 8 outputs
#pragma unroll
        for (int p = 0; p < 2; ++p) {
          const float* g = acc[mi][2 * p] + half * 2;
          const float* u = acc[mi][2 * p + 1] + half * 2;
          const int f = (group0 + p) * 8 + quadCol;
          *reinterpret_cast<__nv_bfloat162*>(a.H + size_t(row) * a.ldh + f) =
              __floats2bfloat162_rn(silu(g[0]) * u[0], silu(g[1]) * u[1]);
        }
      } else {
        const float sc = a.scale ? a.scale[row] : 1.0f;
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const int n = nTile * BN + wn + ni * 8 + quadCol;
          *reinterpret_cast<float2*>(a.O + size_t(row) * a.ldo + n) =
              make_float2(acc[mi][ni][half * 2] * sc, acc[mi][ni][half * 2 + 1] * sc);
        }
      }
    }
  }
}

template <bool kSwiGLU>
void launch(const GemmArgs& args, cudaStream_t s) {
  static bool configured = false;  // the attribute is per function and device; setting it twice is harmless
  if (!configured) {
    check(cudaFuncSetAttribute(groupedGemmKernel<kSwiGLU>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(kSmemBytes)),
          "grouped GEMM shared memory");
    configured = true;
  }
  const int64_t blocks = int64_t(args.sched.maxTiles) * (args.N / BN);
  if (blocks <= 0) return;
  groupedGemmKernel<kSwiGLU><<<unsigned(blocks), kThreads, kSmemBytes, s>>>(args);
  checkLaunch(kSwiGLU ? "groupedGemmKernel<gate/up>" : "groupedGemmKernel<down>");
}

}  // namespace

void launchGateUpGemm(const bf16* xb, const int32_t* rowToken, int dPad, const bf16* gateUp, int fPad,
                      const GroupedSchedule& sched, bf16* hidden, cudaStream_t s) {
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
  launch<true>(a, s);
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
  launch<false>(a, s);
}

}  // namespace moe_cuda
