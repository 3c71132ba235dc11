// A bounded, lock-free ring of per-call span records. Writers never wait: a full ring overwrites its oldest
// record. The single drainer reads what is still intact (a per-slot sequence number detects records that were
// overwritten while being read) and counts everything it missed as dropped.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

namespace moe::telemetry {

struct SpanRecord {
  int64_t startNs = 0, gatingEndNs = 0, dispatchEndNs = 0, expertEndNs = 0, combineEndNs = 0;
  int64_t tokens = 0;
  int64_t complexityNs = 0;  // complexity estimation that ended at startNs (0: none)
  int64_t activeExperts = 0;  // experts given at least one token
  double meanK = 0, flopsComputed = 0, flopsStatic = 0;
  double loadBalanceCv = 0;  // coefficient of variation of the experts' shares of the assignments (NaN: none)
};

class SpanRing {
 public:
  explicit SpanRing(size_t capacity) : slots_(capacity) {}

  void push(const SpanRecord& r) {
    const uint64_t index = head_.fetch_add(1, std::memory_order_relaxed);
    Slot& s = slots_[index % slots_.size()];
    s.seq.store(2 * index + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    s.i[0].store(r.startNs, std::memory_order_relaxed);
    s.i[1].store(r.gatingEndNs, std::memory_order_relaxed);
    s.i[2].store(r.dispatchEndNs, std::memory_order_relaxed);
    s.i[3].store(r.expertEndNs, std::memory_order_relaxed);
    s.i[4].store(r.combineEndNs, std::memory_order_relaxed);
    s.i[5].store(r.tokens, std::memory_order_relaxed);
    s.i[6].store(r.complexityNs, std::memory_order_relaxed);
    s.i[7].store(r.activeExperts, std::memory_order_relaxed);
    s.d[0].store(r.meanK, std::memory_order_relaxed);
    s.d[1].store(r.flopsComputed, std::memory_order_relaxed);
    s.d[2].store(r.flopsStatic, std::memory_order_relaxed);
    s.d[3].store(r.loadBalanceCv, std::memory_order_relaxed);
    s.seq.store(2 * index + 2, std::memory_order_release);
  }

  // Appends the records since the last drain to `out`; returns how many were lost. One drainer at a time.
  uint64_t drain(std::vector<SpanRecord>& out) {
    const uint64_t head = head_.load(std::memory_order_acquire);
    uint64_t dropped = 0;
    if (head - tail_ > slots_.size()) {
      dropped += head - tail_ - slots_.size();
      tail_ = head - slots_.size();
    }
    for (; tail_ < head; ++tail_) {
      Slot& s = slots_[tail_ % slots_.size()];
      const uint64_t seq = s.seq.load(std::memory_order_acquire);
      if (seq == 2 * tail_ + 1 || seq < 2 * tail_ + 1) break;  // still being written: the next drain takes it
      if (seq != 2 * tail_ + 2) {
        ++dropped;  // overwritten by a newer call
        continue;
      }
      SpanRecord r;
      r.startNs = s.i[0].load(std::memory_order_relaxed);
      r.gatingEndNs = s.i[1].load(std::memory_order_relaxed);
      r.dispatchEndNs = s.i[2].load(std::memory_order_relaxed);
      r.expertEndNs = s.i[3].load(std::memory_order_relaxed);
      r.combineEndNs = s.i[4].load(std::memory_order_relaxed);
      r.tokens = s.i[5].load(std::memory_order_relaxed);
      r.complexityNs = s.i[6].load(std::memory_order_relaxed);
      r.activeExperts = s.i[7].load(std::memory_order_relaxed);
      r.meanK = s.d[0].load(std::memory_order_relaxed);
      r.flopsComputed = s.d[1].load(std::memory_order_relaxed);
      r.flopsStatic = s.d[2].load(std::memory_order_relaxed);
      r.loadBalanceCv = s.d[3].load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (s.seq.load(std::memory_order_relaxed) != 2 * tail_ + 2) {
        ++dropped;
        continue;
      }
      out.push_back(r);
    }
    return dropped;
  }

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> seq{0};
    std::atomic<int64_t> i[8] = {};
    std::atomic<double> d[4] = {};
  };
  std::vector<Slot> slots_;
  std::atomic<uint64_t> head_{0};
  uint64_t tail_ = 0;  // drainer only
};

}  // namespace moe::telemetry
