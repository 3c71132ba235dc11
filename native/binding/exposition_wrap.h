// Registers `exposition.*`: the metrics text of lib/observability/series-store.ts, rendered natively.
#pragma once
#include <napi.h>

namespace moe_binding {
void InitExposition(Napi::Env env, Napi::Object exports);
}
