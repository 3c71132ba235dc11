// NativeLayer binding.
//   new NativeLayer(router, dtype (0 fp32 | 1 bf16 | 2 fp8), staticK, threads, shareWeightsOf?: NativeLayer,
//                   activation?: { alpha?, limit?, weightInputs? } (alpha and limit: gpt-oss's clamped SwiGLU,
//                   absent: SwiGLU; weightInputs: Llama 4's routing weight on the expert's input))
//   setExpert(e, w1 [f*d], w3 [f*d], w2 [d*f], f, ...bias) / setSharedExpert(w1, w3, w2, f, gate [d] | null, ...bias)
//   setExpertFP8(e, q1 [f*d], s1 [f*ceil(d/128)], q3, s3, q2 [d*f], s2 [d*ceil(f/128)], f, ...bias) (E4M3
//   Uint8Array, scales Float32Array) / setSharedExpertFP8(q1, s1, q3, s3, q2, s2, f, gate [d] | null, ...bias)
//   bias: gate [f] | null, up [f] | null, down [d] | null (each optional).
//   forward(x, T, y, indices, weights, k, counts, routeStats(5), layerStats(7), logits?, complexity?, complexityNs?,
//           logitsOut?, probsOut?)   (logitsOut is ignored when logits are given: they are the logits)
//   forwardAsync(...same) -> Promise<void>; every array stays referenced until it settles.
//   layerStats: flopsComputed, flopsStatic, startNs, gatingEndNs, dispatchEndNs, expertEndNs, combineEndNs.
#include "layer_wrap.h"

#include <cmath>
#include <stdexcept>
#include <vector>

#include "addon_data.h"
#include "args.h"
#include "async_gate.h"
#include "router_wrap.h"
#include "telemetry_wrap.h"

namespace moe_binding {

namespace {

constexpr int64_t kMaxIntermediate = int64_t(1) << 20;
constexpr int64_t kMaxSharedIntermediate = int64_t(1) << 22;  // DeepSeek merges n_shared_experts into one FFN

struct ForwardCall {
  const float* x = nullptr;
  int64_t T = 0;
  float* y = nullptr;
  moe::RoutingOutput routing;
  double* routeStats = nullptr;
  double* layerStats = nullptr;
  const float* logits = nullptr;
  const float* complexity = nullptr;
  int64_t complexityNs = 0;
  std::string error;

  void run(moe::Layer& layer) {
    moe::RoutingStats rs;
    moe::LayerStats ls;
    error = layer.forward(x, T, logits, complexity, y, routing, rs, ls, complexityNs);
    const double r[5] = {rs.meanK, rs.auxLoss, rs.zLoss, rs.loadBalance, double(rs.assignments)};
    std::copy(r, r + 5, routeStats);
    const double l[7] = {ls.flopsComputed,       ls.flopsStatic,          double(ls.startNs),
                         double(ls.gatingEndNs), double(ls.dispatchEndNs), double(ls.expertEndNs),
                         double(ls.combineEndNs)};
    std::copy(l, l + 7, layerStats);
  }
};

ForwardCall parseForward(const Napi::CallbackInfo& info, moe::Layer& layer) {
  const moe::RouterConfig& cfg = layer.router().config();
  ForwardCall c;
  c.T = layerTokensArg(info, 1, cfg.maxK);
  const size_t T = size_t(c.T), d = size_t(cfg.hiddenSize), E = size_t(cfg.numExperts), K = size_t(cfg.maxK);
  c.x = typedArrayArg<float>(info, 0, "x", T * d);
  c.y = typedArrayArg<float>(info, 2, "output", T * d);
  requireDisjointOutput(info.Env(), c.x, c.y, T * d);
  c.routing.indices = typedArrayArg<int32_t>(info, 3, "indices", T * K);
  c.routing.weights = typedArrayArg<float>(info, 4, "weights", T * K);
  c.routing.k = typedArrayArg<int32_t>(info, 5, "k", T);
  c.routing.expertCounts = typedArrayArg<int32_t>(info, 6, "counts", E);
  c.routeStats = typedArrayArg<double>(info, 7, "routeStats", 5);
  c.layerStats = typedArrayArg<double>(info, 8, "layerStats", 7);
  c.logits = typedArrayArg<float>(info, 9, "logits", T * E, true);
  c.complexity = typedArrayArg<float>(info, 10, "complexity", T, true);
  c.complexityNs = steadyNsArg(info, 11);
  if (!c.logits) c.routing.logits = typedArrayArg<float>(info, 12, "logitsOut", T * E, true);
  c.routing.probs = typedArrayArg<float>(info, 13, "probs", T * E, true);
  if (cfg.selection == moe::Selection::Dynamic && !c.complexity)
    throwValidation(info.Env(), "complexity: the dynamic rule needs a Float32Array of per-token scores");
  return c;
}

class ForwardWorker : public GatedWorker {
 public:
  ForwardWorker(Napi::Env env, std::shared_ptr<moe::Layer> layer, ForwardCall call, const Napi::CallbackInfo& info)
      : GatedWorker(env, "moe.forward"),
        layer_(std::move(layer)),
        call_(call),
        deferred_(Napi::Promise::Deferred::New(env)) {
    for (size_t i = 0; i < info.Length(); ++i) pinned_.push_back(pin(info[i]));
  }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Run() override {
    try {
      call_.run(*layer_);
      if (!call_.error.empty()) SetError(call_.error);
    } catch (const std::exception& e) {
      layer_->telemetry().recordError(moe::telemetry::ErrorKind::Internal);
      internal_ = true;
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(makeError(Env(), internal_ ? "ERR_MOE_INTERNAL" : "ERR_MOE_VALIDATION", e.Message()).Value());
  }

 private:
  std::shared_ptr<moe::Layer> layer_;
  ForwardCall call_;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> pinned_;
  bool internal_ = false;  // a C++ exception (e.g. bad_alloc), not bad input
};

}  // namespace

Napi::Function LayerWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeLayer",
                     {InstanceMethod<&LayerWrap::SetExpert>("setExpert"),
                      InstanceMethod<&LayerWrap::SetSharedExpert>("setSharedExpert"),
                      InstanceMethod<&LayerWrap::SetExpertFP8>("setExpertFP8"),
                      InstanceMethod<&LayerWrap::SetSharedExpertFP8>("setSharedExpertFP8"),
                      InstanceMethod<&LayerWrap::Forward>("forward"),
                      InstanceMethod<&LayerWrap::ForwardAsync>("forwardAsync"),
                      InstanceMethod<&LayerWrap::Info>("info"), InstanceMethod<&LayerWrap::Dispose>("dispose"),
                      InstanceMethod<&LayerWrap::DrainTelemetry>("drainTelemetry"),
                      InstanceMethod<&LayerWrap::RecordError>("recordError")});
}

LayerWrap::LayerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LayerWrap>(info) {
  Napi::Env env = info.Env();
  RouterWrap* router = RouterWrap::FromValue(env, info[0], "router");
  const int dtype = int(intArg(info, 1, "dtype", 0, 2));
  const int32_t staticK = int32_t(intArg(info, 2, "staticK", 1, router->router().config().numExperts));
  const int threads = int(intArg(info, 3, "threads", 1, 1024));
  moe::ExpertActivation activation;
  if (info.Length() > 5 && info[5].IsObject()) {
    const Napi::Object a = info[5].As<Napi::Object>();
    activation.weightInputs = a.Get("weightInputs").ToBoolean().Value();
    activation.clamped = a.Has("alpha") || a.Has("limit");
    if (activation.clamped) {
      activation.alpha = float(numberProp(a, "alpha", NAN));
      activation.limit = float(numberProp(a, "limit", NAN));
      if (!(activation.alpha > 0 && std::isfinite(activation.alpha)) ||
          !(activation.limit > 0 && std::isfinite(activation.limit)))
        throwValidation(env, "activation: alpha and limit must be finite numbers above 0, got " +
                                 numberText(activation.alpha) + " and " + numberText(activation.limit));
    }
  }
  if (info.Length() > 4 && info[4].IsObject()) {
    if (activation.clamped || activation.weightInputs)
      throwValidation(env, "activation: a layer that shares weights takes the activation and weightInputs of their layer");
    Napi::Object other = info[4].As<Napi::Object>();
    if (!other.CheckTypeTag(&kLayerTag)) throwValidation(env, "shareWeightsOf: expected a NativeLayer");
    const moe::RouterConfig& mine = router->router().config();
    auto source = Napi::ObjectWrap<LayerWrap>::Unwrap(other)->live(env);
    const moe::RouterConfig& theirs = source->router().config();
    if (mine.numExperts != theirs.numExperts || mine.hiddenSize != theirs.hiddenSize)
      throwValidation(env, "router: numExperts and hiddenSize must match the layer whose weights are shared");
    layer_ = std::make_shared<moe::Layer>(*source, router->sharedRouter(), staticK, threads);
  } else {
    layer_ = std::make_shared<moe::Layer>(router->sharedRouter(), moe::DType(dtype), staticK, threads, activation);
  }
  routerRef_ = Napi::Persistent(info[0].As<Napi::Object>());
  Value().TypeTag(&kLayerTag);
}

LayerWrap::~LayerWrap() {
  if (externalBytes_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -externalBytes_);
}

std::shared_ptr<moe::Layer> LayerWrap::live(Napi::Env env) {
  if (!layer_) throw makeError(env, "ERR_MOE_DISPOSED", "layer: this MoELayer was disposed");
  return layer_;
}

void LayerWrap::adjustMemory(Napi::Env env) {
  const int64_t now = layer_ ? int64_t(layer_->weightBytes()) : 0;
  Napi::MemoryManagement::AdjustExternalMemory(env, now - externalBytes_);
  externalBytes_ = now;
}

namespace {
// Arguments first..first+2: an expert's optional gate, up [f] and down [d] biases, each of exactly that length.
moe::ExpertBias biasArgs(const Napi::CallbackInfo& info, size_t first, int64_t f, int64_t d) {
  const auto bias = [&](size_t i, const char* name, int64_t n) {
    const float* p = typedArrayArg<float>(info, i, name, size_t(n), true);
    if (p && info[i].As<Napi::TypedArray>().ElementLength() != size_t(n))
      throwValidation(info.Env(), std::string(name) + ": expected " + std::to_string(n) + " elements, got " +
                                      std::to_string(info[i].As<Napi::TypedArray>().ElementLength()));
    return p;
  };
  return {bias(first, "gate bias", f), bias(first + 1, "up bias", f), bias(first + 2, "down bias", d)};
}

// Runs a setter, a bad bias or E4M3 byte or scale (std::invalid_argument) becoming a ValidationError.
template <typename Set>
void validated(Napi::Env env, Set&& set) {
  try {
    set();
  } catch (const std::invalid_argument& e) {
    throwValidation(env, e.what());
  }
}
}  // namespace

Napi::Value LayerWrap::SetExpert(const Napi::CallbackInfo& info) {
  auto layer = live(info.Env());
  const moe::RouterConfig& cfg = layer->router().config();
  const int32_t e = int32_t(intArg(info, 0, "expert", 0, cfg.numExperts - 1));
  const int64_t f = intArg(info, 4, "intermediateSize", 1, kMaxIntermediate);
  const size_t n = size_t(f) * size_t(cfg.hiddenSize);
  const float *w1 = typedArrayArg<float>(info, 1, "w1", n), *w3 = typedArrayArg<float>(info, 2, "w3", n);
  const float* w2 = typedArrayArg<float>(info, 3, "w2", n);
  const moe::ExpertBias bias = biasArgs(info, 5, f, cfg.hiddenSize);
  validated(info.Env(), [&] { layer->setExpert(e, w1, w3, w2, f, bias); });
  adjustMemory(info.Env());
  return info.Env().Undefined();
}

Napi::Value LayerWrap::SetSharedExpert(const Napi::CallbackInfo& info) {
  auto layer = live(info.Env());
  const moe::RouterConfig& cfg = layer->router().config();
  const int64_t f = intArg(info, 3, "intermediateSize", 1, kMaxSharedIntermediate);
  const size_t n = size_t(f) * size_t(cfg.hiddenSize);
  const float *w1 = typedArrayArg<float>(info, 0, "w1", n), *w3 = typedArrayArg<float>(info, 1, "w3", n);
  const float* w2 = typedArrayArg<float>(info, 2, "w2", n);
  const float* gate = typedArrayArg<float>(info, 4, "sharedGate", size_t(cfg.hiddenSize), true);
  const moe::ExpertBias bias = biasArgs(info, 5, f, cfg.hiddenSize);
  validated(info.Env(), [&] { layer->setSharedExpert(w1, w3, w2, f, gate, bias); });
  adjustMemory(info.Env());
  return info.Env().Undefined();
}

namespace {
// Arguments first..first+5 of setExpertFP8 / setSharedExpertFP8: w1, w3 [f, d] and w2 [d, f] as E4M3 bytes and
// scales; a bad byte or scale becomes a ValidationError.
template <typename Set>
void setFp8(const Napi::CallbackInfo& info, size_t first, int64_t f, int64_t d, Set&& set) {
  const auto matrix = [&](size_t i, const char* q, const char* scales, int64_t rows, int64_t K) {
    return moe::Fp8Matrix{typedArrayArg<uint8_t>(info, i, q, size_t(rows * K)),
                          typedArrayArg<float>(info, i + 1, scales, size_t(rows * moe::fp8Blocks(K)))};
  };
  const moe::Fp8Matrix w1 = matrix(first, "w1", "w1 scales", f, d), w3 = matrix(first + 2, "w3", "w3 scales", f, d);
  const moe::Fp8Matrix w2 = matrix(first + 4, "w2", "w2 scales", d, f);
  validated(info.Env(), [&] { set(w1, w3, w2); });
}
}  // namespace

Napi::Value LayerWrap::SetExpertFP8(const Napi::CallbackInfo& info) {
  auto layer = live(info.Env());
  const moe::RouterConfig& cfg = layer->router().config();
  const int32_t e = int32_t(intArg(info, 0, "expert", 0, cfg.numExperts - 1));
  const int64_t f = intArg(info, 7, "intermediateSize", 1, kMaxIntermediate);
  const moe::ExpertBias bias = biasArgs(info, 8, f, cfg.hiddenSize);
  setFp8(info, 1, f, cfg.hiddenSize, [&](moe::Fp8Matrix w1, moe::Fp8Matrix w3, moe::Fp8Matrix w2) {
    layer->setExpertFP8(e, w1, w3, w2, f, bias);
  });
  adjustMemory(info.Env());
  return info.Env().Undefined();
}

Napi::Value LayerWrap::SetSharedExpertFP8(const Napi::CallbackInfo& info) {
  auto layer = live(info.Env());
  const moe::RouterConfig& cfg = layer->router().config();
  const int64_t f = intArg(info, 6, "intermediateSize", 1, kMaxSharedIntermediate);
  const float* gate = typedArrayArg<float>(info, 7, "sharedGate", size_t(cfg.hiddenSize), true);
  const moe::ExpertBias bias = biasArgs(info, 8, f, cfg.hiddenSize);
  setFp8(info, 0, f, cfg.hiddenSize, [&](moe::Fp8Matrix w1, moe::Fp8Matrix w3, moe::Fp8Matrix w2) {
    layer->setSharedExpertFP8(w1, w3, w2, f, gate, bias);
  });
  adjustMemory(info.Env());
  return info.Env().Undefined();
}

Napi::Value LayerWrap::Forward(const Napi::CallbackInfo& info) {
  auto layer = live(info.Env());
  std::string missing;
  if (!layer->complete(missing)) throwValidation(info.Env(), "layer: weights missing for " + missing);
  ForwardCall call = parseForward(info, *layer);
  call.run(*layer);
  if (!call.error.empty()) throwValidation(info.Env(), call.error);
  return info.Env().Undefined();
}

Napi::Value LayerWrap::ForwardAsync(const Napi::CallbackInfo& info) {
  auto layer = live(info.Env());
  std::string missing;
  if (!layer->complete(missing)) throwValidation(info.Env(), "layer: weights missing for " + missing);
  ForwardCall call = parseForward(info, *layer);
  auto* worker = new ForwardWorker(info.Env(), layer, call, info);
  Napi::Promise promise = worker->promise();
  GatedWorker::Submit(worker);
  return promise;
}

Napi::Value LayerWrap::Info(const Napi::CallbackInfo& info) {
  auto layer = live(info.Env());
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("weightBytes", double(layer->weightBytes()));
  const moe::DType dtype = layer->dtype();
  o.Set("dtype", dtype == moe::DType::F32 ? "fp32" : dtype == moe::DType::BF16 ? "bf16" : "fp8");
  o.Set("isa", moe::isaName(moe::gemmKernels().isa));
  const moe::ExpertActivation& act = layer->activation();
  if (act.clamped) {
    Napi::Object a = Napi::Object::New(info.Env());
    a.Set("alpha", double(act.alpha));
    a.Set("limit", double(act.limit));
    o.Set("activation", a);
  }
  o.Set("weightInputs", act.weightInputs);
  return o;
}

Napi::Value LayerWrap::DrainTelemetry(const Napi::CallbackInfo& info) {
  auto layer = live(info.Env());
  moe::telemetry::Delta d = layer->telemetry().drain();
  const double bytes = double(layer->weightBytes() + layer->arenaBytes() + layer->router().weightBytes());
  return telemetryToJs(info.Env(), d, "layer", layer->router().config().numExperts, bytes,
                       info[0]);
}

Napi::Value LayerWrap::RecordError(const Napi::CallbackInfo& info) {
  recordErrorArg(info, live(info.Env())->telemetry());
  return info.Env().Undefined();
}

// Drops this wrapper's hold on the weights; an async forward still running keeps its own reference.
Napi::Value LayerWrap::Dispose(const Napi::CallbackInfo& info) {
  layer_.reset();
  adjustMemory(info.Env());
  return info.Env().Undefined();
}

}  // namespace moe_binding
