// Free functions for the native complexity signals (moe/complexity.h). They run on the shared pool.
#include "complexity_wrap.h"

#include "addon_data.h"
#include "args.h"
#include "moe/complexity.h"

#include <cmath>

namespace moe_binding {

namespace {
constexpr int64_t kMaxDim = int64_t(1) << 31;

// rowNorms(x, T, d, order, out)
Napi::Value RowNorms(const Napi::CallbackInfo& info) {
  const int64_t T = intArg(info, 1, "tokens", 1, kMaxDim), d = intArg(info, 2, "size", 1, kMaxDim);
  const int order = int(intArg(info, 3, "order", 1, 2));
  int64_t elements = 0;
  if (__builtin_mul_overflow(T, d, &elements)) throwValidation(info.Env(), "x: tokens * size overflows");
  const float* x = typedArrayArg<float>(info, 0, "x", size_t(elements));
  float* out = typedArrayArg<float>(info, 4, "out", size_t(T));
  auto& pool = *addonData(info.Env()).pool;
  moe::rowNorms(x, T, d, order, out, pool, pool.size());
  return info.Env().Undefined();
}

// attentionEntropy(attention, heads, T, S, reduceMax, out)
Napi::Value AttentionEntropy(const Napi::CallbackInfo& info) {
  const int64_t H = intArg(info, 1, "heads", 1, kMaxDim), T = intArg(info, 2, "tokens", 1, kMaxDim);
  const int64_t S = intArg(info, 3, "span", 1, kMaxDim);
  int64_t heads_tokens = 0, elements = 0;
  if (__builtin_mul_overflow(H, T, &heads_tokens) || __builtin_mul_overflow(heads_tokens, S, &elements))
    throwValidation(info.Env(), "attention: heads * tokens * span overflows");
  const float* attention = typedArrayArg<float>(info, 0, "attention", size_t(elements));
  const bool reduceMax = info[4].ToBoolean();
  float* out = typedArrayArg<float>(info, 5, "out", size_t(T));
  auto& pool = *addonData(info.Env()).pool;
  moe::attentionEntropy(attention, H, T, S, reduceMax, out, pool, pool.size());
  return info.Env().Undefined();
}

// logitEntropy(logits, T, V, temperature, out)
Napi::Value LogitEntropy(const Napi::CallbackInfo& info) {
  const int64_t T = intArg(info, 1, "tokens", 1, kMaxDim), V = intArg(info, 2, "vocab", 1, kMaxDim);
  const double temperature = info[3].ToNumber().DoubleValue();
  if (!(temperature > 0) || !std::isfinite(temperature))
    throwValidation(info.Env(), "temperature: expected a finite number > 0");
  int64_t elements = 0;
  if (__builtin_mul_overflow(T, V, &elements)) throwValidation(info.Env(), "logits: tokens * vocab overflows");
  const float* logits = typedArrayArg<float>(info, 0, "logits", size_t(elements));
  float* out = typedArrayArg<float>(info, 4, "out", size_t(T));
  auto& pool = *addonData(info.Env()).pool;
  moe::logitEntropy(logits, T, V, float(temperature), out, pool, pool.size());
  return info.Env().Undefined();
}
}  // namespace

void InitComplexity(Napi::Env env, Napi::Object exports) {
  exports.Set("rowNorms", Napi::Function::New<RowNorms>(env, "rowNorms"));
  exports.Set("attentionEntropy", Napi::Function::New<AttentionEntropy>(env, "attentionEntropy"));
  exports.Set("logitEntropy", Napi::Function::New<LogitEntropy>(env, "logitEntropy"));
}

}  // namespace moe_binding
