// Gating of one token by one warp, shared by the gating kernel (gating.cu) and the fused small-batch route +
// align kernel (route_align.cu). Mirrors native/cpu/gating.cc rule for rule; ties go to the lower index.
#pragma once
#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

constexpr int kGatingWarps = 4;

// Shared floats per gating warp.
__host__ __device__ inline int gatingWarpFloats(const MoeCudaRouting& cfg) { return 2 * cfg.numExperts + cfg.maxK; }

__device__ __forceinline__ int dynamicK(int minK, int maxK, float complexity) {
  const double c = isfinite(complexity) ? fmin(fmax(double(complexity), 0.0), 1.0) : 0.0;
  const int k = minK + int(floor(double(maxK - minK) * c + 0.5));
  return min(max(k, minK), maxK);
}

// Where a fused kernel wants a copy of the choices in shared memory (route_align.cu): [T, maxK] indices and
// weights, [T] k. Null pointers: no copy.
struct GatingCopy {
  int32_t* indices = nullptr;
  float* weights = nullptr;
  int32_t* k = nullptr;
};

// Where E <= kRankTopKMaxExperts: the best maxK by each candidate's rank, counted against every score at once,
// instead of maxK rounds of a warp reduction each waiting for the last. Same order: higher score first, ties to
// the lower index. The default since H200 run 9 (route + align 0.3-1.5 us faster at T >= 32 and for Mixtral, the
// same within noise for OLMoE below; bench/RESULTS.md); MOE_CUDA_RANK_TOPK=0 keeps the rounds.
constexpr int kRankTopKMaxExperts = 64;
bool rankTopK(const MoeCudaRouting& cfg);  // gating.cu: the variable, and E small enough

// Token t, by one warp. `probs` is the warp's shared memory: probs [E], selection scores [E], chosen [maxK].
__device__ __forceinline__ void gateToken(const MoeCudaRouting& cfg, const float* __restrict__ logits, int t,
                                          const float* __restrict__ bias, const float* __restrict__ complexity,
                                          const GatingOut& out, float* probs, const GatingCopy& copy = {},
                                          bool byRank = false) {
  const int lane = threadIdx.x % 32;
  // A warp that gates several tokens (the fused route+align with fewer warps than tokens) reuses this scratch:
  // no lane may overwrite it while another still reads the previous token's.
  __syncwarp();
  const int E = cfg.numExperts, maxK = cfg.maxK;
  float* select = probs + E;
  int* order = reinterpret_cast<int*>(select + E);
  const float* row = logits + size_t(t) * E;
  auto choose = [&](int j, int index, float weight, int k) {  // slot j of token t; k from lane 0
    const size_t slot = size_t(t) * maxK + j;
    out.indices[slot] = index;
    out.weights[slot] = weight;
    if (copy.indices) {
      copy.indices[slot] = index;
      copy.weights[slot] = weight;
    }
    if (j == 0) {
      out.k[t] = k;
      if (copy.k) copy.k[t] = k;
    }
  };

  // Logits into registers' worth of shared memory, 16 bytes per load when rows are 16-byte aligned.
  bool finite = true;
  float m = -INFINITY;
  if ((E % 4) == 0) {
    for (int i = lane * 4; i < E; i += 128) {
      const float4 v = *reinterpret_cast<const float4*>(row + i);
      probs[i] = v.x;
      probs[i + 1] = v.y;
      probs[i + 2] = v.z;
      probs[i + 3] = v.w;
      finite &= isfinite(v.x) && isfinite(v.y) && isfinite(v.z) && isfinite(v.w);
      m = fmaxf(m, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
    }
  } else {
    for (int i = lane; i < E; i += 32) {
      const float v = row[i];
      probs[i] = v;
      finite &= isfinite(v);
      m = fmaxf(m, v);
    }
  }
  if (!__all_sync(kFullMask, finite)) {
    for (int j = lane; j < maxK; j += 32) choose(j, -1, 0.0f, 0);
    if (lane == 0 && out.lse2) out.lse2[t] = 0;
    for (int i = lane; i < E; i += 32) {
      if (out.probsNorm) out.probsNorm[size_t(t) * E + i] = 0;
      if (out.probs) out.probs[size_t(t) * E + i] = NAN;
    }
    return;
  }
  m = warpMax(m);
  __syncwarp();

  // Scores: softmax probabilities, or sigmoids (whose sum is the top-p mass).
  double sumExp = 0, mass = 0;
  for (int i = lane; i < E; i += 32) {
    const float l = probs[i];
    const float e = expf(l - m);
    sumExp += e;
    if (cfg.scoring == 0) {
      probs[i] = e;
    } else {
      probs[i] = 1.0f / (1.0f + expf(-l));
      mass += probs[i];
    }
    select[i] = l;  // keep the logit for gptOss
  }
  sumExp = warpSum(sumExp);
  if (cfg.scoring == 0) {
    const float inv = float(1.0 / sumExp);
    for (int i = lane; i < E; i += 32) probs[i] *= inv;
    mass = 1.0;
  } else {
    mass = warpSum(mass);
  }
  for (int i = lane; i < E; i += 32)
    select[i] = (cfg.selection == 4 ? select[i] : probs[i]) + (bias ? bias[i] : 0.0f);
  __syncwarp();

  // Group limit: keep the best topkGroup groups (score: top-1 or top-1 + top-2 of the group).
  if (cfg.nGroup > 0) {
    const int groupSize = E / cfg.nGroup;
    float groupScore = -INFINITY;
    int group = -1;
    if (lane < cfg.nGroup) {
      float first = -INFINITY, second = -INFINITY;
      for (int i = 0; i < groupSize; ++i) {
        const float s = select[lane * groupSize + i];
        if (s > first) {
          second = first;
          first = s;
        } else if (s > second) {
          second = s;
        }
      }
      groupScore = cfg.groupScore == 1 || groupSize < 2 ? first : first + second;
      group = lane;
    }
    unsigned kept = 0;
    for (int r = 0; r < cfg.topkGroup; ++r) {
      const bool skip = (kept >> lane) & 1u || groupScore == -INFINITY;
      const int g = warpArgMax(groupScore, skip ? -1 : group);
      if (g < 0) break;
      kept |= 1u << g;
    }
    __syncwarp();
    for (int i = lane; i < E; i += 32)
      if (!((kept >> (i / groupSize)) & 1u)) select[i] = -INFINITY;
    __syncwarp();
  }

  // Threshold counts before the top-k pass marks the chosen experts.
  int above = 0;
  if (cfg.selection == 2) {
    for (int i = lane; i < E; i += 32) above += select[i] != -INFINITY && probs[i] >= cfg.tau;
    for (int o = 16; o > 0; o >>= 1) above += __shfl_xor_sync(kFullMask, above, o);
  }

  // The best maxK candidates in order (select[] is not read after this).
  int candidates = 0;
  if (byRank) {
    // Each candidate's rank among the scores (higher first, ties to the lower index); the first maxK take their
    // places in order[] directly.
    unsigned finite = 0;
    for (int i = lane; i < E; i += 32) {
      const float s = select[i];
      if (s == -INFINITY) continue;
      ++finite;
      int rank = 0;
      for (int j = 0; j < E; ++j) {
        const float other = select[j];
        rank += other > s || (other == s && j < i);
      }
      if (rank < maxK) order[rank] = i;
    }
    candidates = min(int(__reduce_add_sync(kFullMask, finite)), maxK);
  } else {
    // Each round takes the highest remaining score, ties to the lower index. Lane l reads only scores l, l + 32,
    // ...: it keeps its best remaining one, and only the round's winner looks again.
    float best;
    int bestIndex;
    auto laneBest = [&] {
      best = -INFINITY;
      bestIndex = -1;
      for (int i = lane; i < E; i += 32) {
        const float s = select[i];
        if (s != -INFINITY && (bestIndex < 0 || s > best)) {
          best = s;
          bestIndex = i;
        }
      }
    };
    laneBest();
    for (int r = 0; r < maxK; ++r) {
      const int winner = warpArgMax(best, bestIndex);
      if (winner < 0) break;
      if (lane == 0) order[r] = winner;
      if (winner % 32 == lane) {
        select[winner] = -INFINITY;
        laneBest();
      }
      ++candidates;
    }
  }
  __syncwarp();  // order[] for every lane

  int k = cfg.k;
  if (cfg.selection == 1) {  // top-p over the candidates, in double as on the CPU (mass 0: minK, as there)
    double cum = 0;
    k = mass > 0 ? maxK : cfg.minK;
    for (int j = 0; j < candidates && mass > 0; ++j) {
      cum += double(probs[order[j]]) / mass;
      if (cum >= cfg.p) {
        k = j + 1;
        break;
      }
    }
    k = min(max(k, cfg.minK), maxK);
  } else if (cfg.selection == 2) {
    k = min(max(above, cfg.minK), maxK);
  } else if (cfg.selection == 3) {
    k = dynamicK(cfg.minK, maxK, complexity ? complexity[t] : 0.5f);
  }
  k = min(k, candidates);

  // Weights: renormalised probabilities (optional), scaled; gptOss: softmax over the chosen logits.
  double sum = 0;
  if (cfg.selection == 4) {
    const float top = row[order[0]];
    for (int j = 0; j < k; ++j) sum += exp(double(row[order[j]]) - top);
    for (int j = lane; j < maxK; j += 32)
      choose(j, j < k ? order[j] : -1, j < k ? float(exp(double(row[order[j]]) - top) / sum * cfg.scale) : 0.0f, k);
  } else {
    for (int j = 0; j < k; ++j) sum += probs[order[j]];
    const double norm = cfg.normalize && sum > 0 ? cfg.scale / sum : cfg.scale;
    for (int j = lane; j < maxK; j += 32)
      choose(j, j < k ? order[j] : -1, j < k ? float(probs[order[j]] * norm) : 0.0f, k);
  }
  if (lane == 0) {
    if (out.lse2) {
      const double lse = m + log(sumExp);
      out.lse2[t] = float(lse * lse);
    }
  }
  for (int i = lane; i < E; i += 32) {
    if (out.probsNorm) out.probsNorm[size_t(t) * E + i] = mass > 0 ? float(probs[i] / mass) : 0.0f;
    if (out.probs) out.probs[size_t(t) * E + i] = probs[i];
  }
}


}  // namespace moe_cuda
