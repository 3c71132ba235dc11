// Argument guards shared by every binding entry point. lib/ validates user input first and names the user's
// argument; these checks exist so that a direct or buggy call still gets an exception instead of a crash.
#pragma once
#include <napi.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <string>

namespace moe_binding {

// Thrown errors carry `code`, which lib/native.ts maps to the package's error classes.
inline Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

[[noreturn]] inline void throwValidation(Napi::Env env, const std::string& message) {
  throw makeError(env, "ERR_MOE_VALIDATION", message);
}

// A layer's output y (n floats) must not share memory with its input x: lib/layer.ts sees views of one buffer, this
// also arrays over the same memory from separate buffers (a SharedArrayBuffer that came back from a worker).
inline void requireDisjointOutput(Napi::Env env, const float* x, const float* y, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(x), b = reinterpret_cast<uintptr_t>(y), bytes = n * sizeof(float);
  if (a < b + bytes && b < a + bytes) throwValidation(env, "output: shares memory with x; give y an array of its own");
}

template <typename T>
struct TypedArrayTraits;
template <>
struct TypedArrayTraits<float> {
  static constexpr napi_typedarray_type type = napi_float32_array;
  static constexpr const char* name = "Float32Array";
};
template <>
struct TypedArrayTraits<int32_t> {
  static constexpr napi_typedarray_type type = napi_int32_array;
  static constexpr const char* name = "Int32Array";
};
template <>
struct TypedArrayTraits<uint8_t> {
  static constexpr napi_typedarray_type type = napi_uint8_array;
  static constexpr const char* name = "Uint8Array";
};
template <>
struct TypedArrayTraits<uint32_t> {
  static constexpr napi_typedarray_type type = napi_uint32_array;
  static constexpr const char* name = "Uint32Array";
};
template <>
struct TypedArrayTraits<double> {
  static constexpr napi_typedarray_type type = napi_float64_array;
  static constexpr const char* name = "Float64Array";
};

// A typed array of the given element type and at least `minLength` elements; null/undefined allowed when
// `optional`. Detached buffers are rejected (their data pointer is gone).
template <typename T>
T* typedArrayArg(const Napi::CallbackInfo& info, size_t index, const char* what, size_t minLength,
                 bool optional = false) {
  Napi::Env env = info.Env();
  Napi::Value v = info[index];
  if (optional && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != TypedArrayTraits<T>::type)
    throwValidation(env, std::string(what) + ": expected a " + TypedArrayTraits<T>::name);
  Napi::TypedArrayOf<T> arr = v.As<Napi::TypedArrayOf<T>>();
  bool detached = false;
  napi_is_detached_arraybuffer(env, arr.ArrayBuffer(), &detached);
  if (detached) throwValidation(env, std::string(what) + ": its ArrayBuffer is detached");
  if (arr.ElementLength() < minLength)
    throwValidation(env, std::string(what) + ": expected at least " + std::to_string(minLength) +
                             " elements, got " + std::to_string(arr.ElementLength()));
  return arr.Data();
}

// A number as a message shows it: integers without decimals ("16777217", not "16777217.000000"), others to 17
// significant digits, NaN and infinities by name.
inline std::string numberText(double d) {
  if (d == d && d > -1e18 && d < 1e18 && d == double(int64_t(d))) return std::to_string(int64_t(d));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", d);
  return buf;
}

inline int64_t intArg(const Napi::CallbackInfo& info, size_t index, const char* what, int64_t lo, int64_t hi) {
  Napi::Value v = info[index];
  if (!v.IsNumber()) throwValidation(info.Env(), std::string(what) + ": expected a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= double(lo) && d <= double(hi)) || d != double(int64_t(d)))
    throwValidation(info.Env(), std::string(what) + ": expected an integer in [" + std::to_string(lo) + ", " +
                                    std::to_string(hi) + "], got " + numberText(d));
  return int64_t(d);
}

// The token count of a layer call: at most 2^24, and T x (maxK + 1) rows (the routed slots and a shared
// expert's) within 32-bit row indices. (The CUDA layer also checks its own, tighter bound: T x maxK <= 2^30.)
inline int64_t layerTokensArg(const Napi::CallbackInfo& info, size_t index, int64_t maxK) {
  const int64_t T = intArg(info, index, "tokens", 1, int64_t(1) << 24);
  if (T * (maxK + 1) > int64_t(INT32_MAX))
    throwValidation(info.Env(), "tokens: " + std::to_string(T) + " tokens x (maxK " + std::to_string(maxK) +
                                    " + 1) rows do not fit 32-bit row indices; split the batch");
  return T;
}

inline double numberProp(const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
}

// An integer property in [INT32_MIN, INT32_MAX] (a NaN, fraction or out-of-range value is a validation error, not
// an undefined conversion); `fallback` when absent.
inline int32_t int32Prop(const Napi::Object& o, const char* key, int32_t fallback) {
  const double d = numberProp(o, key, fallback);
  if (!(d >= double(INT32_MIN) && d <= double(INT32_MAX)) || d != double(int64_t(d)))
    throwValidation(o.Env(), std::string(key) + ": expected a 32-bit integer, got " + numberText(d));
  return int32_t(d);
}

// The optional steady-clock start of a complexity estimation (argument `index`): 0 when absent or not a finite
// number in int64 range.
inline int64_t steadyNsArg(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || !info[index].IsNumber()) return 0;
  const double d = info[index].As<Napi::Number>().DoubleValue();
  return d >= 0 && d < 9.2e18 ? int64_t(d) : 0;
}

// Keeps a JS value alive for the lifetime of an async worker.
inline Napi::ObjectReference pin(Napi::Value v) {
  if (!v.IsObject()) return Napi::ObjectReference();
  return Napi::Persistent(v.As<Napi::Object>());
}

}  // namespace moe_binding
