// NativeCudaLayer binding: argument checks and typed arrays in, plugin calls (cuda/include/moe_cuda.h) out.
//
//   new NativeCudaLayer(router: NativeRouter, staticK, intermediateSize)   (intermediateSize 0: a router)
//   setExpert(e, w1, w3, w2, f) / setSharedExpert(w1, w3, w2, f, gate | null)
//   forward(x, T, y, indices, weights, k, counts, routeStats(5), layerStats(7), logits?, complexity?,
//           complexityNs, logitsOut?, probsOut?, device?)  and forwardAsync(...same) -> Promise
//   route(mode, input, T, indices, weights, k, counts, stats(5), logits?, probs?, complexity?, complexityNs,
//         device?)  and routeAsync(...same)      (the NativeRouter argument order)
//   device: { mode, calibration, state: Float64Array(3), knots: Float64Array | null,
//             complexityOut: Float32Array | null } — complexity computed on the GPU (MOE_CUDA_COMPLEXITY_*).
//   forwardDevice(x: bigint, y: bigint, T, stream: bigint | null, device?)  — device pointers, no host sync.
//   captureForward(x: bigint, y: bigint, T, replays)  — tests: that call captured in a CUDA graph and replayed.
//   info(), bench(T, iterations, graph), randomize(seed, std), recordError(kind), dispose()
//   drainTelemetry(into?, final?)  — final: waits for a copy of every device count so far (before a dispose)
#include "cuda_wrap.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <vector>

#include "addon_data.h"
#include "args.h"
#include "async_gate.h"
#include "router_wrap.h"
#include "telemetry_wrap.h"

namespace moe_binding {

namespace {

constexpr int64_t kMaxTokens = int64_t(1) << 24;
// set by a successful cudaLoad; the plugin is process-wide (atomic: worker_threads may load it concurrently)
std::atomic<const MoeCudaApi*> gApi{nullptr};

[[noreturn]] void throwCuda(Napi::Env env, const char* what, const char* err) {
  throw makeError(env, "ERR_MOE_CUDA", std::string(what) + ": " + err);
}

const MoeCudaApi* api(Napi::Env env) {
  const MoeCudaApi* loaded = gApi.load(std::memory_order_acquire);
  if (!loaded) throw makeError(env, "ERR_MOE_CUDA", "the CUDA plugin is not loaded (call cudaLoad first)");
  return loaded;
}

Napi::Value CudaLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throwValidation(env, "path: expected a string");
  std::string error;
  const moe::CudaPlugin* plugin = moe::loadCudaPlugin(info[0].As<Napi::String>().Utf8Value(), error);
  Napi::Object o = Napi::Object::New(env);
  o.Set("loaded", plugin != nullptr);
  if (!plugin) {
    o.Set("error", error);
    return o;
  }
  gApi.store(plugin->api, std::memory_order_release);
  const MoeCudaProbe& p = plugin->probe;
  Napi::Object device = Napi::Object::New(env);
  device.Set("name", p.name);
  device.Set("index", p.device);
  device.Set("computeCapability", std::to_string(p.major) + "." + std::to_string(p.minor));
  device.Set("multiprocessors", p.multiprocessors);
  device.Set("memoryBytes", double(p.totalMemory));
  device.Set("driverVersion", p.driverVersion);
  device.Set("runtimeVersion", p.runtimeVersion);
  o.Set("device", device);
  o.Set("path", plugin->path);
  return o;
}

Napi::Value CudaBenchCopy(const Napi::CallbackInfo& info) {
  const int64_t bytes = intArg(info, 0, "bytes", 1 << 20, int64_t(1) << 36);
  const int32_t iterations = int32_t(intArg(info, 1, "iterations", 1, 100000));
  double seconds = 0;
  char err[512] = {};
  if (api(info.Env())->benchCopy(bytes, iterations, &seconds, err, sizeof(err)) != 0)
    throwCuda(info.Env(), "cudaBenchCopy", err);
  return Napi::Number::New(info.Env(), seconds);
}

MoeCudaRouting toCuda(const moe::RouterConfig& c) {
  MoeCudaRouting r{};
  r.numExperts = c.numExperts;
  r.hiddenSize = c.hiddenSize;
  r.scoring = int32_t(c.scoring);
  r.selection = int32_t(c.selection);
  r.k = c.k;
  r.p = c.p;
  r.tau = c.tau;
  r.minK = c.minK;
  r.maxK = c.maxK;
  r.nGroup = c.nGroup;
  r.topkGroup = c.topkGroup;
  r.groupScore = int32_t(c.groupScore);
  r.normalize = c.normalize ? 1 : 0;
  r.scale = c.scale;
  return r;
}

// The calibration state of a `device` object: its Float64Array `state` of at least 3 elements, or null.
double* calibrationState(Napi::Value device) {
  if (!device.IsObject()) return nullptr;
  Napi::Value state = device.As<Napi::Object>().Get("state");
  if (!state.IsTypedArray() || state.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      state.As<Napi::Float64Array>().ElementLength() < 3)
    return nullptr;
  return state.As<Napi::Float64Array>().Data();
}

// The optional trailing `device` object: complexity computed on the GPU.
void parseDeviceComplexity(const Napi::CallbackInfo& info, size_t index, MoeCudaForward& call) {
  if (info.Length() <= index || !info[index].IsObject()) return;
  Napi::Object o = info[index].As<Napi::Object>();
  const int mode = int32Prop(o, "mode", 0);
  const int calibration = int32Prop(o, "calibration", 0);
  if (mode < MOE_CUDA_COMPLEXITY_ROUTER_ENTROPY || mode > MOE_CUDA_COMPLEXITY_NORM_L1)
    throwValidation(info.Env(), "device.mode: expected a device complexity signal");
  if (calibration < 0 || calibration > MOE_CUDA_CALIBRATION_QUANTILE)
    throwValidation(info.Env(), "device.calibration: out of range");
  call.complexityMode = mode;
  call.calibration = calibration;
  if (const double* state = calibrationState(o)) std::memcpy(call.calibState, state, 3 * sizeof(double));
  Napi::Value knots = o.Get("knots");
  if (knots.IsTypedArray() && knots.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
    call.knots = knots.As<Napi::Float64Array>().Data();
    call.knotCount = int32_t(knots.As<Napi::Float64Array>().ElementLength());
  }
  if (calibration == MOE_CUDA_CALIBRATION_QUANTILE && call.knotCount < 2)
    throwValidation(info.Env(), "device.knots: quantile calibration needs at least 2 knots");
  Napi::Value out = o.Get("complexityOut");
  if (out.IsNull() || out.IsUndefined()) return;
  if (!out.IsTypedArray() || out.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
      out.As<Napi::Float32Array>().ElementLength() < size_t(call.tokens))
    throwValidation(info.Env(), "device.complexityOut: expected a Float32Array of at least " +
                                    std::to_string(call.tokens) + " elements, or null");
  call.complexityOut = out.As<Napi::Float32Array>().Data();
}

// After a host-mode call: the calibration state goes back into the JS `device.state` array.
void writeBackState(Napi::Value device, const MoeCudaForward& call) {
  if (double* state = calibrationState(device)) std::memcpy(state, call.calibState, 3 * sizeof(double));
}

struct HostCall {
  MoeCudaForward call{};
  bool routeOnly = false;
  double* routeStats = nullptr;
  double* layerStats = nullptr;
  int32_t* counts = nullptr;
  const float* complexity = nullptr;  // the complexity that decided k (for telemetry)
  int64_t complexityNs = 0;
  std::string error;
  bool internal = false;

  // Runs the plugin call and records telemetry as the CPU layer does.
  void run(CudaLayerWrap::State& s) {
    const int64_t startNs = moe::telemetry::nowNs();
    char err[1024] = {};
    const int rc = routeOnly ? s.handle->api->layerRoute(s.handle->layer, &call, err, sizeof(err))
                             : s.handle->api->layerForward(s.handle->layer, &call, err, sizeof(err));
    if (rc != 0) {
      error = err[0] ? err : "the CUDA plugin reported a failure without a message";
      internal = true;
      s.telemetry->recordError(moe::telemetry::ErrorKind::Internal);
      return;
    }
    if (call.badToken >= 0) {
      error = "router logits of token " + std::to_string(call.badToken) +
              " are not finite (NaN or Inf): check the hidden states and the gate weight for overflow";
      s.telemetry->recordError(moe::telemetry::ErrorKind::NonFinite);
      return;
    }
    std::copy(call.routeStats, call.routeStats + 5, routeStats);
    const int64_t T = call.tokens;
    const double assignments = call.routeStats[4];
    const double perPair = 6.0 * double(s.cfg.hiddenSize) * double(s.f);
    const double shared = 6.0 * double(s.cfg.hiddenSize) * double(s.sharedF) * double(T);
    const double flopsComputed = routeOnly ? 0 : perPair * assignments + shared;
    const double flopsStatic = routeOnly ? 0 : perPair * double(T) * s.staticK + shared;
    // Stage boundaries from the device's event timings, laid out from the call's start.
    int64_t ends[4];
    double at = double(startNs);
    for (int i = 0; i < 4; ++i) {
      at += call.stageMs[i] * 1e6;
      ends[i] = int64_t(at);
    }
    if (routeOnly) ends[1] = ends[2] = ends[3] = ends[0];
    if (layerStats) {
      const double l[7] = {flopsComputed, flopsStatic, double(startNs), double(ends[0]),
                           double(ends[1]), double(ends[2]), double(ends[3])};
      std::copy(l, l + 7, layerStats);
    }
    moe::RoutingOutput out;
    out.k = call.k;
    out.expertCounts = counts;
    moe::RoutingStats rs;
    rs.assignments = int64_t(assignments);
    rs.loadBalance = call.routeStats[3];
    moe::telemetry::CallRecord rec = moe::callRecordOf(T, complexity, out, rs, complexityNs);
    rec.flopsComputed = flopsComputed;
    rec.flopsStatic = flopsStatic;
    rec.span.startNs = startNs;
    rec.span.gatingEndNs = ends[0];
    rec.span.dispatchEndNs = ends[1];
    rec.span.expertEndNs = ends[2];
    rec.span.combineEndNs = ends[3];
    s.telemetry->record(rec);
  }
};

// Where the `device` argument is (see the file comment): after complexityNs for route, after logitsOut and
// probsOut for forward.
constexpr size_t deviceArgIndex(bool routeOnly) { return routeOnly ? 12 : 14; }

// forward/route arguments (see the file comment) into a HostCall.
HostCall parseHostCall(const Napi::CallbackInfo& info, const CudaLayerWrap::State& s, bool routeOnly) {
  HostCall h;
  h.routeOnly = routeOnly;
  MoeCudaForward& c = h.call;
  const MoeCudaRouting& cfg = s.cfg;
  const size_t E = size_t(cfg.numExperts), K = size_t(cfg.maxK), d = size_t(cfg.hiddenSize);
  size_t base;  // index of `indices`
  if (routeOnly) {
    const bool fromLogits = intArg(info, 0, "mode", 0, 1) == 1;
    c.tokens = intArg(info, 2, "tokens", 1, kMaxTokens);
    const size_t T = size_t(c.tokens);
    const float* input = typedArrayArg<float>(info, 1, fromLogits ? "logits" : "x", T * (fromLogits ? E : d));
    if (fromLogits) c.logits = input;
    else c.x = input;
    base = 3;
    h.routeStats = typedArrayArg<double>(info, 7, "stats", 5);
    if (!fromLogits) c.logitsOut = typedArrayArg<float>(info, 8, "logits", T * E, true);
    c.probsOut = typedArrayArg<float>(info, 9, "probs", T * E, true);
  } else {
    c.tokens = layerTokensArg(info, 1, cfg.maxK);
    const size_t T = size_t(c.tokens);
    c.x = typedArrayArg<float>(info, 0, "x", T * d);
    c.y = typedArrayArg<float>(info, 2, "output", T * d);
    requireDisjointOutput(info.Env(), c.x, c.y, T * d);
    base = 3;
    h.routeStats = typedArrayArg<double>(info, 7, "routeStats", 5);
    h.layerStats = typedArrayArg<double>(info, 8, "layerStats", 7);
    c.logits = typedArrayArg<float>(info, 9, "logits", T * E, true);
    if (!c.logits) c.logitsOut = typedArrayArg<float>(info, 12, "logitsOut", T * E, true);
    c.probsOut = typedArrayArg<float>(info, 13, "probs", T * E, true);
  }
  const size_t T = size_t(c.tokens);
  c.indices = typedArrayArg<int32_t>(info, base, "indices", T * K);
  c.weights = typedArrayArg<float>(info, base + 1, "weights", T * K);
  c.k = typedArrayArg<int32_t>(info, base + 2, "k", T);
  h.counts = c.counts = typedArrayArg<int32_t>(info, base + 3, "counts", E);
  c.complexity = typedArrayArg<float>(info, 10, "complexity", T, true);
  h.complexityNs = steadyNsArg(info, 11);
  if (c.complexity) c.complexityMode = MOE_CUDA_COMPLEXITY_HOST;
  parseDeviceComplexity(info, deviceArgIndex(routeOnly), c);
  h.complexity = c.complexityMode == MOE_CUDA_COMPLEXITY_HOST ? c.complexity : c.complexityOut;
  if (cfg.selection == 3 && c.complexityMode == MOE_CUDA_COMPLEXITY_NONE)
    throwValidation(info.Env(), "complexity: the dynamic rule needs per-token scores or a device estimator");
  if (cfg.selection == 3 && c.complexityMode >= MOE_CUDA_COMPLEXITY_NORM_L2 && !c.x)
    throwValidation(info.Env(), "complexity: a norm estimator needs x");
  return h;
}

class CudaWorker : public GatedWorker {
 public:
  CudaWorker(Napi::Env env, std::shared_ptr<CudaLayerWrap::State> state, HostCall call,
             const Napi::CallbackInfo& info, size_t deviceIndex)
      : GatedWorker(env, "moe.cuda"),
        state_(std::move(state)),
        call_(std::move(call)),
        deferred_(Napi::Promise::Deferred::New(env)),
        deviceIndex_(deviceIndex) {
    for (size_t i = 0; i < info.Length(); ++i) pinned_.push_back(pin(info[i]));
  }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Run() override {
    try {
      call_.run(*state_);
      if (!call_.error.empty()) SetError(call_.error);
    } catch (const std::exception& e) {
      call_.internal = true;  // (e.g. bad_alloc on the host side: not the caller's input)
      SetError(e.what()[0] ? e.what() : "unknown C++ exception");
    }
  }
  void OnOK() override {
    writeState();
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(makeError(Env(), call_.internal ? "ERR_MOE_CUDA" : "ERR_MOE_VALIDATION", e.Message()).Value());
  }

 private:
  void writeState() {
    if (pinned_.size() > deviceIndex_ && !pinned_[deviceIndex_].IsEmpty())
      writeBackState(pinned_[deviceIndex_].Value(), call_.call);
  }
  std::shared_ptr<CudaLayerWrap::State> state_;
  HostCall call_;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> pinned_;
  size_t deviceIndex_;
};

uint64_t bigintArg(const Napi::CallbackInfo& info, size_t index, const char* what, bool optional) {
  Napi::Value v = info[index];
  if (optional && (v.IsNull() || v.IsUndefined())) return 0;
  if (!v.IsBigInt()) throwValidation(info.Env(), std::string(what) + ": expected a bigint device pointer");
  bool lossless = false;
  const uint64_t p = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throwValidation(info.Env(), std::string(what) + ": does not fit in 64 bits");
  return p;
}

// Test helpers for forwardDevice: cudaAlloc(bytes) -> bigint, cudaFree(ptr), cudaCopy(ptr, Float32Array, toDevice).
Napi::Value CudaAlloc(const Napi::CallbackInfo& info) {
  const int64_t bytes = intArg(info, 0, "bytes", 1, int64_t(1) << 40);
  void* ptr = nullptr;
  char err[512] = {};
  if (api(info.Env())->deviceAlloc(bytes, &ptr, err, sizeof(err)) != 0) throwCuda(info.Env(), "cudaAlloc", err);
  return Napi::BigInt::New(info.Env(), uint64_t(reinterpret_cast<uintptr_t>(ptr)));
}

Napi::Value CudaFree(const Napi::CallbackInfo& info) {
  api(info.Env())->deviceFree(reinterpret_cast<void*>(bigintArg(info, 0, "ptr", false)));
  return info.Env().Undefined();
}

Napi::Value CudaCopy(const Napi::CallbackInfo& info) {
  void* ptr = reinterpret_cast<void*>(bigintArg(info, 0, "ptr", false));
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throwValidation(info.Env(), "host: expected a Float32Array");
  Napi::Float32Array host = info[1].As<Napi::Float32Array>();
  const bool toDevice = info[2].ToBoolean();
  char err[512] = {};
  const int64_t bytes = int64_t(host.ElementLength() * sizeof(float));
  const int rc = toDevice ? api(info.Env())->deviceCopy(ptr, host.Data(), bytes, 1, err, sizeof(err))
                          : api(info.Env())->deviceCopy(host.Data(), ptr, bytes, 0, err, sizeof(err));
  if (rc != 0) throwCuda(info.Env(), "cudaCopy", err);
  return info.Env().Undefined();
}

}  // namespace

void InitCuda(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaAlloc", Napi::Function::New<CudaAlloc>(env, "cudaAlloc"));
  exports.Set("cudaFree", Napi::Function::New<CudaFree>(env, "cudaFree"));
  exports.Set("cudaCopy", Napi::Function::New<CudaCopy>(env, "cudaCopy"));
  exports.Set("cudaLoad", Napi::Function::New<CudaLoad>(env, "cudaLoad"));
  exports.Set("cudaBenchCopy", Napi::Function::New<CudaBenchCopy>(env, "cudaBenchCopy"));
  exports.Set("NativeCudaLayer", CudaLayerWrap::Init(env));
}

Napi::Function CudaLayerWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeCudaLayer",
                     {InstanceMethod<&CudaLayerWrap::SetExpert>("setExpert"),
                      InstanceMethod<&CudaLayerWrap::SetSharedExpert>("setSharedExpert"),
                      InstanceMethod<&CudaLayerWrap::Forward>("forward"),
                      InstanceMethod<&CudaLayerWrap::ForwardAsync>("forwardAsync"),
                      InstanceMethod<&CudaLayerWrap::ForwardDevice>("forwardDevice"),
                      InstanceMethod<&CudaLayerWrap::CaptureForward>("captureForward"),
                      InstanceMethod<&CudaLayerWrap::Route>("route"),
                      InstanceMethod<&CudaLayerWrap::RouteAsync>("routeAsync"),
                      InstanceMethod<&CudaLayerWrap::Info>("info"), InstanceMethod<&CudaLayerWrap::Bench>("bench"),
                      InstanceMethod<&CudaLayerWrap::Randomize>("randomize"),
                      InstanceMethod<&CudaLayerWrap::DrainTelemetry>("drainTelemetry"),
                      InstanceMethod<&CudaLayerWrap::RecordError>("recordError"),
                      InstanceMethod<&CudaLayerWrap::Dispose>("dispose")});
}

CudaLayerWrap::CudaLayerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CudaLayerWrap>(info) {
  Napi::Env env = info.Env();
  const MoeCudaApi* a = api(env);
  RouterWrap* router = RouterWrap::FromValue(env, info[0], "router");
  const moe::Router& r = router->router();
  const moe::RouterConfig& cfg = r.config();
  auto state = std::make_shared<State>();
  state->cfg = toCuda(cfg);
  state->staticK = int32_t(intArg(info, 1, "staticK", 1, cfg.numExperts));
  state->f = intArg(info, 2, "intermediateSize", 0, int64_t(1) << 20);
  const std::vector<float> gate = r.gateWeight();
  MoeCudaLayerDesc desc{};
  desc.routing = state->cfg;
  desc.gateWeight = gate.data();
  desc.bias = r.bias().empty() ? nullptr : r.bias().data();
  desc.logitBias = r.logitBias().empty() ? nullptr : r.logitBias().data();
  desc.intermediateSize = state->f;
  desc.staticK = state->staticK;
  MoeCudaLayer* layer = nullptr;
  char err[1024] = {};
  if (a->layerCreate(&desc, &layer, err, sizeof(err)) != 0) throwCuda(env, "NativeCudaLayer", err);
  state->handle = std::make_shared<moe::CudaLayerHandle>(a, layer);
  state->telemetry = std::make_unique<moe::telemetry::Telemetry>(cfg.numExperts, cfg.maxK);
  state_ = std::move(state);
}

CudaLayerWrap::~CudaLayerWrap() = default;

std::shared_ptr<CudaLayerWrap::State> CudaLayerWrap::live(Napi::Env env) {
  if (!state_) throw makeError(env, "ERR_MOE_DISPOSED", "layer: this CUDA layer was disposed");
  return state_;
}

Napi::Value CudaLayerWrap::SetExpert(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  const int32_t e = int32_t(intArg(info, 0, "expert", 0, s->cfg.numExperts - 1));
  const int64_t f = intArg(info, 4, "intermediateSize", s->f, s->f);
  const size_t n = size_t(f) * size_t(s->cfg.hiddenSize);
  char err[1024] = {};
  if (s->handle->api->layerSetExpert(s->handle->layer, e, typedArrayArg<float>(info, 1, "w1", n),
                                     typedArrayArg<float>(info, 2, "w3", n), typedArrayArg<float>(info, 3, "w2", n),
                                     err, sizeof(err)) != 0)
    throwCuda(info.Env(), "setExpert", err);
  return info.Env().Undefined();
}

Napi::Value CudaLayerWrap::SetSharedExpert(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  const int64_t f = intArg(info, 3, "intermediateSize", 1, int64_t(1) << 22);
  const size_t n = size_t(f) * size_t(s->cfg.hiddenSize);
  char err[1024] = {};
  if (s->handle->api->layerSetShared(s->handle->layer, typedArrayArg<float>(info, 0, "w1", n),
                                     typedArrayArg<float>(info, 1, "w3", n), typedArrayArg<float>(info, 2, "w2", n), f,
                                     typedArrayArg<float>(info, 4, "sharedGate", size_t(s->cfg.hiddenSize), true), err,
                                     sizeof(err)) != 0)
    throwCuda(info.Env(), "setSharedExpert", err);
  s->sharedF = f;
  return info.Env().Undefined();
}

namespace {
Napi::Value runSync(const Napi::CallbackInfo& info, CudaLayerWrap::State& s, HostCall h) {
  h.run(s);
  if (!h.error.empty()) {
    if (h.internal) throw makeError(info.Env(), "ERR_MOE_CUDA", h.error);
    throwValidation(info.Env(), h.error);
  }
  const size_t deviceArg = deviceArgIndex(h.routeOnly);
  if (info.Length() > deviceArg) writeBackState(info[deviceArg], h.call);
  return info.Env().Undefined();
}
}  // namespace

Napi::Value CudaLayerWrap::Forward(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  if (s->f == 0) throwValidation(info.Env(), "forward: this CUDA layer was created as a router");
  return runSync(info, *s, parseHostCall(info, *s, false));
}

Napi::Value CudaLayerWrap::Route(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  return runSync(info, *s, parseHostCall(info, *s, true));
}

namespace {
// forwardAsync / routeAsync: the call on the libuv pool, its arguments referenced until it settles.
Napi::Value queueHostCall(const Napi::CallbackInfo& info, std::shared_ptr<CudaLayerWrap::State> s, bool routeOnly) {
  HostCall call = parseHostCall(info, *s, routeOnly);
  auto* worker = new CudaWorker(info.Env(), std::move(s), std::move(call), info, deviceArgIndex(routeOnly));
  Napi::Promise promise = worker->promise();
  GatedWorker::Submit(worker);
  return promise;
}
}  // namespace

Napi::Value CudaLayerWrap::ForwardAsync(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  if (s->f == 0) throwValidation(info.Env(), "forward: this CUDA layer was created as a router");
  return queueHostCall(info, s, false);
}

Napi::Value CudaLayerWrap::RouteAsync(const Napi::CallbackInfo& info) {
  return queueHostCall(info, live(info.Env()), true);
}

Napi::Value CudaLayerWrap::ForwardDevice(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  if (s->f == 0) throwValidation(info.Env(), "forwardDevice: this CUDA layer was created as a router");
  MoeCudaForward c{};
  c.onDevice = 1;
  c.x = reinterpret_cast<const float*>(bigintArg(info, 0, "input", false));
  c.y = reinterpret_cast<float*>(bigintArg(info, 1, "output", false));
  c.tokens = layerTokensArg(info, 2, s->cfg.maxK);
  c.stream = reinterpret_cast<void*>(bigintArg(info, 3, "stream", true));
  if (!c.x || !c.y) throwValidation(info.Env(), "input, output: expected non-null device pointers");
  if ((reinterpret_cast<uintptr_t>(c.x) | reinterpret_cast<uintptr_t>(c.y)) % 16 != 0)
    throwValidation(info.Env(), "input, output: device pointers must be 16-byte aligned");
  parseDeviceComplexity(info, 4, c);
  if (s->cfg.selection == 3 && c.complexityMode == MOE_CUDA_COMPLEXITY_NONE)
    throwValidation(info.Env(), "complexity: the dynamic rule on device pointers needs a device estimator");
  char err[1024] = {};
  if (s->handle->api->layerForward(s->handle->layer, &c, err, sizeof(err)) != 0) {
    s->telemetry->recordError(moe::telemetry::ErrorKind::Internal);
    throwCuda(info.Env(), "forwardDevice", err);
  }
  return info.Env().Undefined();
}

Napi::Value CudaLayerWrap::CaptureForward(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  if (s->f == 0) throwValidation(info.Env(), "captureForward: this CUDA layer was created as a router");
  if (s->cfg.selection == 3) throwValidation(info.Env(), "captureForward: a fixed routing rule only (a test helper)");
  MoeCudaForward c{};
  c.onDevice = 1;
  c.x = reinterpret_cast<const float*>(bigintArg(info, 0, "input", false));
  c.y = reinterpret_cast<float*>(bigintArg(info, 1, "output", false));
  c.tokens = layerTokensArg(info, 2, s->cfg.maxK);
  const int32_t replays = int32_t(intArg(info, 3, "replays", 1, 1000));
  if (!c.x || !c.y) throwValidation(info.Env(), "input, output: expected non-null device pointers");
  if ((reinterpret_cast<uintptr_t>(c.x) | reinterpret_cast<uintptr_t>(c.y)) % 16 != 0)
    throwValidation(info.Env(), "input, output: device pointers must be 16-byte aligned");
  char err[1024] = {};
  if (s->handle->api->layerCaptureForward(s->handle->layer, &c, replays, err, sizeof(err)) != 0)
    throwCuda(info.Env(), "captureForward", err);
  return info.Env().Undefined();
}

Napi::Value CudaLayerWrap::Info(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  MoeCudaLayerInfo li{};
  s->handle->api->layerInfo(s->handle->layer, &li);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("weightBytes", double(li.weightBytes));
  o.Set("workspaceBytes", double(li.workspaceBytes));
  o.Set("device", li.device);
  o.Set("dtype", "bf16");
  o.Set("isa", std::string("cuda ") + li.path);
  o.Set("gemvMaxTokens", li.gemvMaxTokens);
  o.Set("forcedTile", li.forcedTile);
  return o;
}

Napi::Value CudaLayerWrap::Bench(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  MoeCudaBench b{};
  b.tokens = intArg(info, 0, "tokens", 1, kMaxTokens);
  b.iterations = int32_t(intArg(info, 1, "iterations", 1, 100000));
  b.graph = info[2].ToBoolean() ? 1 : 0;
  char err[1024] = {};
  if (s->handle->api->layerBench(s->handle->layer, &b, err, sizeof(err)) != 0) throwCuda(info.Env(), "bench", err);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("forwardMs", b.forwardMs);
  o.Set("routeAlignMs", b.routeAlignMs);
  o.Set("routeAlignFromXMs", b.routeAlignFromXMs);
  o.Set("expertMs", b.expertMs);
  const uint32_t tiles = sizeof(b.expertMsByTile) / sizeof(double);
  Napi::Array byTile = Napi::Array::New(info.Env(), tiles);
  for (uint32_t i = 0; i < tiles; ++i) byTile.Set(i, b.expertMsByTile[i]);
  o.Set("expertMsByTile", byTile);
  o.Set("expertFlops", b.expertFlops);
  o.Set("expertBytes", b.expertBytes);
  o.Set("emptyGraphMs", b.emptyGraphMs);
  o.Set("gatingMs", b.gatingMs);
  o.Set("alignMs", b.alignMs);
  o.Set("routeAlignStreamMs", b.routeAlignStreamMs);
  o.Set("emptyGraphStreamMs", b.emptyGraphStreamMs);
  return o;
}

// Benchmarks only: random expert weights generated on the device.
Napi::Value CudaLayerWrap::Randomize(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  const uint64_t seed = uint64_t(intArg(info, 0, "seed", 0, int64_t(1) << 52));
  if (!info[1].IsNumber()) throwValidation(info.Env(), "std: expected a number");
  char err[1024] = {};
  if (s->handle->api->layerRandomize(s->handle->layer, seed, info[1].As<Napi::Number>().FloatValue(), err,
                                     sizeof(err)) != 0)
    throwCuda(info.Env(), "randomize", err);
  return info.Env().Undefined();
}

// Device counters of forwardDevice calls arrive one drain late (the copy is queued, never waited for).
Napi::Value CudaLayerWrap::DrainTelemetry(const Napi::CallbackInfo& info) {
  auto s = live(info.Env());
  const int E = s->cfg.numExperts;
  std::vector<uint64_t> experts(size_t(E), 0);
  MoeCudaCounters c{};
  c.expertTokens = experts.data();
  c.wait = info.Length() > 1 && info[1].ToBoolean() ? 1 : 0;  // drainTelemetry(into, final)
  char err[512] = {};
  if (s->handle->api->layerDrain(s->handle->layer, &c, err, sizeof(err)) == 0) {
    s->telemetry->recordCounts(c.calls, c.tokens, c.assignments, experts.data());
    for (uint64_t i = 0; i < c.nonFinite; ++i) s->telemetry->recordError(moe::telemetry::ErrorKind::NonFinite);
  } else {
    // The device counters could not be read (a CUDA failure; what they held since the last drain may be lost):
    // the host-side record still goes out, with the failure counted as an internal error where a scrape shows it.
    s->telemetry->recordError(moe::telemetry::ErrorKind::Internal);
  }
  MoeCudaLayerInfo li{};
  s->handle->api->layerInfo(s->handle->layer, &li);
  return telemetryToJs(info.Env(), s->telemetry->drain(), s->f ? "layer" : "router", E,
                       double(li.weightBytes + li.workspaceBytes), info[0]);
}

Napi::Value CudaLayerWrap::RecordError(const Napi::CallbackInfo& info) {
  recordErrorArg(info, *live(info.Env())->telemetry);
  return info.Env().Undefined();
}

Napi::Value CudaLayerWrap::Dispose(const Napi::CallbackInfo& info) {
  state_.reset();  // a running async call keeps its own reference until it ends
  return info.Env().Undefined();
}

}  // namespace moe_binding
