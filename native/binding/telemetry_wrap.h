// Converts a telemetry drain (native/telemetry) into the TelemetryDelta object of
// lib/observability/telemetry-types.ts.
#pragma once
#include <napi.h>

#include "telemetry/telemetry.h"

namespace moe_binding {

Napi::Object telemetryToJs(Napi::Env env, const moe::telemetry::Delta& d, const char* kind, int numExperts,
                           double memoryBytes);
// recordError(kind: 0 validation | 1 non_finite | 2 internal) for errors found before the native call.
void recordErrorArg(const Napi::CallbackInfo& info, moe::telemetry::Telemetry& telemetry);

}  // namespace moe_binding
