// Per-router / per-layer telemetry. The compute path only does relaxed atomic adds into one of kShards
// cache-line-padded shards (picked by thread), and pushes one span record per call into a bounded ring.
// `drain` (at scrape time, off the hot path) sums the shards and returns the deltas since the previous drain.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "span_ring.h"

namespace moe::telemetry {

enum class Stage : int { Complexity = 0, Gating = 1, Dispatch = 2, ExpertGemm = 3, Combine = 4 };
constexpr int kStages = 5;
enum class ErrorKind : int { Validation = 0, NonFinite = 1, Internal = 2 };
constexpr int kErrorKinds = 3;

// Histogram bounds in seconds for stage and call durations; the last bucket is +Inf.
constexpr double kDurationBounds[] = {1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                                      1e-2, 2.5e-2, 5e-2, 0.1,  0.25,   0.5,  1,    2.5,    5};
constexpr int kDurationBuckets = int(sizeof(kDurationBounds) / sizeof(double)) + 1;
constexpr int kComplexityBuckets = 11;  // bounds 0.1 .. 1.0, then +Inf

// What one call contributes.
struct CallRecord {
  int64_t tokens = 0;
  int64_t assignments = 0;
  const int32_t* k = nullptr;               // [tokens]
  const float* complexity = nullptr;        // [tokens] or null
  const int32_t* expertCounts = nullptr;    // [numExperts]
  double flopsComputed = 0, flopsStatic = 0;
  int64_t complexityNs = 0;                 // measured by the caller before the native call
  SpanRecord span;                          // stage timestamps; span.tokens etc. filled by record()
};

// Deltas since the previous drain. Histogram counts are per bucket (not cumulative); sums in seconds.
struct Delta {
  uint64_t calls = 0, tokens = 0, assignments = 0;
  uint64_t errors[kErrorKinds] = {};
  double flopsComputed = 0, flopsStatic = 0;
  std::vector<uint64_t> kBuckets;  // maxK + 2: k = 0..maxK, then +Inf
  uint64_t kCount = 0;
  double kSum = 0;
  uint64_t complexityBuckets[kComplexityBuckets] = {};
  uint64_t complexityCount = 0;
  double complexitySum = 0;
  uint64_t stageBuckets[kStages][kDurationBuckets] = {};
  uint64_t stageCount[kStages] = {};
  double stageSum[kStages] = {};
  uint64_t durationBuckets[kDurationBuckets] = {};
  uint64_t durationCount = 0;
  double durationSum = 0;
  std::vector<uint64_t> expertTokens;
  // entropy / log(E) of the expert tokens since the last value, given once they hold at least E assignments
  // (so a window of a few decode tokens is judged with later ones, never alone); NaN until then
  double loadBalance = 0;
  std::vector<SpanRecord> spans;
  uint64_t spansDropped = 0;
};

class Telemetry {
 public:
  Telemetry(int numExperts, int maxK);
  void record(const CallRecord& call);
  void recordError(ErrorKind kind);
  // Totals counted elsewhere (the CUDA backend's device counters): no per-token histograms, no span.
  void recordCounts(uint64_t calls, uint64_t tokens, uint64_t assignments, const uint64_t* expertTokens);
  Delta drain();
  int numExperts() const { return numExperts_; }
  int maxK() const { return maxK_; }

 private:
  static constexpr int kShards = 8;
  size_t slot(size_t index) const;  // index within a shard's counter block
  std::atomic<uint64_t>* shard();
  double windowLoadBalance(const std::vector<uint64_t>& expertTokens);  // see Delta::loadBalance

  int numExperts_, maxK_;
  size_t counters_;                 // counters per shard (padded to a cache-line multiple)
  std::unique_ptr<std::atomic<uint64_t>[]> values_;  // kShards * counters_
  // Bit s: shard s has been written to. A drain reads only those (a process's calls usually land in one or two
  // shards: most of a cold drain's cost is the cache lines it reads). Bits are never cleared.
  std::atomic<uint32_t> usedShards_{0};
  std::vector<uint64_t> previous_;  // drainer only
  std::vector<uint64_t> now_;       // drainer only: this drain's deltas
  std::vector<uint64_t> balanceTokens_;  // drainer only: expert tokens not yet in a load balance value
  uint64_t balanceAssignments_ = 0;
  std::mutex drainMutex_;           // serialises drainers, never taken by compute
  SpanRing spans_{1024};
};

int64_t nowNs();

}  // namespace moe::telemetry
