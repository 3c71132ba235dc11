// JS class NativeRouter: owns a moe::Router. lib/router.ts is its only user.
#pragma once
#include <napi.h>

#include <memory>

#include "moe/router.h"

namespace moe_binding {

class RouterWrap : public Napi::ObjectWrap<RouterWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit RouterWrap(const Napi::CallbackInfo& info);
  ~RouterWrap() override;

  moe::Router& router() { return *router_; }
  std::shared_ptr<moe::Router> sharedRouter() { return router_; }
  // The RouterWrap behind a JS value, or a thrown validation error.
  static RouterWrap* FromValue(Napi::Env env, Napi::Value value, const char* what);

 private:
  Napi::Value Route(const Napi::CallbackInfo& info);
  Napi::Value RouteAsync(const Napi::CallbackInfo& info);
  Napi::Value Gate(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value DrainTelemetry(const Napi::CallbackInfo& info);
  Napi::Value RecordError(const Napi::CallbackInfo& info);

  std::shared_ptr<moe::Router> router_;
  int64_t externalBytes_ = 0;
};

}  // namespace moe_binding
