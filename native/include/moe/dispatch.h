// Dispatch and combine: the data movement around the expert GEMMs.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/gemm.h"
#include "moe/layer.h"
#include "moe/thread_pool.h"
#include "moe/types.h"

namespace moe {

// Stable counting sort of the (token, slot) pairs by expert. Expert e's rows come in token order, then slot
// order; the shared expert (when present) takes T more rows at the end, in token order. Fills rowToken,
// rowWeight (routing weight, or the shared gate value), slotRow ([T, maxK], -1 for empty slots) and jobs.
// `sharedGate` is the per-token scale of the shared expert (null: 1).
void planDispatch(const RoutingOutput& routing, int64_t T, int32_t maxK, int32_t numExperts, bool shared,
                  const float* sharedGate, LayerArena& arena);

// Copies x rows into expert order: fp32 rows, or bf16 pairs when dtype is BF16. Rows below `weightedRows` are
// scaled by their rowWeight first (ExpertActivation::weightInputs: the routed rows).
void gatherRows(const float* x, int64_t d, int64_t rows, DType dtype, LayerArena& arena, ThreadPool& pool,
                int workers, int64_t weightedRows = 0);

// y[t] = sum over the token's slots, in slot order, of its weighted expert rows (`ldo` floats apart), plus its
// shared row.
void combineRows(int64_t T, int64_t d, int32_t maxK, const int32_t* slotRow, const float* expertOut, size_t ldo,
                 int64_t sharedRow0, float* y, ThreadPool& pool, int workers);

}  // namespace moe
