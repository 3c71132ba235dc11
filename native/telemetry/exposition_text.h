// The Prometheus text of a metrics collector's series, written in one pass over flat arrays: the collector
// (lib/observability/series-store.ts) keeps every series value in one Float64Array and the fixed text around the
// values (headers, `name{labels} ` prefixes) in one byte blob; a scrape renders both here instead of building a
// few hundred JS strings. Pure C++ (no Node headers); the binding is native/binding/exposition_wrap.cc.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe::telemetry {

// Writes `x` as ECMAScript's Number.prototype.toString() does (the shortest digits that read back as `x`, laid out
// by the spec's rules: plain up to 21 integer digits, exponent form beyond and below 1e-6), with prom-client's
// spellings of NaN ("Nan") and the infinities ("+Inf", "-Inf"). `out` holds at least kMaxNumberChars; returns the
// length written.
constexpr size_t kMaxNumberChars = 32;
size_t formatJsNumber(double x, char* out);

// One piece of text: `length` bytes of the blob from `start`, then values[slot] unless slot == kNoValue.
constexpr uint32_t kNoValue = 0xffffffffu;
struct TextOp {
  uint32_t start, length, slot;
};

// Checks that every op lies inside the blob and the values (the caller's arrays are untrusted) and returns an
// upper bound of the text's length in `bound`; false when an op reaches outside.
bool textBound(size_t blobBytes, const TextOp* ops, size_t nOps, size_t nValues, size_t* bound);

// Writes the ops' text to `out`, which holds at least textBound's bound (checked ops only). Returns its length.
size_t renderTextTo(const uint8_t* blob, const TextOp* ops, size_t nOps, const double* values, char* out);

}  // namespace moe::telemetry
