// Raw per-token complexity signals. They are not yet in [0,1] where they are unbounded (norms); the TypeScript
// estimators calibrate them (lib/estimators.ts). Entropies come out normalised by log(size).
#pragma once
#include <cstdint>

#include "moe/thread_pool.h"

namespace moe {

// out[t] = ||x[t]||_order for order 1 or 2.
void rowNorms(const float* x, int64_t T, int64_t d, int order, float* out, ThreadPool& pool, int workers);

// attention [heads, T, S] (heads may be 1): entropy of each row over S, divided by log S, then the mean
// (reduceMax = false) or max over heads. Rows are renormalised by their own sum.
void attentionEntropy(const float* attention, int64_t heads, int64_t T, int64_t S, bool reduceMax, float* out,
                      ThreadPool& pool, int workers);

// out[t] = entropy(softmax(logits[t] / temperature)) / log V, with logits [T, V].
void logitEntropy(const float* logits, int64_t T, int64_t V, float temperature, float* out, ThreadPool& pool,
                  int workers);

}  // namespace moe
