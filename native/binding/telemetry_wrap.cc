// The flat drain record of drainTelemetry() (layout in telemetry_wrap.h). Runs at scrape time, never on the
// compute path: one typed array instead of a tree of ~350 N-API property and element writes.
#include "telemetry_wrap.h"

#include <algorithm>
#include <string>
#include <vector>

#include "args.h"

namespace moe_binding {

namespace {

using moe::telemetry::kDurationBounds;
using moe::telemetry::kDurationBuckets;

// Appends doubles to the flat drain record (see the layout in telemetry_wrap.h).
class Writer {
 public:
  explicit Writer(std::vector<double>& out) : out_(out) { out_.clear(); }
  template <typename T>
  void put(T v) {
    out_.push_back(double(v));
  }
  template <typename T>
  void putAll(const T* values, size_t n) {
    for (size_t i = 0; i < n; ++i) put(values[i]);
  }
  void histogram(const double* bounds, size_t nBounds, const uint64_t* counts, double sum, uint64_t count) {
    put(nBounds);
    putAll(bounds, nBounds);
    putAll(counts, nBounds + 1);
    put(sum);
    put(count);
  }

 private:
  std::vector<double>& out_;
};

}  // namespace

Napi::Value telemetryToJs(Napi::Env env, const moe::telemetry::Delta& d, const char* kind, int numExperts,
                          double memoryBytes, Napi::Value into) {
  thread_local std::vector<double> flat;  // capacity kept: a drain allocates nothing here once warm
  flat.reserve(512 + d.expertTokens.size() + d.spans.size() * kTelemetrySpanFields);
  Writer w(flat);
  w.put(kTelemetryLayoutVersion);
  w.put(std::string(kind) == "layer" ? 1 : 0);
  w.put(numExperts);
  w.put(d.calls);
  w.put(d.tokens);
  w.putAll(d.errors, moe::telemetry::kErrorKinds);
  w.put(d.assignments);
  w.put(d.flopsComputed);
  w.put(d.flopsStatic);
  w.put(d.loadBalance);
  w.put(memoryBytes);
  w.put(d.spansDropped);
  w.put(d.expertTokens.size());
  w.put(d.spans.size());
  std::vector<double> kBounds(d.kBuckets.size() - 1);
  for (size_t i = 0; i < kBounds.size(); ++i) kBounds[i] = double(i);
  w.histogram(kBounds.data(), kBounds.size(), d.kBuckets.data(), d.kSum, d.kCount);
  double complexityBounds[moe::telemetry::kComplexityBuckets - 1];
  for (int i = 0; i < moe::telemetry::kComplexityBuckets - 1; ++i) complexityBounds[i] = (i + 1) / 10.0;
  w.histogram(complexityBounds, moe::telemetry::kComplexityBuckets - 1, d.complexityBuckets, d.complexitySum,
              d.complexityCount);
  for (int s = 0; s < moe::telemetry::kStages; ++s)
    w.histogram(kDurationBounds, kDurationBuckets - 1, d.stageBuckets[s], d.stageSum[s], d.stageCount[s]);
  w.histogram(kDurationBounds, kDurationBuckets - 1, d.durationBuckets, d.durationSum, d.durationCount);
  w.putAll(d.expertTokens.data(), d.expertTokens.size());
  for (const auto& r : d.spans) {
    w.put(r.startNs);
    w.put(r.complexityNs > 0 ? r.startNs - r.complexityNs : -1);
    w.put(r.gatingEndNs);
    w.put(r.dispatchEndNs);
    w.put(r.expertEndNs);
    w.put(r.combineEndNs);
    w.put(r.tokens);
    w.put(r.meanK);
    w.put(r.flopsComputed);
    w.put(r.flopsStatic);
    w.put(r.activeExperts);
    w.put(r.loadBalanceCv);
  }
  if (into.IsTypedArray() && into.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
    Napi::Float64Array given = into.As<Napi::Float64Array>();
    bool detached = false;
    napi_is_detached_arraybuffer(env, given.ArrayBuffer(), &detached);
    if (!detached && given.ElementLength() >= flat.size()) {
      std::copy(flat.begin(), flat.end(), given.Data());
      return Napi::Number::New(env, double(flat.size()));
    }
  }
  Napi::Float64Array out = Napi::Float64Array::New(env, flat.size());
  std::copy(flat.begin(), flat.end(), out.Data());
  return out;
}

void recordErrorArg(const Napi::CallbackInfo& info, moe::telemetry::Telemetry& telemetry) {
  const int kind = int(intArg(info, 0, "kind", 0, moe::telemetry::kErrorKinds - 1));
  telemetry.recordError(moe::telemetry::ErrorKind(kind));
}

}  // namespace moe_binding
