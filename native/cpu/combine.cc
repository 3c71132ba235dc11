// Combine: each token's output is the sum of its weighted expert rows, in slot order, then its shared-expert
// row. One worker owns each token, so the sum order, and the result, never depend on the thread count.
#include <algorithm>

#include "moe/dispatch.h"

namespace moe {

namespace {
constexpr int kMaxRowsPerToken = 64;  // routed slots plus the shared row; wider tokens take the row-by-row path
constexpr int64_t kChunk = 64;        // columns per step: 64 accumulators (256 bytes) stay in registers / L1

// out = ((0 + row0) + row1) + ... in this order for every column. All rows are read side by side, chunk by
// chunk, so their cache misses overlap (a row at a time would start each scattered row cold), and out is written
// once. The per-column order of additions is the same as adding whole rows one after another.
// `next` (nNext rows, the next token's) is prefetched chunk by chunk, one token ahead of the reads.
void sumRows(float* __restrict out, const float* const* rows, int n, const float* const* next, int nNext,
             int64_t d) {
  int64_t c0 = 0;
  for (; c0 + kChunk <= d; c0 += kChunk) {
    for (int r = 0; r < nNext; ++r)
      for (int64_t line = 0; line < kChunk; line += 16) __builtin_prefetch(next[r] + c0 + line);
    float acc[kChunk] = {};
    for (int r = 0; r < n; ++r) {
      const float* __restrict src = rows[r] + c0;
      for (int64_t i = 0; i < kChunk; ++i) acc[i] += src[i];
    }
    std::copy(acc, acc + kChunk, out + c0);
  }
  for (int64_t c = c0; c < d; ++c) {
    float acc = 0.0f;
    for (int r = 0; r < n; ++r) acc += rows[r][c];
    out[c] = acc;
  }
}
}  // namespace

void combineRows(int64_t T, int64_t d, int32_t maxK, const int32_t* slotRow, const float* expertOut, size_t ldo,
                 int64_t sharedRow0, float* y, ThreadPool& pool, int workers) {
  constexpr int64_t kTokensPerItem = 8;
  const int64_t items = (T + kTokensPerItem - 1) / kTokensPerItem;
  // Calls fn(row) for each of token t's rows in the order they are added: routed slots, then its shared row.
  auto forEachRow = [&](int64_t t, auto&& fn) {
    for (int32_t s = 0; s < maxK; ++s) {
      const int32_t row = slotRow[t * maxK + s];
      if (row >= 0) fn(expertOut + size_t(row) * ldo);
    }
    if (sharedRow0 >= 0) fn(expertOut + size_t(sharedRow0 + t) * ldo);
  };
  // Token t's rows into rows[0..n); false when there are more than kMaxRowsPerToken.
  auto rowsOf = [&](int64_t t, const float** rows, int& n) {
    n = 0;
    bool fits = true;
    forEachRow(t, [&](const float* row) {
      if (n < kMaxRowsPerToken) rows[n++] = row;
      else fits = false;
    });
    return fits;
  };
  pool.parallelFor(workers, items, [&](int64_t item, int) {
    const float* rowsA[kMaxRowsPerToken];
    const float* rowsB[kMaxRowsPerToken];
    const float** rows = rowsA;
    const float** next = rowsB;
    const int64_t end = std::min(T, (item + 1) * kTokensPerItem);
    int n = 0, nNext = 0;
    bool fits = rowsOf(item * kTokensPerItem, rows, n);
    for (int64_t t = item * kTokensPerItem; t < end; ++t) {
      // The rows of the item's next token are prefetched while this token's are summed.
      const bool nextFits = t + 1 < end && rowsOf(t + 1, next, nNext);
      float* out = y + t * d;
      if (fits) {
        sumRows(out, rows, n, next, nextFits ? nNext : 0, d);
      } else {
        // More rows than the chunked path holds (over 64 with the shared row): the same order, a row at a time.
        std::fill(out, out + d, 0.0f);
        forEachRow(t, [&](const float* row) {
          for (int64_t i = 0; i < d; ++i) out[i] += row[i];
        });
      }
      std::swap(rows, next);
      std::swap(n, nNext);
      fits = nextFits;
    }
  });
}

}  // namespace moe
