// Registers the bench-only functions (roofline anchors, seeded weights) as `exports.bench`.
#pragma once
#include <napi.h>

namespace moe_binding {
void InitBench(Napi::Env env, Napi::Object exports);
}
