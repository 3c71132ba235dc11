// Gating on the device: the fp32 gate GEMM (with the bf16 copy of x for the experts), the complexity signals and
// their calibration, the fused selection kernel (one warp per token), and the per-call routing stats.
// The selection mirrors native/cpu/gating.cc rule for rule, including the tie rule (lower index wins).
#include <cfloat>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "common.cuh"
#include "gating_token.cuh"
#include "kernels.h"

namespace moe_cuda {

namespace {

constexpr int kLogitTokens = 8;   // tokens per block of the gate GEMM (one warp per expert)
constexpr int kLogitExperts = 8;  // experts (warps) per block

// Rows [t0, t0 + tokens) of x as bf16, zero padded to dPad, shared among `parts` blocks (this one is `part`):
// four elements per thread and step, every step independent, so the loads overlap.
__device__ void toBf16Rows(const float* __restrict__ x, int t0, int tokens, int d, int dPad, bf16* __restrict__ xb,
                           int part, int parts) {
  const int quads = dPad / 4, total = tokens * quads;
  const bool vec = (d % 4) == 0;
#pragma unroll 4
  for (int v = part * blockDim.x + threadIdx.x; v < total; v += parts * blockDim.x) {
    const int r = v / quads, c = (v % quads) * 4;
    const float* row = x + size_t(t0 + r) * d;
    float4 f;
    if (vec && c < d) {
      f = *reinterpret_cast<const float4*>(row + c);
    } else {
      f.x = c < d ? row[c] : 0.0f;
      f.y = c + 1 < d ? row[c + 1] : 0.0f;
      f.z = c + 2 < d ? row[c + 2] : 0.0f;
      f.w = c + 3 < d ? row[c + 3] : 0.0f;
    }
    __nv_bfloat162 lo = __floats2bfloat162_rn(f.x, f.y), hi = __floats2bfloat162_rn(f.z, f.w);
    uint2 packed;
    packed.x = *reinterpret_cast<uint32_t*>(&lo);
    packed.y = *reinterpret_cast<uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(xb + size_t(t0 + r) * dPad + c) = packed;
  }
}

// This thread's share of the dot products of weight row w with x rows t0 .. t0 + tokens: thread `part` of
// `parts` takes every parts-th group of 4 elements (16-byte loads when d % 4 == 0), or of 1 element otherwise.
__device__ __forceinline__ void dotTokens(const float* __restrict__ w, const float* __restrict__ x, int t0,
                                          int tokens, int d, int part, int parts, float (&acc)[kLogitTokens]) {
  if ((d % 4) == 0) {
    for (int i = part * 4; i < d; i += parts * 4) {
      const float4 wv = *reinterpret_cast<const float4*>(w + i);
#pragma unroll
      for (int r = 0; r < kLogitTokens; ++r) {
        if (r < tokens) {
          const float4 xv = *reinterpret_cast<const float4*>(x + size_t(t0 + r) * d + i);
          acc[r] = fmaf(wv.x, xv.x, fmaf(wv.y, xv.y, fmaf(wv.z, xv.z, fmaf(wv.w, xv.w, acc[r]))));
        }
      }
    }
  } else {
    for (int i = part; i < d; i += parts) {
      const float wv = w[i];
#pragma unroll
      for (int r = 0; r < kLogitTokens; ++r)
        if (r < tokens) acc[r] = fmaf(wv, x[size_t(t0 + r) * d + i], acc[r]);
    }
  }
}

__global__ void gateLogitsKernel(const float* __restrict__ x, int T, int d, int dPad, const float* __restrict__ W,
                                 const float* __restrict__ logitBias, int E, float* __restrict__ logits,
                                 bf16* __restrict__ xb) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t0 = blockIdx.y * kLogitTokens;
  const int e = blockIdx.x * kLogitExperts + warp;
  const int tokens = min(kLogitTokens, T - t0);
  if (e < E) {
    float acc[kLogitTokens] = {};
    dotTokens(W + size_t(e) * d, x, t0, tokens, d, lane, 32, acc);
#pragma unroll
    for (int r = 0; r < kLogitTokens; ++r) acc[r] = warpSum(acc[r]);
    if (lane < tokens) {
      float v = 0;
#pragma unroll
      for (int r = 0; r < kLogitTokens; ++r)
        if (r == lane) v = acc[r];
      logits[size_t(t0 + lane) * E + e] = v + (logitBias ? logitBias[e] : 0.0f);
    }
  }
  if (xb) toBf16Rows(x, t0, tokens, d, dPad, xb, blockIdx.x, gridDim.x);  // the experts' bf16 copy of x
}

// Few tokens: one block per (expert, 8 tokens), its 8 warps splitting d, so even T = 1 spreads over E blocks.
// Partial sums meet in shared memory in a fixed order.
__global__ void gateLogitsSplitKernel(const float* __restrict__ x, int T, int d, int dPad,
                                      const float* __restrict__ W, const float* __restrict__ logitBias, int E,
                                      float* __restrict__ logits, bf16* __restrict__ xb) {
  __shared__ float partial[kLogitExperts][kLogitTokens];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int e = blockIdx.x, t0 = blockIdx.y * kLogitTokens;
  const int tokens = min(kLogitTokens, T - t0);
  float acc[kLogitTokens] = {};
  dotTokens(W + size_t(e) * d, x, t0, tokens, d, warp * 32 + lane, 32 * kLogitExperts, acc);
#pragma unroll
  for (int r = 0; r < kLogitTokens; ++r) {
    const float v = warpSum(acc[r]);
    if (lane == 0) partial[warp][r] = v;
  }
  __syncthreads();
  if (threadIdx.x < tokens) {
    float v = 0;
    for (int w8 = 0; w8 < kLogitExperts; ++w8) v += partial[w8][threadIdx.x];
    logits[size_t(t0 + threadIdx.x) * E + e] = v + (logitBias ? logitBias[e] : 0.0f);
  }
  if (xb) toBf16Rows(x, t0, tokens, d, dPad, xb, blockIdx.x, gridDim.x);
}

__global__ void toBf16Kernel(const float* __restrict__ x, int T, int d, int dPad, bf16* __restrict__ xb) {
  const int t0 = blockIdx.x * kLogitTokens;
  toBf16Rows(x, t0, min(kLogitTokens, T - t0), d, dPad, xb, 0, 1);
}

// As native logitEntropy with temperature 1: entropy of softmax(row) / log E, clamped to [0,1].
__global__ void logitEntropyKernel(const float* __restrict__ logits, int T, int E, float* __restrict__ raw) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= T) return;
  const float* row = logits + size_t(t) * E;
  if (E < 2) {
    if (lane == 0) raw[t] = 0;
    return;
  }
  float m = -INFINITY;
  for (int i = lane; i < E; i += 32) m = fmaxf(m, row[i]);
  m = warpMax(m);
  if (!isfinite(m)) {
    if (lane == 0) raw[t] = 0;
    return;
  }
  double z = 0, weighted = 0;
  for (int i = lane; i < E; i += 32) {
    const double s = double(row[i]) - m;
    const double e = exp(s);
    z += e;
    if (e > 0) weighted += e * s;
  }
  z = warpSum(z);
  weighted = warpSum(weighted);
  if (lane == 0) raw[t] = float(fmin(fmax((log(z) - weighted / z) / log(double(E)), 0.0), 1.0));
}

__global__ void rowNormsKernel(const float* __restrict__ x, int T, int d, int order, float* __restrict__ raw) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= T) return;
  double acc = 0;
  for (int i = lane; i < d; i += 32) {
    const double v = x[size_t(t) * d + i];
    acc += order == 1 ? fabs(v) : v * v;
  }
  acc = warpSum(acc);
  if (lane == 0) raw[t] = float(order == 1 ? acc : sqrt(acc));
}

// Abramowitz–Stegun 7.1.26, as lib/estimators.ts, so both backends map the same raw value to the same score.
__device__ double normalCdf(double z) {
  const double x = z / 1.4142135623730951;
  const double sign = x < 0 ? -1 : 1, ax = fabs(x);
  const double t = 1 / (1 + 0.3275911 * ax);
  const double y =
      1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t *
              exp(-ax * ax);
  return 0.5 * (1 + sign * y);
}

__device__ double empiricalCdf(const double* knots, int n, double v) {
  if (v <= knots[0]) return 0;
  if (v >= knots[n - 1]) return 1;
  int lo = 0, hi = n - 1;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (knots[mid] <= v) lo = mid;
    else hi = mid;
  }
  const double span = knots[hi] - knots[lo];
  return (lo + (span > 0 ? (v - knots[lo]) / span : 0)) / (n - 1);
}

constexpr int kCalibrateThreads = 1024;

// Block-wide sum in a fixed order (the same result for the same inputs, run after run).
__device__ double blockSum(double v, double* scratch) {
  v = warpSum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < blockDim.x / 32 ? scratch[lane] : 0;
    v = warpSum(v);
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

__global__ void calibrateKernel(const float* __restrict__ raw, int T, int mode, double* state,
                                const double* __restrict__ knots, int knotCount, float* __restrict__ out) {
  __shared__ double scratch[32];
  double mean = state[1], count = state[0], m2 = state[2];
  if (mode == MOE_CUDA_CALIBRATION_ZSCORE) {
    // Chan's merge of this batch's (n, mean, M2) into the running statistics; non-finite values are skipped.
    double n = 0, sum = 0;
    for (int t = threadIdx.x; t < T; t += blockDim.x)
      if (isfinite(raw[t])) {
        n += 1;
        sum += raw[t];
      }
    n = blockSum(n, scratch);
    sum = blockSum(sum, scratch);
    const double batchMean = n > 0 ? sum / n : 0;
    double dev = 0;
    for (int t = threadIdx.x; t < T; t += blockDim.x)
      if (isfinite(raw[t])) dev += (raw[t] - batchMean) * (raw[t] - batchMean);
    dev = blockSum(dev, scratch);
    if (n > 0) {
      const double total = count + n, delta = batchMean - mean;
      mean += delta * n / total;
      m2 += dev + delta * delta * count * n / total;
      count = total;
    }
    if (threadIdx.x == 0) {
      state[0] = count;
      state[1] = mean;
      state[2] = m2;
    }
  }
  const double sd = count > 1 ? sqrt(m2 / (count - 1)) : 0;
  for (int t = threadIdx.x; t < T; t += blockDim.x) {
    const double v = raw[t];
    double c;
    if (mode == MOE_CUDA_CALIBRATION_NONE) c = fmin(1.0, fmax(0.0, v));
    else if (mode == MOE_CUDA_CALIBRATION_QUANTILE) c = empiricalCdf(knots, knotCount, v);
    else c = sd > 0 ? normalCdf((v - mean) / sd) : 0.5;
    out[t] = float(c);
  }
}

// Per-warp shared memory: see gateToken.
__global__ void gatingKernel(MoeCudaRouting cfg, const float* __restrict__ logits, int T,
                             const float* __restrict__ bias, const float* __restrict__ complexity, GatingOut out,
                             bool byRank) {
  extern __shared__ float shared[];
  const int warp = threadIdx.x / 32;
  const int t = blockIdx.x * kGatingWarps + warp;
  if (t >= T) return;
  gateToken(cfg, logits, t, bias, complexity, out, shared + size_t(warp) * gatingWarpFloats(cfg), {}, byRank);
}

// Route stats in one block: expert lanes x token slices, reduced in a fixed order.
__global__ void routeStatsKernel(int T, int E, const float* __restrict__ probsNorm, const float* __restrict__ lse2,
                                 const int32_t* __restrict__ counts, double* stats) {
  __shared__ double partial[32][33];
  __shared__ double scratch[32];
  const int lane = threadIdx.x % 32, slice = threadIdx.x / 32, slices = blockDim.x / 32;
  double assignments = 0;
  for (int e = threadIdx.x; e < E; e += blockDim.x) assignments += counts[e];
  assignments = blockSum(assignments, scratch);
  double aux = 0, entropy = 0;
  for (int e0 = 0; e0 < E; e0 += 32) {
    const int e = e0 + lane;
    double p = 0;
    if (e < E)
      for (int t = slice; t < T; t += slices) p += probsNorm[size_t(t) * E + e];
    partial[slice][lane] = p;
    __syncthreads();
    if (slice == 0 && e < E) {
      double probSum = 0;
      for (int s = 0; s < slices; ++s) probSum += partial[s][lane];
      const double share = assignments > 0 ? counts[e] / assignments : 0;
      aux += share * (probSum / T);
      if (share > 0) entropy -= share * log(share);
    }
    __syncthreads();
  }
  aux = blockSum(slice == 0 ? aux : 0, scratch);
  entropy = blockSum(slice == 0 ? entropy : 0, scratch);
  double z = 0;
  for (int t = threadIdx.x; t < T; t += blockDim.x) z += lse2[t];
  z = blockSum(z, scratch);
  if (threadIdx.x == 0) {
    stats[0] = assignments / T;
    stats[1] = E * aux;
    stats[2] = z / T;
    stats[3] = E > 1 ? fmin(fmax(entropy / log(double(E)), 0.0), 1.0) : 1.0;
    stats[4] = assignments;
  }
}

__global__ void sharedGateKernel(const float* __restrict__ x, int T, int d, const float* __restrict__ gate,
                                 float* __restrict__ scale) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= T) return;
  float acc = 0;
  for (int i = lane; i < d; i += 32) acc = fmaf(x[size_t(t) * d + i], gate[i], acc);
  acc = warpSum(acc);
  if (lane == 0) scale[t] = 1.0f / (1.0f + expf(-acc));
}

}  // namespace

void launchGateLogits(const float* x, int64_t T, int d, int dPad, const float* W, const float* logitBias, int E,
                      float* logits, bf16* xb, cudaStream_t s) {
  if (T * E <= 4096) {  // too few (token, expert) outputs to fill the GPU without splitting d
    const dim3 grid(unsigned(E), unsigned(ceilDiv(T, kLogitTokens)));
    gateLogitsSplitKernel<<<grid, 32 * kLogitExperts, 0, s>>>(x, int(T), d, dPad, W, logitBias, E, logits, xb);
    checkLaunch("gateLogitsSplitKernel");
    return;
  }
  const dim3 grid(unsigned(ceilDiv(E, kLogitExperts)), unsigned(ceilDiv(T, kLogitTokens)));
  gateLogitsKernel<<<grid, 32 * kLogitExperts, 0, s>>>(x, int(T), d, dPad, W, logitBias, E, logits, xb);
  checkLaunch("gateLogitsKernel");
}

void launchToBf16(const float* x, int64_t T, int d, int dPad, bf16* xb, cudaStream_t s) {
  toBf16Kernel<<<unsigned(ceilDiv(T, kLogitTokens)), 256, 0, s>>>(x, int(T), d, dPad, xb);
  checkLaunch("toBf16Kernel");
}

void launchLogitEntropy(const float* logits, int64_t T, int E, float* raw, cudaStream_t s) {
  logitEntropyKernel<<<unsigned(ceilDiv(T, 8)), 256, 0, s>>>(logits, int(T), E, raw);
  checkLaunch("logitEntropyKernel");
}

void launchRowNorms(const float* x, int64_t T, int d, int order, float* raw, cudaStream_t s) {
  rowNormsKernel<<<unsigned(ceilDiv(T, 8)), 256, 0, s>>>(x, int(T), d, order, raw);
  checkLaunch("rowNormsKernel");
}

void launchCalibrate(const float* raw, int64_t T, int mode, double* state, const double* knots, int knotCount,
                     float* complexity, cudaStream_t s) {
  calibrateKernel<<<1, kCalibrateThreads, 0, s>>>(raw, int(T), mode, state, knots, knotCount, complexity);
  checkLaunch("calibrateKernel");
}

bool rankTopK(const MoeCudaRouting& cfg) {
  static const bool enabled = [] {
    const char* v = std::getenv("MOE_CUDA_RANK_TOPK");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return enabled && cfg.numExperts <= kRankTopKMaxExperts;
}

size_t gatingSharedBytes(const MoeCudaRouting& cfg) {
  return size_t(kGatingWarps) * size_t(gatingWarpFloats(cfg)) * sizeof(float);
}

void launchGating(const MoeCudaRouting& cfg, const float* logits, int64_t T, const float* bias,
                  const float* complexity, const GatingOut& out, cudaStream_t s) {
  const size_t smem = gatingSharedBytes(cfg);
  static_assert(kGatingWarps * 32 <= 1024, "block size");
  static SharedAllowance allowance;
  allowance.ensure(reinterpret_cast<const void*>(gatingKernel), smem, "gating shared memory");
  gatingKernel<<<unsigned(ceilDiv(T, kGatingWarps)), kGatingWarps * 32, smem, s>>>(cfg, logits, int(T), bias,
                                                                                 complexity, out, rankTopK(cfg));
  checkLaunch("gatingKernel");
}

void launchRouteStats(int64_t T, int E, const float* probsNorm, const float* lse2, const int32_t* counts,
                      double* stats, cudaStream_t s) {
  routeStatsKernel<<<1, 1024, 0, s>>>(int(T), E, probsNorm, lse2, counts, stats);
  checkLaunch("routeStatsKernel");
}

void launchSharedGate(const float* x, int64_t T, int d, const float* gate, float* scale, cudaStream_t s) {
  sharedGateKernel<<<unsigned(ceilDiv(T, 8)), 256, 0, s>>>(x, int(T), d, gate, scale);
  checkLaunch("sharedGateKernel");
}

}  // namespace moe_cuda
