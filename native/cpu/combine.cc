// Combine: each token's output is the sum of its weighted expert rows, in slot order, then its shared-expert
// row. One worker owns each token, so the sum order, and the result, never depend on the thread count.
#include <algorithm>

#include "moe/dispatch.h"

namespace moe {

namespace {
// out[i] += src[i]; restrict lets the compiler vectorise (the rows never overlap: y and the expert buffer are
// separate allocations).
inline void addRow(float* __restrict out, const float* __restrict src, int64_t d) {
  for (int64_t i = 0; i < d; ++i) out[i] += src[i];
}
}  // namespace

void combineRows(int64_t T, int64_t d, int32_t maxK, const int32_t* slotRow, const float* expertOut,
                 int64_t sharedRow0, float* y, ThreadPool& pool, int workers) {
  constexpr int64_t kTokensPerItem = 8;
  const int64_t items = (T + kTokensPerItem - 1) / kTokensPerItem;
  pool.parallelFor(workers, items, [&](int64_t item, int) {
    for (int64_t t = item * kTokensPerItem; t < std::min(T, (item + 1) * kTokensPerItem); ++t) {
      // The next token's rows sit at scattered places: start their first lines early, the hardware prefetcher
      // takes over within a row.
      if (t + 1 < T)
        for (int32_t s = 0; s < maxK; ++s) {
          const int32_t next = slotRow[(t + 1) * maxK + s];
          if (next >= 0)
            for (int line = 0; line < 8; ++line) __builtin_prefetch(expertOut + int64_t(next) * d + line * 16);
        }
      float* out = y + t * d;
      std::fill(out, out + d, 0.0f);
      for (int32_t s = 0; s < maxK; ++s) {
        const int32_t row = slotRow[t * maxK + s];
        if (row < 0) continue;
        addRow(out, expertOut + int64_t(row) * d, d);
      }
      if (sharedRow0 >= 0) {
        addRow(out, expertOut + (sharedRow0 + t) * d, d);
      }
    }
  });
}

}  // namespace moe
