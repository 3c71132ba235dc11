// NativeRouter binding: translates typed arrays into moe::Router calls, synchronously or on the libuv pool.
//
// route(mode, input, T, indices, weights, k, counts, stats, logits?, probs?, complexity?, complexityNs?)
//   mode 0: input is x [T, d]; mode 1: input is logits [T, E] (selection only).
//   stats (Float64Array(5)) receives meanK, auxLoss, zLoss, loadBalance, assignments.
#include "router_wrap.h"

#include <cmath>
#include <vector>

#include "addon_data.h"
#include "args.h"
#include "async_gate.h"
#include "telemetry_wrap.h"

namespace moe_binding {

namespace {

constexpr int64_t kMaxTokens = int64_t(1) << 26;

struct RouteCall {
  bool fromLogits = false;
  const float* input = nullptr;
  int64_t T = 0;
  moe::RoutingOutput out;
  const float* complexity = nullptr;
  int64_t complexityNs = 0;
  double* statsOut = nullptr;
  std::string error;

  void run(moe::Router& router) {
    moe::RoutingStats stats;
    error = fromLogits ? router.select(input, T, complexity, out, stats, complexityNs)
                       : router.route(input, T, complexity, out, stats, complexityNs);
    statsOut[0] = stats.meanK;
    statsOut[1] = stats.auxLoss;
    statsOut[2] = stats.zLoss;
    statsOut[3] = stats.loadBalance;
    statsOut[4] = double(stats.assignments);
  }
};

RouteCall parseRouteCall(const Napi::CallbackInfo& info, const moe::RouterConfig& cfg) {
  RouteCall c;
  c.fromLogits = intArg(info, 0, "mode", 0, 1) == 1;
  c.T = intArg(info, 2, "tokens", 1, kMaxTokens);
  const size_t T = size_t(c.T), E = size_t(cfg.numExperts), K = size_t(cfg.maxK);
  c.input = typedArrayArg<float>(info, 1, c.fromLogits ? "logits" : "x", T * (c.fromLogits ? E : cfg.hiddenSize));
  c.out.indices = typedArrayArg<int32_t>(info, 3, "indices", T * K);
  c.out.weights = typedArrayArg<float>(info, 4, "weights", T * K);
  c.out.k = typedArrayArg<int32_t>(info, 5, "k", T);
  c.out.expertCounts = typedArrayArg<int32_t>(info, 6, "counts", E);
  c.statsOut = typedArrayArg<double>(info, 7, "stats", 5);
  if (!c.fromLogits) c.out.logits = typedArrayArg<float>(info, 8, "logits", T * E, true);
  c.out.probs = typedArrayArg<float>(info, 9, "probs", T * E, true);
  c.complexity = typedArrayArg<float>(info, 10, "complexity", T, true);
  c.complexityNs = steadyNsArg(info, 11);
  if (cfg.selection == moe::Selection::Dynamic && !c.complexity)
    throwValidation(info.Env(), "complexity: the dynamic rule needs a Float32Array of per-token scores");
  return c;
}

class RouteWorker : public GatedWorker {
 public:
  RouteWorker(Napi::Env env, std::shared_ptr<moe::Router> router, RouteCall call, const Napi::CallbackInfo& info)
      : GatedWorker(env, "moe.route"),
        router_(std::move(router)),
        call_(std::move(call)),
        deferred_(Napi::Promise::Deferred::New(env)) {
    // Every typed array argument stays referenced until the worker is done with its memory.
    for (size_t i = 1; i < info.Length(); ++i) pinned_.push_back(pin(info[i]));
  }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Run() override {
    try {
      call_.run(*router_);
      if (!call_.error.empty()) SetError(call_.error);
    } catch (const std::exception& e) {
      router_->telemetry().recordError(moe::telemetry::ErrorKind::Internal);
      internal_ = true;
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(makeError(Env(), internal_ ? "ERR_MOE_INTERNAL" : "ERR_MOE_VALIDATION", e.Message()).Value());
  }

 private:
  std::shared_ptr<moe::Router> router_;
  RouteCall call_;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> pinned_;
  bool internal_ = false;  // a C++ exception (e.g. bad_alloc), not bad input
};

moe::RouterConfig parseConfig(const Napi::Object& o) {
  moe::RouterConfig cfg;
  cfg.numExperts = int32Prop(o, "numExperts", 0);
  cfg.hiddenSize = int32Prop(o, "hiddenSize", 0);
  cfg.scoring = moe::Scoring(int32Prop(o, "scoring", 0));
  cfg.selection = moe::Selection(int32Prop(o, "selection", 0));
  cfg.k = int32Prop(o, "k", 1);
  cfg.p = float(numberProp(o, "p", 1));
  cfg.tau = float(numberProp(o, "tau", 0));
  cfg.minK = int32Prop(o, "minK", 1);
  cfg.maxK = int32Prop(o, "maxK", 1);
  cfg.nGroup = int32Prop(o, "nGroup", 0);
  cfg.topkGroup = int32Prop(o, "topkGroup", 0);
  cfg.groupScore = moe::GroupScore(int32Prop(o, "groupScore", 0));
  cfg.normalize = o.Get("normalize").ToBoolean();
  cfg.scale = float(numberProp(o, "scale", 1));
  return cfg;
}

// The last line of defence; lib/router.ts gives the user-facing messages for all of these.
void checkConfig(Napi::Env env, const moe::RouterConfig& c) {
  auto fail = [&](const std::string& m) { throwValidation(env, "router config: " + m); };
  if (c.numExperts < 1 || c.numExperts > 65536) fail("numExperts out of range");
  if (c.hiddenSize < 1 || c.hiddenSize > (1 << 20)) fail("hiddenSize out of range");
  if (int(c.scoring) < 0 || int(c.scoring) > 1 || int(c.selection) < 0 || int(c.selection) > 4) fail("bad enum");
  if (c.maxK < 1 || c.maxK > c.numExperts || c.minK < 1 || c.minK > c.maxK) fail("minK/maxK out of range");
  if (c.k < 1 || c.k > c.maxK) fail("k out of range");
  if (c.nGroup < 0 || c.nGroup > 1024 || (c.nGroup > 0 && (c.numExperts % c.nGroup != 0 || c.topkGroup < 1 ||
                                                           c.topkGroup > c.nGroup)))
    fail("groups out of range");
  if (c.nGroup > 0 && c.maxK > c.topkGroup * (c.numExperts / c.nGroup)) fail("maxK exceeds the kept groups");
  if (!(c.p >= 0 && c.p <= 1) || !(c.tau >= 0 && c.tau <= 1) || !std::isfinite(c.scale)) fail("p, tau or scale");
}

}  // namespace

Napi::Function RouterWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeRouter",
                     {InstanceMethod<&RouterWrap::Route>("route"),
                      InstanceMethod<&RouterWrap::RouteAsync>("routeAsync"),
                      InstanceMethod<&RouterWrap::Gate>("gate"), InstanceMethod<&RouterWrap::Info>("info"),
                      InstanceMethod<&RouterWrap::DrainTelemetry>("drainTelemetry"),
                      InstanceMethod<&RouterWrap::RecordError>("recordError")});
}

// new NativeRouter(config, gateWeight [E*d], bias [E] | null, threads, logitBias [E] | null)
RouterWrap::RouterWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RouterWrap>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throwValidation(env, "router config: expected an object");
  moe::RouterConfig cfg = parseConfig(info[0].As<Napi::Object>());
  checkConfig(env, cfg);
  const size_t E = size_t(cfg.numExperts), d = size_t(cfg.hiddenSize);
  const float* gate = typedArrayArg<float>(info, 1, "gateWeight", E * d);
  const float* bias = typedArrayArg<float>(info, 2, "bias", E, true);
  const int threads = int(intArg(info, 3, "threads", 1, 1024));
  const float* logitBias = typedArrayArg<float>(info, 4, "logitBias", E, true);
  router_ = std::make_shared<moe::Router>(cfg, gate, bias, logitBias, addonData(env).poolFor(threads), threads);
  externalBytes_ = int64_t(router_->weightBytes());
  Napi::MemoryManagement::AdjustExternalMemory(env, externalBytes_);
  Value().TypeTag(&kRouterTag);
}

RouterWrap::~RouterWrap() {
  if (externalBytes_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -externalBytes_);
}

RouterWrap* RouterWrap::FromValue(Napi::Env env, Napi::Value value, const char* what) {
  if (!value.IsObject() || !value.As<Napi::Object>().CheckTypeTag(&kRouterTag))
    throwValidation(env, std::string(what) + ": expected a NativeRouter");
  return Napi::ObjectWrap<RouterWrap>::Unwrap(value.As<Napi::Object>());
}

Napi::Value RouterWrap::Route(const Napi::CallbackInfo& info) {
  RouteCall call = parseRouteCall(info, router_->config());
  call.run(*router_);
  if (!call.error.empty()) throwValidation(info.Env(), call.error);
  return info.Env().Undefined();
}

Napi::Value RouterWrap::RouteAsync(const Napi::CallbackInfo& info) {
  RouteCall call = parseRouteCall(info, router_->config());
  auto* worker = new RouteWorker(info.Env(), router_, std::move(call), info);
  Napi::Promise promise = worker->promise();
  GatedWorker::Submit(worker);
  return promise;
}

// gate(x, T, logits)
Napi::Value RouterWrap::Gate(const Napi::CallbackInfo& info) {
  const moe::RouterConfig& cfg = router_->config();
  const int64_t T = intArg(info, 1, "tokens", 1, kMaxTokens);
  const float* x = typedArrayArg<float>(info, 0, "x", size_t(T) * cfg.hiddenSize);
  float* logits = typedArrayArg<float>(info, 2, "logits", size_t(T) * cfg.numExperts);
  router_->gate(x, T, logits);
  return info.Env().Undefined();
}

Napi::Value RouterWrap::DrainTelemetry(const Napi::CallbackInfo& info) {
  moe::telemetry::Delta d = router_->telemetry().drain();
  return telemetryToJs(info.Env(), d, "router", router_->config().numExperts, double(router_->weightBytes()),
                       info[0]);
}

Napi::Value RouterWrap::RecordError(const Napi::CallbackInfo& info) {
  recordErrorArg(info, router_->telemetry());
  return info.Env().Undefined();
}

Napi::Value RouterWrap::Info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("threads", router_->threads());
  o.Set("weightBytes", double(router_->weightBytes()));
  return o;
}

}  // namespace moe_binding
