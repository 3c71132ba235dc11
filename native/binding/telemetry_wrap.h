// Converts a telemetry drain (native/telemetry) into one Float64Array (new, or the caller's), which decodeTelemetry() in
// lib/observability/telemetry-types.ts turns into a TelemetryDelta. Layout (version 2), all doubles:
//   version, kind (0 router | 1 layer), numExperts, calls, tokens, errors[validation, non_finite, internal],
//   assignments, flopsComputed, flopsStatic, loadBalance, memoryBytes, spansDropped, nExpertTokens, nSpans,
//   8 histograms (expertsPerToken, complexity, stage complexity/gating/dispatch/expert_gemm/combine, duration),
//     each: nBounds, bounds[nBounds], counts[nBounds + 1] (not cumulative, the last is +Inf), sum, count,
//   expertTokens[nExpertTokens],
//   nSpans x 12: startNs, complexityStartNs (-1: none), gatingEndNs, dispatchEndNs, expertEndNs, combineEndNs,
//     tokens, meanK, flopsComputed, flopsStatic, activeExperts, loadBalanceCv (NaN: no assignment).
#pragma once
#include <napi.h>

#include "telemetry/telemetry.h"

namespace moe_binding {

constexpr int kTelemetryLayoutVersion = 2;
constexpr size_t kTelemetrySpanFields = 12;

// The record of `d`: written into `into` when that is a Float64Array long enough (returns the number of values
// written: the caller reuses its array), else as a new Float64Array (returned).
Napi::Value telemetryToJs(Napi::Env env, const moe::telemetry::Delta& d, const char* kind, int numExperts,
                          double memoryBytes, Napi::Value into);
// recordError(kind: 0 validation | 1 non_finite | 2 internal) for errors found before the native call.
void recordErrorArg(const Napi::CallbackInfo& info, moe::telemetry::Telemetry& telemetry);

}  // namespace moe_binding
