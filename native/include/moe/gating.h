// Gating: router logits to experts per token, for every selection rule (see types.h), plus the per-call stats.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/thread_pool.h"
#include "moe/types.h"

namespace moe {

// Reusable per-router scratch so that routing allocates nothing after the first call of a given size.
struct GatingScratch {
  std::vector<float> perWorker;     // workers x (3E + nGroup): probs, selection scores, group scores
  std::vector<int32_t> order;       // workers x E
  std::vector<double> chunkSums;    // chunks x (E + 1): prob sums per expert and the z-loss sum
  void reserve(int workers, int numExperts, int nGroup, int64_t chunks);
};

// Logits [T, E] to the routing output. `bias` may be null; `complexity` ([T] in [0,1]) is required by the
// dynamic rule and ignored otherwise. Returns an empty string, or a message when a logit is not finite.
std::string selectExperts(const RouterConfig& cfg, const float* logits, int64_t T, const float* bias,
                          const float* complexity, RoutingOutput& out, RoutingStats& stats, ThreadPool& pool,
                          int workers, GatingScratch& scratch);

// logits[T, E] = x[T, d] · W^T with W packed by packPanelsF32 (panelCount(E) panels of d).
void gateLogits(const float* x, int64_t T, int64_t d, const float* packedGate, int64_t E, float* logits,
                ThreadPool& pool, int workers);

// Dynamic k for complexity c in [0,1]: clamp(minK + floor((maxK - minK) * c + 0.5), minK, maxK).
int32_t dynamicK(int32_t minK, int32_t maxK, float complexity);

}  // namespace moe
