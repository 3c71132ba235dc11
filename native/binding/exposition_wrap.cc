// exposition.renderText / renderInto / formatNumber: glue for native/telemetry/exposition_text.h.
#include "exposition_wrap.h"

#include "addon_data.h"
#include "args.h"
#include "telemetry/exposition_text.h"

namespace moe_binding {

namespace {

using moe::telemetry::TextOp;
static_assert(sizeof(TextOp) == 3 * sizeof(uint32_t), "TextOp is three uint32 words");

size_t lengthOf(const Napi::CallbackInfo& info, size_t index) {
  return info[index].As<Napi::TypedArray>().ElementLength();
}

// The (blob, ops, values) arguments 0..2, checked: every op inside the blob and the values.
struct TextArgs {
  const uint8_t* blob;
  const TextOp* ops;
  size_t nOps;
  const double* values;
  size_t bound;  // upper bound of the text's length
};

TextArgs textArgs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TextArgs a;
  a.blob = typedArrayArg<uint8_t>(info, 0, "blob", 0);
  a.ops = reinterpret_cast<const TextOp*>(typedArrayArg<uint32_t>(info, 1, "ops", 0));
  a.values = typedArrayArg<double>(info, 2, "values", 0);
  const size_t nOpWords = lengthOf(info, 1);
  if (nOpWords % 3 != 0) throwValidation(env, "ops: expected (start, length, slot) triples");
  a.nOps = nOpWords / 3;
  if (!moe::telemetry::textBound(lengthOf(info, 0), a.ops, a.nOps, lengthOf(info, 2), &a.bound))
    throwValidation(env, "ops: an op reaches outside the blob or the values");
  return a;
}

// renderText(blob: Uint8Array, ops: Uint32Array (start, length, slot) triples, values: Float64Array) -> string
Napi::Value RenderText(const Napi::CallbackInfo& info) {
  const TextArgs a = textArgs(info);
  std::string& text = addonData(info.Env()).expositionText;
  text.resize(a.bound);
  text.resize(moe::telemetry::renderTextTo(a.blob, a.ops, a.nOps, a.values, text.data()));
  return Napi::String::New(info.Env(), text.data(), text.size());
}

// renderInto(blob, ops, values, out: Uint8Array) -> bytes written, or -(bytes needed) when `out` may be too small
// (then nothing is written)
Napi::Value RenderInto(const Napi::CallbackInfo& info) {
  const TextArgs a = textArgs(info);
  uint8_t* out = typedArrayArg<uint8_t>(info, 3, "out", 0);
  if (lengthOf(info, 3) < a.bound) return Napi::Number::New(info.Env(), -double(a.bound));
  const size_t n = moe::telemetry::renderTextTo(a.blob, a.ops, a.nOps, a.values, reinterpret_cast<char*>(out));
  return Napi::Number::New(info.Env(), double(n));
}

// formatNumber(x) -> the text the renderers write for x (tests compare it with String(x))
Napi::Value FormatNumber(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throwValidation(info.Env(), "x: expected a number");
  char out[moe::telemetry::kMaxNumberChars];
  const size_t n = moe::telemetry::formatJsNumber(info[0].As<Napi::Number>().DoubleValue(), out);
  return Napi::String::New(info.Env(), out, n);
}

}  // namespace

void InitExposition(Napi::Env env, Napi::Object exports) {
  Napi::Object exposition = Napi::Object::New(env);
  exposition.Set("renderText", Napi::Function::New<RenderText>(env, "renderText"));
  exposition.Set("renderInto", Napi::Function::New<RenderInto>(env, "renderInto"));
  exposition.Set("formatNumber", Napi::Function::New<FormatNumber>(env, "formatNumber"));
  exports.Set("exposition", exposition);
}

}  // namespace moe_binding
