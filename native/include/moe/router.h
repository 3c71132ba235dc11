// A router owns its packed gate weight, its bias, its scratch and a handle on the compute pool. It is the
// object the binding wraps; one call routes a whole batch.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "moe/aligned.h"
#include "moe/gating.h"
#include "moe/thread_pool.h"
#include "moe/types.h"
#include "telemetry/telemetry.h"

namespace moe {

// The telemetry record of one routing result; callers add FLOPs and stage timestamps.
telemetry::CallRecord callRecordOf(int64_t T, const float* complexity, const RoutingOutput& out,
                                   const RoutingStats& stats, int64_t complexityNs);

class Router {
 public:
  // gateWeight is [E, d] row-major (Hugging Face layout); bias is [E] or null and only steers the choice;
  // logitBias is [E] or null and is added to the logits (a gate with a bias term, as in gpt-oss). All copied.
  Router(const RouterConfig& cfg, const float* gateWeight, const float* bias, const float* logitBias,
         std::shared_ptr<ThreadPool> pool, int threads);

  const RouterConfig& config() const { return cfg_; }
  ThreadPool& pool() { return *pool_; }
  std::shared_ptr<ThreadPool> sharedPool() { return pool_; }
  int threads() const { return threads_; }
  size_t weightBytes() const { return packedGate_.bytes() + bias_.size() * sizeof(float); }

  // x [T, d] -> routing. When out.logits is null the logits go to internal scratch.
  // Returns an empty string on success, else a message (non-finite logits).
  // `complexityNs` is the time the caller spent estimating complexity; `record` false skips telemetry (a
  // layer records the whole forward itself).
  std::string route(const float* x, int64_t T, const float* complexity, RoutingOutput& out, RoutingStats& stats,
                    int64_t complexityNs = 0, bool record = true);
  // Selection only, from caller logits [T, E].
  std::string select(const float* logits, int64_t T, const float* complexity, RoutingOutput& out,
                     RoutingStats& stats, int64_t complexityNs = 0, bool record = true);
  telemetry::Telemetry& telemetry() { return telemetry_; }
  // Logits only.
  void gate(const float* x, int64_t T, float* logits);
  // The gate weight [E, d] in Hugging Face layout (unpacked from the panels), and the two biases (empty: none).
  std::vector<float> gateWeight() const;
  const std::vector<float>& bias() const { return bias_; }
  const std::vector<float>& logitBias() const { return logitBias_; }

 private:
  RouterConfig cfg_;
  AlignedBuffer<float> packedGate_;
  void computeLogits(const float* x, int64_t T, float* logits);
  std::string finishCall(std::string error, int64_t startNs, int64_t T, const float* complexity,
                         const RoutingOutput& out, const RoutingStats& stats, int64_t complexityNs, bool record);

  std::vector<float> bias_;
  std::vector<float> logitBias_;
  std::shared_ptr<ThreadPool> pool_;
  int threads_;
  std::mutex mutex_;  // one call at a time owns the scratch below
  GatingScratch scratch_;
  AlignedBuffer<float> logitsScratch_;
  telemetry::Telemetry telemetry_;
};

}  // namespace moe
