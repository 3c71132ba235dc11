// JS side of the CUDA plugin: cudaLoad(path), cudaBenchCopy(bytes, iterations), and class NativeCudaLayer (a
// layer, or with intermediateSize 0 a router, running on the GPU). lib/cuda.ts is their only user.
#pragma once
#include <napi.h>

#include <memory>

#include "moe/cuda_plugin.h"
#include "telemetry/telemetry.h"

namespace moe_binding {

void InitCuda(Napi::Env env, Napi::Object exports);

class CudaLayerWrap : public Napi::ObjectWrap<CudaLayerWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit CudaLayerWrap(const Napi::CallbackInfo& info);
  ~CudaLayerWrap() override;

  // What a forward or route call shares with its async worker.
  struct State {
    std::shared_ptr<moe::CudaLayerHandle> handle;
    std::unique_ptr<moe::telemetry::Telemetry> telemetry;
    MoeCudaRouting cfg{};
    int64_t f = 0, sharedF = 0;
    int32_t staticK = 1;
  };

 private:
  Napi::Value SetExpert(const Napi::CallbackInfo& info);
  Napi::Value SetSharedExpert(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value ForwardAsync(const Napi::CallbackInfo& info);
  Napi::Value ForwardDevice(const Napi::CallbackInfo& info);
  Napi::Value CaptureForward(const Napi::CallbackInfo& info);
  Napi::Value Route(const Napi::CallbackInfo& info);
  Napi::Value RouteAsync(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Bench(const Napi::CallbackInfo& info);
  Napi::Value Randomize(const Napi::CallbackInfo& info);
  Napi::Value DrainTelemetry(const Napi::CallbackInfo& info);
  Napi::Value RecordError(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::shared_ptr<State> live(Napi::Env env);

  std::shared_ptr<State> state_;
};

}  // namespace moe_binding
