// The sm_90a grouped GEMM: wgmma (warpgroup MMA, Hopper) reading both operands from shared memory through
// matrix descriptors, with the same schedule, layouts and epilogues as grouped_gemm.cu. The large-batch tile on
// sm_90 GPUs when the plugin holds sm_90a code (CudaLayer::tileFor; bench/RESULTS.md, CUDA H200 runs).
//
// Block tile 128 x 256 x 64 (128 x 128 where N % 256 != 0), two warpgroups (rows 0-63 and 64-127), each issuing
// m64n256k16 (m64n128k16) MMAs. Tiles are
// staged by cp.async into 128-byte-swizzled shared memory (16-byte chunk c of row r at c ^ (r % 8), the layout
// the descriptors' SW128 mode reads; stage bases 1024-byte aligned). Pipeline variants (HopperPipe): how many
// stages, how many wgmma groups stay in flight while the next K step is issued, and blocks per SM.
#include "common.cuh"
#include "grouped_gemm.cuh"
#include "kernels.h"

#include <atomic>
#include <cstdlib>

namespace moe_cuda {

namespace {

constexpr int HM = 128, HN = 128, HK = 64, kHopperThreads = 256;
constexpr int kHopperDefaultVariant = 4;  // launchVariant

// kStages buffers; kInFlight wgmma groups left running while the next step is issued (0 or 1); loads run
// kStages - 1 - kInFlight steps ahead; kBlocks blocks per SM (2 needs <= 3 stages: 2 x 97 KiB of shared memory);
// kN columns per block (128, or 256: each warpgroup issues m64n256k16, and a stage holds 48 KiB).
template <int kStagesT, int kInFlightT, int kBlocksT, int kNT = HN>
struct HopperPipe {
  static constexpr int kStages = kStagesT, kInFlight = kInFlightT, kBlocks = kBlocksT, kN = kNT;
  static constexpr int kAhead = kStages - 1 - kInFlight;
  static constexpr int kStageBytes = (HM + kN) * HK * 2;  // A then B
  static constexpr size_t kSmem = size_t(kStages) * kStageBytes + 1024;  // + alignment slack
  static_assert(kAhead >= 1 && kInFlight >= 0 && kInFlight <= 1, "pipeline shape");
  static_assert(kN == 128 || kN == 256, "wgmma N");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// K-major operand, 128-byte swizzle: start address and stride (8 rows x 128 B) in 16-byte units, layout type 1.
__device__ __forceinline__ uint64_t descriptor(uint32_t smemByteAddress) {
  return uint64_t((smemByteAddress >> 4) & 0x3FFF) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

// The accumulator operands of a wgmma: "+f"(d[i]) for 8, then 64, consecutive registers.
#define MOE_WGMMA_ACC8(i)                                                                                  \
  "+f"(d[(i)]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
      "+f"(d[(i) + 6]), "+f"(d[(i) + 7])
#define MOE_WGMMA_ACC64(i)                                                                                 \
  MOE_WGMMA_ACC8(i), MOE_WGMMA_ACC8((i) + 8), MOE_WGMMA_ACC8((i) + 16), MOE_WGMMA_ACC8((i) + 24),           \
      MOE_WGMMA_ACC8((i) + 32), MOE_WGMMA_ACC8((i) + 40), MOE_WGMMA_ACC8((i) + 48), MOE_WGMMA_ACC8((i) + 56)

__device__ __forceinline__ void wgmma128(float* d, uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : MOE_WGMMA_ACC64(0)
      : "l"(a), "l"(b), "r"(1));
}

__device__ __forceinline__ void wgmma256(float* d, uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
      : MOE_WGMMA_ACC64(0), MOE_WGMMA_ACC64(64)
      : "l"(a), "l"(b), "r"(1));
}

template <int kN>
__device__ __forceinline__ void wgmma(float* d, uint64_t a, uint64_t b) {
  if constexpr (kN == 256) wgmma256(d, a, b);
  else wgmma128(d, a, b);
}
#undef MOE_WGMMA_ACC64
#undef MOE_WGMMA_ACC8
#endif

template <int N>
__device__ __forceinline__ void wgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

template <typename Pipe, bool kSwiGLU>
__global__ void __launch_bounds__(kHopperThreads, Pipe::kBlocks) hopperGemmKernel(GemmArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smemRaw[];
  constexpr int kN = Pipe::kN, kBChunks = kN * 8 / kHopperThreads, kStageBytes = Pipe::kStageBytes;
  BlockTile tile;
  if (!blockTile(a.sched, a.N / kN, HM, tile)) return;
  const int row0 = tile.row0, rowEnd = tile.rowEnd, nTile = tile.nTile;
  const bf16* B = a.B + size_t(tile.expert) * a.strideB + size_t(nTile) * kN * a.K;
  const uint32_t base = (smemAddress(smemRaw) + 1023) & ~1023u;
  const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, warpInGroup = (tid % 128) / 32;

  // Copy roles: 1024 16-byte chunks of A and kN * 8 of B per stage; thread tid takes chunks tid + 256 i (4 of A,
  // 4 or 8 of B). Chunk c is row c / 8, column chunk c % 8; chunk c + 1024 lands 128 rows (16 KiB) after chunk c.
  const bf16* aSrc[4];
  const bf16* bSrc[kBChunks];
  uint32_t dst[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = tid + kHopperThreads * i, r = c / 8, chunk = c % 8;
    const int row = min(row0 + r, rowEnd - 1);  // rows past the expert's end are read (valid), never stored
    aSrc[i] = a.A + size_t(a.rowToken ? a.rowToken[row] : row) * a.lda + chunk * 8;
    dst[i] = uint32_t(r * 128 + ((chunk ^ (r & 7)) << 4));
  }
#pragma unroll
  for (int i = 0; i < kBChunks; ++i) {
    const int c = tid + kHopperThreads * i;
    bSrc[i] = B + size_t(c / 8) * a.K + (c % 8) * 8;
  }
  const int kTiles = a.K / HK;
  auto load = [&](int stage, int kt) {
    const uint32_t sA = base + stage * kStageBytes, sB = sA + HM * HK * 2;
#pragma unroll
    for (int i = 0; i < 4; ++i) cpAsync16(sA + dst[i], aSrc[i] + kt * HK);
#pragma unroll
    for (int i = 0; i < kBChunks; ++i) cpAsync16(sB + dst[i % 4] + (i / 4) * 16384, bSrc[i] + kt * HK);
  };

  constexpr int S = Pipe::kStages, P = Pipe::kAhead;
  float d[kN / 2];
#pragma unroll
  for (int i = 0; i < kN / 2; ++i) d[i] = 0;
#pragma unroll
  for (int st = 0; st < P; ++st) {
    if (st < kTiles) load(st, st);
    cpAsyncCommit();
  }
  for (int kt = 0; kt < kTiles; ++kt) {
    cpAsyncWait<P - 1>();  // step kt has landed (P + kt groups committed)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // generic-proxy writes -> wgmma reads
    __syncthreads();  // every thread's chunks of step kt, and both warpgroups past step kt - 1 - kInFlight
    const int next = kt + P;
    // Its stage last held step kt - 1 - kInFlight, whose MMAs both warpgroups have waited for.
    if (next < kTiles) load(next % S, next);
    cpAsyncCommit();
    const uint32_t sA = base + (kt % S) * kStageBytes + wg * 64 * 128, sB = base + (kt % S) * kStageBytes + HM * HK * 2;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int k16 = 0; k16 < HK / 16; ++k16) wgmma<kN>(d, descriptor(sA + k16 * 32), descriptor(sB + k16 * 32));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    wgmmaWait<Pipe::kInFlight>();
  }
  wgmmaWait<0>();
  cpAsyncWait<0>();

  // Accumulators: warp w of the warpgroup holds rows 16w + lane/4 (+8); column group j (8 wide) in d[4j..4j+3],
  // as mma.sync's m16n8 fragments. Even groups are gate rows, odd ones the matching up rows.
  const int quadCol = (lane % 4) * 2;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + wg * 64 + warpInGroup * 16 + lane / 4 + half * 8;
    if (row >= rowEnd) continue;
    if constexpr (kSwiGLU) {
#pragma unroll
      for (int p = 0; p < kN / 16; ++p) {
        const float* g = d + (2 * p) * 4 + half * 2;
        const float* u = d + (2 * p + 1) * 4 + half * 2;
        const int f = (nTile * kN / 16 + p) * 8 + quadCol;
        *reinterpret_cast<__nv_bfloat162*>(a.H + size_t(row) * a.ldh + f) =
            __floats2bfloat162_rn(silu(g[0]) * u[0], silu(g[1]) * u[1]);
      }
    } else {
      const float sc = a.scale ? a.scale[row] : 1.0f;
#pragma unroll
      for (int j = 0; j < kN / 8; ++j) {
        const int n = nTile * kN + j * 8 + quadCol;
        *reinterpret_cast<float2*>(a.O + size_t(row) * a.ldo + n) =
            make_float2(d[4 * j + half * 2] * sc, d[4 * j + half * 2 + 1] * sc);
      }
    }
  }
#else
  __trap();  // never launched: CudaLayer picks this tile only where hopperGemmAvailable()
#endif
}

template <typename Pipe, bool kSwiGLU>
void launchPipe(const GemmArgs& args, cudaStream_t s) {
  static SharedAllowance allowance;
  allowance.ensure(reinterpret_cast<const void*>(hopperGemmKernel<Pipe, kSwiGLU>), Pipe::kSmem,
                   "wgmma GEMM shared memory");
  const int64_t blocks = int64_t(args.sched.maxTiles) * (args.N / Pipe::kN);
  if (blocks <= 0) return;
  hopperGemmKernel<Pipe, kSwiGLU><<<unsigned(blocks), kHopperThreads, Pipe::kSmem, s>>>(args);
  checkLaunch(kSwiGLU ? "hopperGemmKernel<gate/up>" : "hopperGemmKernel<down>");
}

template <bool kSwiGLU>
void launchVariant(const GemmArgs& args, int variant, cudaStream_t s) {
  // TFLOP/s on H200, Mixtral / OLMoE shapes at T = 4096, 20 iterations (bench/RESULTS.md, CUDA H200 runs): 4 gave
  // 521 / 475, 2 gave 463-465 / 403-408, 1 458 / 370, 5 450 / 413; 0 and 3 lost at 3 iterations already.
  if (variant >= 4 && args.N % 256 != 0) variant = 2;  // the 128 x 256 blocks need N % 256 == 0
  switch (variant) {
    case 0: return launchPipe<HopperPipe<4, 0, 1>, kSwiGLU>(args, s);
    case 1: return launchPipe<HopperPipe<5, 1, 1>, kSwiGLU>(args, s);
    case 2: return launchPipe<HopperPipe<3, 0, 2>, kSwiGLU>(args, s);
    case 3: return launchPipe<HopperPipe<3, 1, 2>, kSwiGLU>(args, s);
    case 4: return launchPipe<HopperPipe<4, 1, 1, 256>, kSwiGLU>(args, s);
    default: return launchPipe<HopperPipe<3, 0, 1, 256>, kSwiGLU>(args, s);
  }
}

// 1 when this plugin's code for the current device is sm_90a (wgmma); 0 for anything else, compute_90 PTX
// compiled just in time included.
__global__ void hopperProbeKernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

bool probeHopper(int device) {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (major != 9 || minor != 0) return (cudaGetLastError(), false);
  int* flag = nullptr;
  int value = 0;
  if (cudaMalloc(&flag, sizeof(int)) != cudaSuccess) return (cudaGetLastError(), false);
  hopperProbeKernel<<<1, 1>>>(flag);
  const bool ok = cudaGetLastError() == cudaSuccess &&  // e.g. no code at all for this device in the build
                  cudaMemcpy(&value, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(flag);
  cudaGetLastError();
  return ok && value == 1;
}

int hopperGemmVariant() {
  static const int variant = [] {
    const char* v = std::getenv("MOE_CUDA_HOPPER_VARIANT");  // benchmarks: 0-5, see launchVariant
    return v && v[0] >= '0' && v[0] <= '5' && v[1] == 0 ? v[0] - '0' : kHopperDefaultVariant;
  }();
  return variant;
}

}  // namespace

bool hopperGemmAvailable() {
  static std::atomic<int> known[64];  // per device: 0 not probed yet, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return (cudaGetLastError(), false);
  if (device < 0 || device >= 64) return probeHopper(device);
  int v = known[device].load(std::memory_order_acquire);
  if (v == 0) {
    v = probeHopper(device) ? 2 : 1;
    known[device].store(v, std::memory_order_release);
  }
  return v == 2;
}

bool launchHopperGemm(const GemmArgs& args, bool swiglu, cudaStream_t s) {
  if (args.K % HK != 0 || args.N % HN != 0) return false;
  if (swiglu) launchVariant<true>(args, hopperGemmVariant(), s);
  else launchVariant<false>(args, hopperGemmVariant(), s);
  return true;
}

}  // namespace moe_cuda
