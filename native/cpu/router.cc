// Router: gate GEMM followed by selection, with the scratch they share.
#include "moe/router.h"

#include "moe/gemm.h"

namespace moe {

Router::Router(const RouterConfig& cfg, const float* gateWeight, const float* bias, const float* logitBias,
               std::shared_ptr<ThreadPool> pool, int threads)
    : cfg_(cfg), pool_(std::move(pool)), threads_(threads), telemetry_(cfg.numExperts, cfg.maxK) {
  packedGate_.ensure(packedSizeF32(cfg.numExperts, cfg.hiddenSize));
  packPanelsF32(gateWeight, size_t(cfg.hiddenSize), cfg.numExperts, cfg.hiddenSize, packedGate_.data());
  if (bias) bias_.assign(bias, bias + cfg.numExperts);
  if (logitBias) logitBias_.assign(logitBias, logitBias + cfg.numExperts);
  cfg_.hasBias = bias != nullptr;
}

void Router::computeLogits(const float* x, int64_t T, float* logits) {
  gateLogits(x, T, cfg_.hiddenSize, packedGate_.data(), cfg_.numExperts, logits, *pool_, threads_);
  if (logitBias_.empty()) return;
  for (int64_t t = 0; t < T; ++t)
    for (int32_t e = 0; e < cfg_.numExperts; ++e) logits[t * cfg_.numExperts + e] += logitBias_[size_t(e)];
}

std::vector<float> Router::gateWeight() const {
  const int64_t E = cfg_.numExperts, d = cfg_.hiddenSize;
  std::vector<float> w(size_t(E * d));
  for (int64_t e = 0; e < E; ++e) {
    const float* panel = packedGate_.data() + size_t(e / kPanelWidth) * size_t(d) * kPanelWidth;
    for (int64_t k = 0; k < d; ++k) w[size_t(e * d + k)] = panel[k * kPanelWidth + e % kPanelWidth];
  }
  return w;
}

void Router::gate(const float* x, int64_t T, float* logits) {
  std::lock_guard<std::mutex> lock(mutex_);
  computeLogits(x, T, logits);
}

telemetry::CallRecord callRecordOf(int64_t T, const float* complexity, const RoutingOutput& out,
                                   const RoutingStats& stats, int64_t complexityNs) {
  telemetry::CallRecord call;
  call.tokens = T;
  call.assignments = stats.assignments;
  call.k = out.k;
  call.complexity = complexity;
  call.expertCounts = out.expertCounts;
  call.complexityNs = complexityNs;
  return call;
}

std::string Router::finishCall(std::string error, int64_t startNs, int64_t T, const float* complexity,
                               const RoutingOutput& out, const RoutingStats& stats, int64_t complexityNs,
                               bool record) {
  if (!record) return error;
  if (!error.empty()) {
    telemetry_.recordError(telemetry::ErrorKind::NonFinite);
    return error;
  }
  telemetry::CallRecord call = callRecordOf(T, complexity, out, stats, complexityNs);
  call.span.startNs = startNs;
  call.span.gatingEndNs = call.span.dispatchEndNs = call.span.expertEndNs = call.span.combineEndNs =
      telemetry::nowNs();
  telemetry_.record(call);
  return error;
}

std::string Router::route(const float* x, int64_t T, const float* complexity, RoutingOutput& out,
                          RoutingStats& stats, int64_t complexityNs, bool record) {
  const int64_t start = telemetry::nowNs();
  std::lock_guard<std::mutex> lock(mutex_);
  float* logits = out.logits;
  if (!logits) {
    logitsScratch_.ensure(size_t(T) * cfg_.numExperts);
    logits = logitsScratch_.data();
  }
  computeLogits(x, T, logits);
  std::string error = selectExperts(cfg_, logits, T, bias_.empty() ? nullptr : bias_.data(), complexity, out, stats,
                                    *pool_, threads_, scratch_);
  return finishCall(std::move(error), start, T, complexity, out, stats, complexityNs, record);
}

std::string Router::select(const float* logits, int64_t T, const float* complexity, RoutingOutput& out,
                           RoutingStats& stats, int64_t complexityNs, bool record) {
  const int64_t start = telemetry::nowNs();
  std::lock_guard<std::mutex> lock(mutex_);
  std::string error = selectExperts(cfg_, logits, T, bias_.empty() ? nullptr : bias_.data(), complexity, out, stats,
                                    *pool_, threads_, scratch_);
  return finishCall(std::move(error), start, T, complexity, out, stats, complexityNs, record);
}

}  // namespace moe
