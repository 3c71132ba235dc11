// Addon entry point: per-instance data, the wrapped classes, backendInfo() and asyncGate().
#include <napi.h>

#include "addon_data.h"
#include "async_gate.h"
#include "bench_wrap.h"
#include "complexity_wrap.h"
#include "cuda_wrap.h"
#include "exposition_wrap.h"
#include "layer_wrap.h"
#include "moe/cpu_features.h"
#include "moe/expert_gemm.h"
#include "moe/gemm.h"
#include "router_wrap.h"

namespace moe_binding {

namespace {

Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const moe::CpuFeatures& f = moe::cpuFeatures();
  Napi::Object o = Napi::Object::New(env);
  o.Set("isa", moe::isaName(moe::bestIsa()));
  o.Set("threads", addonData(env).pool->size());
  Napi::Object features = Napi::Object::New(env);
  features.Set("avx2", f.avx2 && f.fma);
  features.Set("avx512f", f.avx512f);
  features.Set("avx512bf16", f.avx512bf16);
  features.Set("amxBf16", f.amxBf16);
  o.Set("cpuFeatures", features);
  o.Set("gemmRows", moe::gemmKernels().maxRows);          // rows of one fp32 kernel call (its register block)
  o.Set("gemmRowsBf16", moe::gemmKernels().bf16Rows);     // rows of one bf16 call (32 on AMX tiles)
  // an fp8 expert with this many rows of a batch or more runs on bf16 pairs (0: never; moe/gemm.h)
  o.Set("fp8Bf16Rows", moe::gemmKernels().fp8Tiles ? double(moe::kFp8TileRows) : 0.0);
  // a pass whose output exceeds this writes it with non-temporal stores (moe/expert_gemm.h)
  o.Set("streamStoreMinBytes", double(moe::kStreamStoreMinBytes));
  return o;
}

}  // namespace

Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->pool = std::make_shared<moe::ThreadPool>(moe::ThreadPool::defaultThreads());
  env.SetInstanceData<AddonData>(data);  // deleted by Node at environment teardown
  Napi::Function router = RouterWrap::Init(env);
  data->routerConstructor = Napi::Persistent(router);
  exports.Set("NativeRouter", router);
  Napi::Function layer = LayerWrap::Init(env);
  data->layerConstructor = Napi::Persistent(layer);
  exports.Set("NativeLayer", layer);
  InitComplexity(env, exports);
  InitBench(env, exports);
  InitCuda(env, exports);
  InitExposition(env, exports);
  InitAsyncGate(env, exports);
  exports.Set("backendInfo", Napi::Function::New<BackendInfo>(env, "backendInfo"));
  return exports;
}

}  // namespace moe_binding

static Napi::Object Init(Napi::Env env, Napi::Object exports) { return moe_binding::InitAddon(env, exports); }
NODE_API_MODULE(dynamic_moe_router_kit, Init)
