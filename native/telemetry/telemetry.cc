// Sharded relaxed counters and their drain. Layout of one shard's block (all uint64):
//   scalars (kScalars), k buckets (maxK + 2), complexity buckets, stage buckets, duration buckets, experts.
#include "telemetry.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <thread>

namespace moe::telemetry {

namespace {
enum Scalar : size_t {
  kCalls,
  kTokens,
  kAssignments,
  kErrors,  // kErrorKinds entries
  kFlopsComputed = kErrors + kErrorKinds,
  kFlopsStatic,
  kKSum,
  kComplexitySumNano,
  kDurationSumNs,
  kStageSumNs,  // kStages entries; histogram counts are the sums of their buckets
  kScalars = kStageSumNs + kStages,
};
constexpr double kNano = 1e9;

int durationBucket(double seconds) {
  int b = 0;
  while (b < kDurationBuckets - 1 && seconds > kDurationBounds[b]) ++b;
  return b;
}
}  // namespace

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Telemetry::Telemetry(int numExperts, int maxK) : numExperts_(numExperts), maxK_(maxK) {
  const size_t used = kScalars + size_t(maxK + 2) + kComplexityBuckets + size_t(kStages) * kDurationBuckets +
                      kDurationBuckets + size_t(numExperts);
  counters_ = (used + 7) / 8 * 8;  // whole cache lines, so shards never share one
  values_.reset(new std::atomic<uint64_t>[kShards * counters_]);
  for (size_t i = 0; i < kShards * counters_; ++i) values_[i].store(0, std::memory_order_relaxed);
  previous_.assign(counters_, 0);
  balanceTokens_.assign(size_t(numExperts), 0);
}

std::atomic<uint64_t>* Telemetry::shard() {
  static thread_local const size_t mine = std::hash<std::thread::id>()(std::this_thread::get_id()) % kShards;
  const uint32_t bit = uint32_t(1) << mine;
  // (set before the counts: a drain that sees the bit late picks them up at the next drain, as any late count)
  if (!(usedShards_.load(std::memory_order_relaxed) & bit)) usedShards_.fetch_or(bit, std::memory_order_relaxed);
  return values_.get() + mine * counters_;
}

void Telemetry::record(const CallRecord& c) {
  std::atomic<uint64_t>* v = shard();
  auto add = [v](size_t i, uint64_t n) { v[i].fetch_add(n, std::memory_order_relaxed); };
  add(kCalls, 1);
  add(kTokens, uint64_t(c.tokens));
  add(kAssignments, uint64_t(c.assignments));
  add(kFlopsComputed, uint64_t(c.flopsComputed));
  add(kFlopsStatic, uint64_t(c.flopsStatic));
  const size_t kBase = kScalars, complexityBase = kBase + size_t(maxK_ + 2);
  const size_t stageBase = complexityBase + kComplexityBuckets;
  const size_t durationBase = stageBase + size_t(kStages) * kDurationBuckets;
  const size_t expertBase = durationBase + kDurationBuckets;
  // Per-token histograms: counted locally first, so a call costs O(maxK) atomics, not O(T).
  uint64_t kLocal[64] = {};
  uint64_t complexityLocal[kComplexityBuckets] = {};
  double complexitySum = 0;
  for (int64_t t = 0; t < c.tokens; ++t) {
    const int k = c.k[t];
    if (k < 63) ++kLocal[k];
    else add(kBase + size_t(k <= maxK_ ? k : maxK_ + 1), 1);
    if (c.complexity) {
      const float x = std::isfinite(c.complexity[t]) ? c.complexity[t] : 0.0f;
      int b = int(std::ceil(double(x) * 10.0)) - 1;
      b = b < 0 ? 0 : (b > kComplexityBuckets - 1 ? kComplexityBuckets - 1 : b);
      ++complexityLocal[b];
      complexitySum += x;
    }
  }
  for (int k = 0; k < 63; ++k)
    if (kLocal[k]) add(kBase + size_t(k <= maxK_ ? k : maxK_ + 1), kLocal[k]);
  add(kKSum, uint64_t(c.assignments));
  if (c.complexity) {
    for (int b = 0; b < kComplexityBuckets; ++b)
      if (complexityLocal[b]) add(complexityBase + size_t(b), complexityLocal[b]);
    add(kComplexitySumNano, uint64_t(complexitySum * kNano));
  }
  const SpanRecord& s = c.span;
  const int64_t stageNs[kStages] = {c.complexityNs, s.gatingEndNs - s.startNs, s.dispatchEndNs - s.gatingEndNs,
                                    s.expertEndNs - s.dispatchEndNs, s.combineEndNs - s.expertEndNs};
  for (int st = 0; st < kStages; ++st) {
    if (st == 0 && c.complexityNs <= 0) continue;
    if (st >= 2 && s.combineEndNs == s.gatingEndNs) break;  // a bare router has no later stages
    add(stageBase + size_t(st) * kDurationBuckets + size_t(durationBucket(stageNs[st] / kNano)), 1);
    add(kStageSumNs + size_t(st), uint64_t(stageNs[st]));
  }
  const int64_t totalNs = s.combineEndNs - s.startNs + c.complexityNs;
  add(durationBase + size_t(durationBucket(totalNs / kNano)), 1);
  add(kDurationSumNs, uint64_t(totalNs));
  int64_t active = 0;
  double assigned = 0, squares = 0;  // the expert counts' sum and sum of squares
  for (int e = 0; e < numExperts_; ++e)
    if (c.expertCounts[e]) {
      add(expertBase + size_t(e), uint64_t(c.expertCounts[e]));
      ++active;
      assigned += double(c.expertCounts[e]);
      squares += double(c.expertCounts[e]) * double(c.expertCounts[e]);
    }
  SpanRecord span = s;
  span.activeExperts = active;
  // the shares p_e = count_e / sum: their standard deviation over their mean 1/E is sqrt(E * sum(p_e^2) - 1)
  span.loadBalanceCv = assigned > 0
                           ? std::sqrt(std::max(0.0, double(numExperts_) * squares / (assigned * assigned) - 1.0))
                           : std::numeric_limits<double>::quiet_NaN();
  span.tokens = c.tokens;
  span.complexityNs = c.complexityNs;
  span.meanK = c.tokens ? double(c.assignments) / double(c.tokens) : 0;
  span.flopsComputed = c.flopsComputed;
  span.flopsStatic = c.flopsStatic;
  spans_.push(span);
}

void Telemetry::recordCounts(uint64_t calls, uint64_t tokens, uint64_t assignments, const uint64_t* expertTokens) {
  std::atomic<uint64_t>* v = shard();
  auto add = [v](size_t i, uint64_t n) {
    if (n) v[i].fetch_add(n, std::memory_order_relaxed);
  };
  add(kCalls, calls);
  add(kTokens, tokens);
  add(kAssignments, assignments);
  add(kKSum, assignments);
  const size_t expertBase = kScalars + size_t(maxK_ + 2) + kComplexityBuckets + size_t(kStages) * kDurationBuckets +
                            kDurationBuckets;
  for (int e = 0; e < numExperts_; ++e) add(expertBase + size_t(e), expertTokens[e]);
}

void Telemetry::recordError(ErrorKind kind) { shard()[kErrors + size_t(kind)].fetch_add(1, std::memory_order_relaxed); }

double Telemetry::windowLoadBalance(const std::vector<uint64_t>& expertTokens) {
  for (int e = 0; e < numExperts_; ++e) {
    balanceTokens_[size_t(e)] += expertTokens[size_t(e)];
    balanceAssignments_ += expertTokens[size_t(e)];
  }
  if (balanceAssignments_ == 0 || balanceAssignments_ < uint64_t(numExperts_))
    return std::numeric_limits<double>::quiet_NaN();
  double entropy = 0;
  for (uint64_t& n : balanceTokens_) {
    if (n) {
      const double share = double(n) / double(balanceAssignments_);
      entropy -= share * std::log(share);
    }
    n = 0;
  }
  balanceAssignments_ = 0;
  return numExperts_ > 1 ? std::clamp(entropy / std::log(double(numExperts_)), 0.0, 1.0) : 1.0;
}

Delta Telemetry::drain() {
  std::lock_guard<std::mutex> lock(drainMutex_);
  std::vector<uint64_t>& now = now_;
  now.assign(counters_, 0);
  const uint32_t used = usedShards_.load(std::memory_order_relaxed);
  for (int s = 0; s < kShards; ++s) {
    if (!(used & (uint32_t(1) << s))) continue;
    const std::atomic<uint64_t>* v = values_.get() + size_t(s) * counters_;
    for (size_t i = 0; i < counters_; ++i) now[i] += v[i].load(std::memory_order_relaxed);
  }
  for (size_t i = 0; i < counters_; ++i) {
    now[i] -= previous_[i];
    previous_[i] += now[i];
  }
  Delta d;
  d.calls = now[kCalls];
  d.tokens = now[kTokens];
  d.assignments = now[kAssignments];
  for (int e = 0; e < kErrorKinds; ++e) d.errors[e] = now[kErrors + size_t(e)];
  d.flopsComputed = double(now[kFlopsComputed]);
  d.flopsStatic = double(now[kFlopsStatic]);
  const size_t kBase = kScalars, complexityBase = kBase + size_t(maxK_ + 2);
  const size_t stageBase = complexityBase + kComplexityBuckets;
  const size_t durationBase = stageBase + size_t(kStages) * kDurationBuckets;
  const size_t expertBase = durationBase + kDurationBuckets;
  d.kBuckets.assign(now.begin() + long(kBase), now.begin() + long(complexityBase));
  // Counts are the sums of the buckets drained together, so a drain racing a record never splits them.
  d.kCount = 0;
  for (uint64_t v : d.kBuckets) d.kCount += v;
  d.kSum = double(now[kKSum]);
  for (int b = 0; b < kComplexityBuckets; ++b) d.complexityBuckets[b] = now[complexityBase + size_t(b)];
  d.complexityCount = 0;
  for (uint64_t v : d.complexityBuckets) d.complexityCount += v;
  d.complexitySum = double(now[kComplexitySumNano]) / kNano;
  for (int st = 0; st < kStages; ++st) {
    for (int b = 0; b < kDurationBuckets; ++b) d.stageBuckets[st][b] = now[stageBase + size_t(st) * kDurationBuckets + size_t(b)];
    d.stageCount[st] = 0;
    for (uint64_t v : d.stageBuckets[st]) d.stageCount[st] += v;
    d.stageSum[st] = double(now[kStageSumNs + size_t(st)]) / kNano;
  }
  for (int b = 0; b < kDurationBuckets; ++b) d.durationBuckets[b] = now[durationBase + size_t(b)];
  d.durationCount = 0;
  for (uint64_t v : d.durationBuckets) d.durationCount += v;
  d.durationSum = double(now[kDurationSumNs]) / kNano;
  d.expertTokens.assign(now.begin() + long(expertBase), now.begin() + long(expertBase) + numExperts_);
  d.loadBalance = windowLoadBalance(d.expertTokens);
  d.spansDropped = spans_.drain(d.spans);
  return d;
}

}  // namespace moe::telemetry
