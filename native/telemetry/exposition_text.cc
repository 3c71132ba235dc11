#include "telemetry/exposition_text.h"

#include <charconv>
#include <cmath>
#include <cstring>

namespace moe::telemetry {

size_t formatJsNumber(double x, char* out) {
  if (std::isnan(x)) {
    std::memcpy(out, "Nan", 3);
    return 3;
  }
  if (std::isinf(x)) {
    std::memcpy(out, x < 0 ? "-Inf" : "+Inf", 4);
    return 4;
  }
  if (x == 0) {  // -0 too, as String(-0) === '0'
    out[0] = '0';
    return 1;
  }
  char* p = out;
  if (x < 0) {
    *p++ = '-';
    x = -x;
  }
  if (x < 9007199254740992.0 && x == std::floor(x))  // an integer below 2^53: all its digits
    return size_t(std::to_chars(p, out + kMaxNumberChars, uint64_t(x)).ptr - out);
  // The shortest round-trip digits d[.ddd] and exponent, then the spec's layout (ECMA-262 Number::toString:
  // k digits, the decimal point after n of them).
  char sci[kMaxNumberChars];
  const char* end = std::to_chars(sci, sci + sizeof sci, x, std::chars_format::scientific).ptr;
  char digits[20];
  int k = 0;
  const char* q = sci;
  for (; q < end && *q != 'e'; ++q)
    if (*q != '.') digits[k++] = *q;
  int exponent = 0;
  std::from_chars(q + 1 + (q[1] == '+'), end, exponent);
  const int n = exponent + 1;
  if (k <= n && n <= 21) {
    std::memcpy(p, digits, size_t(k));
    std::memset(p + k, '0', size_t(n - k));
    p += n;
  } else if (0 < n && n <= 21) {
    std::memcpy(p, digits, size_t(n));
    p += n;
    *p++ = '.';
    std::memcpy(p, digits + n, size_t(k - n));
    p += k - n;
  } else if (-6 < n && n <= 0) {
    *p++ = '0';
    *p++ = '.';
    std::memset(p, '0', size_t(-n));
    p += -n;
    std::memcpy(p, digits, size_t(k));
    p += k;
  } else {
    *p++ = digits[0];
    if (k > 1) {
      *p++ = '.';
      std::memcpy(p, digits + 1, size_t(k - 1));
      p += k - 1;
    }
    *p++ = 'e';
    *p++ = n - 1 < 0 ? '-' : '+';
    p = std::to_chars(p, out + kMaxNumberChars, n - 1 < 0 ? 1 - n : n - 1).ptr;
  }
  return size_t(p - out);
}

bool textBound(size_t blobBytes, const TextOp* ops, size_t nOps, size_t nValues, size_t* bound) {
  size_t bytes = 0;
  for (size_t i = 0; i < nOps; ++i) {
    const TextOp& op = ops[i];
    if (op.start > blobBytes || op.length > blobBytes - op.start) return false;
    if (op.slot != kNoValue && op.slot >= nValues) return false;
    bytes += op.length + (op.slot != kNoValue ? kMaxNumberChars : 0);
  }
  *bound = bytes;
  return true;
}

size_t renderTextTo(const uint8_t* blob, const TextOp* ops, size_t nOps, const double* values, char* out) {
  char* p = out;
  for (size_t i = 0; i < nOps; ++i) {
    const TextOp& op = ops[i];
    if (op.length != 0) std::memcpy(p, blob + op.start, op.length);  // (an empty blob may have no data pointer)
    p += op.length;
    if (op.slot != kNoValue) p += formatJsNumber(values[op.slot], p);
  }
  return size_t(p - out);
}

}  // namespace moe::telemetry
