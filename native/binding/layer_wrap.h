// JS class NativeLayer: owns a moe::Layer built on a NativeRouter. lib/layer.ts is its only user.
#pragma once
#include <napi.h>

#include <memory>

#include "moe/layer.h"

namespace moe_binding {

class LayerWrap : public Napi::ObjectWrap<LayerWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit LayerWrap(const Napi::CallbackInfo& info);
  ~LayerWrap() override;

 private:
  Napi::Value SetExpert(const Napi::CallbackInfo& info);
  Napi::Value SetSharedExpert(const Napi::CallbackInfo& info);
  Napi::Value SetExpertFP8(const Napi::CallbackInfo& info);
  Napi::Value SetSharedExpertFP8(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value ForwardAsync(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value DrainTelemetry(const Napi::CallbackInfo& info);
  Napi::Value RecordError(const Napi::CallbackInfo& info);
  void adjustMemory(Napi::Env env);
  std::shared_ptr<moe::Layer> live(Napi::Env env);

  std::shared_ptr<moe::Layer> layer_;
  Napi::ObjectReference routerRef_;  // the NativeRouter outlives the layer that routes with it
  int64_t externalBytes_ = 0;
};

}  // namespace moe_binding
