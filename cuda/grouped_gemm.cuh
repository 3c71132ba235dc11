// Pieces shared by the grouped GEMM kernels (grouped_gemm.cu: mma.sync; grouped_gemm_sm90.cu: wgmma): the
// arguments, the device-side tile schedule, and the cp.async / swizzle helpers.
#pragma once
#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

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

// Block b's expert, N tile, and first and end rows, from the row-tile prefix (see grouped_gemm.cu). False for a
// block past the last tile.
struct BlockTile {
  int expert, nTile, row0, rowEnd;
};
__device__ __forceinline__ bool blockTile(const GroupedSchedule& s, int nTiles, int tileRows, BlockTile& t) {
  const int b = blockIdx.x;
  if (b >= s.tilesBefore[s.E] * nTiles) return false;
  int lo = 0, hi = s.E - 1;  // the last expert whose first block is at or before b
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (s.tilesBefore[mid] * nTiles <= b) lo = mid;
    else hi = mid - 1;
  }
  const int mTiles = s.tilesBefore[lo + 1] - s.tilesBefore[lo];
  const int local = b - s.tilesBefore[lo] * nTiles;
  t.expert = lo;
  t.nTile = local / mTiles;
  t.row0 = s.offsets[lo] + (local % mTiles) * tileRows;
  t.rowEnd = s.offsets[lo + 1];
  return true;
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// sm_90a: the wgmma tile (grouped_gemm_sm90.cu), for layers whose device passed hopperGemmAvailable (kernels.h).
// False when the shape does not fit its 128 x 128 x 64 tile.
bool launchHopperGemm(const GemmArgs& args, bool swiglu, cudaStream_t s);

}  // namespace moe_cuda
