#include "telemetry/exposition_text.h"

#include <charconv>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace moe::telemetry {

namespace {

// The digits of x > 0 (finite) that Number::toString chooses: the fewest that read back as x, and of those the
// closest to x; no trailing zeros. Returns their count; *exponent is the power of ten of the first. glibc's printf
// rounds correctly, so "%.*e" writes the closest decimal of a given length, and the first length whose closest
// decimal reads back as x is the answer. A normal double can start at 15 digits: if the shortest has 15 or fewer,
// the closest 15-digit decimal is that one padded with zeros, as 15-digit decimals lie further apart than its
// rounding interval is wide; a subnormal's interval is wider, so it tries every length. (Not std::to_chars: its
// double overload needs GCC 11's libstdc++, which the prebuild does not ask for; see moe/glibc_compat.h.)
int shortestDigits(double x, char* digits, int* exponent) {
  char sci[40];
  for (int precision = x < DBL_MIN ? 0 : 14;; ++precision) {
    std::snprintf(sci, sizeof sci, "%.*e", precision, x);
    if (precision == 16 || std::strtod(sci, nullptr) == x) break;
  }
  int k = 0;
  const char* q = sci;
  for (; *q != 'e' && *q != '\0'; ++q)  // the digits, whatever the locale's decimal point
    if (*q >= '0' && *q <= '9') digits[k++] = *q;
  *exponent = *q == 'e' ? int(std::strtol(q + 1, nullptr, 10)) : 0;
  while (k > 1 && digits[k - 1] == '0') --k;
  return k;
}

}  // namespace

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
  char digits[20];
  int exponent = 0;
  const int k = shortestDigits(x, digits, &exponent);
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
