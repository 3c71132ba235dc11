// Dispatch: a counting sort of routed (token, slot) pairs into expert-contiguous rows, and the gather of the
// matching input rows. The sort is sequential (T·k integer work) and so exactly reproducible; the gather is
// parallel over rows, each written by exactly one worker.
#include "moe/dispatch.h"

#include <algorithm>
#include <vector>

namespace moe {

void planDispatch(const RoutingOutput& routing, int64_t T, int32_t maxK, int32_t numExperts, bool shared,
                  const float* sharedGate, LayerArena& arena) {
  int64_t routed = 0;
  for (int32_t e = 0; e < numExperts; ++e) routed += routing.expertCounts[e];
  const int64_t rows = routed + (shared ? T : 0);
  arena.rowToken.ensure(size_t(rows));
  arena.rowWeight.ensure(size_t(rows));
  arena.slotRow.ensure(size_t(T) * maxK);
  arena.cursor.resize(size_t(numExperts));
  arena.jobs.clear();
  int64_t offset = 0;
  for (int32_t e = 0; e < numExperts; ++e) {
    arena.cursor[e] = offset;
    if (routing.expertCounts[e] > 0) arena.jobs.push_back({e, offset, routing.expertCounts[e]});
    offset += routing.expertCounts[e];
  }
  int32_t* rowToken = arena.rowToken.data();
  float* rowWeight = arena.rowWeight.data();
  int32_t* slotRow = arena.slotRow.data();
  for (int64_t t = 0; t < T; ++t) {
    for (int32_t s = 0; s < maxK; ++s) {
      const int64_t slot = t * maxK + s;
      if (s >= routing.k[t]) {
        slotRow[slot] = -1;
        continue;
      }
      const int64_t row = arena.cursor[routing.indices[slot]]++;
      rowToken[row] = int32_t(t);
      rowWeight[row] = routing.weights[slot];
      slotRow[slot] = int32_t(row);
    }
  }
  if (shared) {
    for (int64_t t = 0; t < T; ++t) {
      rowToken[routed + t] = int32_t(t);
      rowWeight[routed + t] = sharedGate ? sharedGate[t] : 1.0f;
    }
    arena.jobs.push_back({numExperts, routed, T});
  }
}

void gatherRows(const float* x, int64_t d, int64_t rows, DType dtype, LayerArena& arena, ThreadPool& pool,
                int workers, int64_t weightedRows) {
  const int32_t* rowToken = arena.rowToken.data();
  const float* rowWeight = arena.rowWeight.data();
  constexpr int64_t kRowsPerItem = 16;
  const int64_t items = (rows + kRowsPerItem - 1) / kRowsPerItem;
  const int64_t ld = inputRowStride(dtype, d);
  // row r as fp32 into dst: copied, or times its routing weight
  const auto rowInto = [&](int64_t r, float* dst) {
    const float* src = x + int64_t(rowToken[r]) * d;
    if (r < weightedRows) {
      const float w = rowWeight[r];
      for (int64_t i = 0; i < d; ++i) dst[i] = w * src[i];
    } else {
      std::copy(src, src + d, dst);
    }
  };
  if (dtype == DType::F32) {
    arena.inputF32.ensure(size_t(rows) * ld);
    float* dst = arena.inputF32.data();
    pool.parallelFor(workers, items, [&](int64_t item, int) {
      for (int64_t r = item * kRowsPerItem; r < std::min(rows, (item + 1) * kRowsPerItem); ++r) rowInto(r, dst + r * ld);
    });
  } else {
    arena.inputBF16.ensure(size_t(rows) * ld);
    uint32_t* dst = arena.inputBF16.data();
    pool.parallelFor(workers, items, [&](int64_t item, int) {
      // (a weighted row is scaled in fp32, then rounded to bf16 once; the scratch grows once per thread)
      thread_local std::vector<float> scaled;
      for (int64_t r = item * kRowsPerItem; r < std::min(rows, (item + 1) * kRowsPerItem); ++r) {
        const float* src = x + int64_t(rowToken[r]) * d;
        if (r < weightedRows) {
          if (scaled.size() < size_t(d)) scaled.resize(size_t(d));
          rowInto(r, scaled.data());
          src = scaled.data();
        }
        rowToBf16Pairs(src, d, dst + r * ld);
      }
    });
  }
}

}  // namespace moe
