// Registers the complexity-signal functions on the addon's exports.
#pragma once
#include <napi.h>

namespace moe_binding {
void InitComplexity(Napi::Env env, Napi::Object exports);
}
