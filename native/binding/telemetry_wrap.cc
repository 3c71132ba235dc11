// TelemetryDelta objects for drainTelemetry(). Runs at scrape time, never on the compute path.
#include "telemetry_wrap.h"

#include "args.h"

namespace moe_binding {

namespace {

using moe::telemetry::kDurationBounds;
using moe::telemetry::kDurationBuckets;

template <typename T>
Napi::Array numbers(Napi::Env env, const T* values, size_t n) {
  Napi::Array a = Napi::Array::New(env, n);
  for (size_t i = 0; i < n; ++i) a.Set(uint32_t(i), Napi::Number::New(env, double(values[i])));
  return a;
}

Napi::Object histogram(Napi::Env env, Napi::Array bounds, const uint64_t* counts, size_t n, double sum,
                       uint64_t count) {
  Napi::Object h = Napi::Object::New(env);
  h.Set("bounds", bounds);
  h.Set("counts", numbers(env, counts, n));
  h.Set("sum", sum);
  h.Set("count", double(count));
  return h;
}

Napi::Array durationBounds(Napi::Env env) { return numbers(env, kDurationBounds, kDurationBuckets - 1); }

}  // namespace

Napi::Object telemetryToJs(Napi::Env env, const moe::telemetry::Delta& d, const char* kind, int numExperts,
                           double memoryBytes) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("kind", kind);
  o.Set("numExperts", numExperts);
  o.Set("calls", double(d.calls));
  o.Set("tokens", double(d.tokens));
  Napi::Object errors = Napi::Object::New(env);
  errors.Set("validation", double(d.errors[0]));
  errors.Set("non_finite", double(d.errors[1]));
  errors.Set("internal", double(d.errors[2]));
  o.Set("errors", errors);
  o.Set("assignments", double(d.assignments));
  o.Set("flopsComputed", d.flopsComputed);
  o.Set("flopsStatic", d.flopsStatic);
  std::vector<double> kBounds(d.kBuckets.size() - 1);
  for (size_t i = 0; i < kBounds.size(); ++i) kBounds[i] = double(i);
  o.Set("expertsPerToken", histogram(env, numbers(env, kBounds.data(), kBounds.size()), d.kBuckets.data(),
                                     d.kBuckets.size(), d.kSum, d.kCount));
  double complexityBounds[moe::telemetry::kComplexityBuckets - 1];
  for (int i = 0; i < moe::telemetry::kComplexityBuckets - 1; ++i) complexityBounds[i] = (i + 1) / 10.0;
  o.Set("complexity", histogram(env, numbers(env, complexityBounds, moe::telemetry::kComplexityBuckets - 1),
                                d.complexityBuckets, moe::telemetry::kComplexityBuckets, d.complexitySum,
                                d.complexityCount));
  static const char* const kStageNames[] = {"complexity", "gating", "dispatch", "expert_gemm", "combine"};
  Napi::Object stages = Napi::Object::New(env);
  for (int s = 0; s < moe::telemetry::kStages; ++s)
    stages.Set(kStageNames[s], histogram(env, durationBounds(env), d.stageBuckets[s], kDurationBuckets,
                                         d.stageSum[s], d.stageCount[s]));
  o.Set("stageSeconds", stages);
  o.Set("durationSeconds",
        histogram(env, durationBounds(env), d.durationBuckets, kDurationBuckets, d.durationSum, d.durationCount));
  o.Set("expertTokens", numbers(env, d.expertTokens.data(), d.expertTokens.size()));
  o.Set("loadBalance", d.loadBalance);
  o.Set("memoryBytes", memoryBytes);
  Napi::Array spans = Napi::Array::New(env, d.spans.size());
  for (size_t i = 0; i < d.spans.size(); ++i) {
    const auto& r = d.spans[i];
    Napi::Object s = Napi::Object::New(env);
    s.Set("startNs", double(r.startNs));
    if (r.complexityNs > 0) s.Set("complexityStartNs", double(r.startNs - r.complexityNs));
    s.Set("gatingEndNs", double(r.gatingEndNs));
    s.Set("dispatchEndNs", double(r.dispatchEndNs));
    s.Set("expertEndNs", double(r.expertEndNs));
    s.Set("combineEndNs", double(r.combineEndNs));
    s.Set("tokens", double(r.tokens));
    s.Set("meanK", r.meanK);
    s.Set("flopsComputed", r.flopsComputed);
    s.Set("flopsStatic", r.flopsStatic);
    spans.Set(uint32_t(i), s);
  }
  o.Set("spans", spans);
  o.Set("spansDropped", double(d.spansDropped));
  return o;
}

void recordErrorArg(const Napi::CallbackInfo& info, moe::telemetry::Telemetry& telemetry) {
  const int kind = int(intArg(info, 0, "kind", 0, moe::telemetry::kErrorKinds - 1));
  telemetry.recordError(moe::telemetry::ErrorKind(kind));
}

}  // namespace moe_binding
