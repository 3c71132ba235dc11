// Bench-only functions: roofline anchors and fast seeded weights (moe/roofline.h). Exposed as `bench.*`.
#include "bench_wrap.h"

#include "addon_data.h"
#include "args.h"
#include "moe/roofline.h"

namespace moe_binding {

namespace {

int threadsArg(const Napi::CallbackInfo& info, size_t index) {
  return int(intArg(info, index, "threads", 1, addonData(info.Env()).pool->size()));
}

// streamRead(data: Float32Array, threads) -> checksum (number)
Napi::Value StreamRead(const Napi::CallbackInfo& info) {
  const float* data = typedArrayArg<float>(info, 0, "data", 2);
  const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
  const uint64_t sum = moe::streamRead(data, n, *addonData(info.Env()).pool, threadsArg(info, 1));
  return Napi::Number::New(info.Env(), double(sum & 0xfffff));
}

// denseGemmSeconds(M, N, K, dtype (0|1), reps, threads) -> median seconds
Napi::Value DenseGemm(const Napi::CallbackInfo& info) {
  const int64_t M = intArg(info, 0, "M", 1, 1 << 16), N = intArg(info, 1, "N", 1, 1 << 16);
  const int64_t K = intArg(info, 2, "K", 1, 1 << 16);
  const int dtype = int(intArg(info, 3, "dtype", 0, 1)), reps = int(intArg(info, 4, "reps", 1, 1000));
  const double s =
      moe::denseGemmSeconds(M, N, K, moe::DType(dtype), reps, *addonData(info.Env()).pool, threadsArg(info, 5));
  return Napi::Number::New(info.Env(), s);
}

// fillNormal(out: Float32Array, seed, std)
Napi::Value FillNormal(const Napi::CallbackInfo& info) {
  float* out = typedArrayArg<float>(info, 0, "out", 1);
  const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
  const int64_t seed = intArg(info, 1, "seed", 0, int64_t(1) << 52);
  const double stddev = info[2].ToNumber().DoubleValue();
  auto& pool = *addonData(info.Env()).pool;
  moe::fillNormal(out, n, uint64_t(seed), float(stddev), pool, pool.size());
  return info.Env().Undefined();
}

}  // namespace

void InitBench(Napi::Env env, Napi::Object exports) {
  Napi::Object bench = Napi::Object::New(env);
  bench.Set("streamRead", Napi::Function::New<StreamRead>(env, "streamRead"));
  bench.Set("denseGemmSeconds", Napi::Function::New<DenseGemm>(env, "denseGemmSeconds"));
  bench.Set("fillNormal", Napi::Function::New<FillNormal>(env, "fillNormal"));
  exports.Set("bench", bench);
}

}  // namespace moe_binding
