#include "telemetry/exposition_text.h"

#include <charconv>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace moe::telemetry {

namespace {

// The closest decimal of `count` significant digits to x > 0 (glibc's printf rounds correctly): its digits, and
// the power of ten of the first.
void closestDecimal(double x, int count, char* digits, int* exponent) {
  char sci[40];
  std::snprintf(sci, sizeof sci, "%.*e", count - 1, x);
  int k = 0;
  const char* q = sci;
  for (; *q != 'e' && *q != '\0'; ++q)  // the digits, whatever the locale's decimal point
    if (*q >= '0' && *q <= '9') digits[k++] = *q;
  *exponent = *q == 'e' ? int(std::strtol(q + 1, nullptr, 10)) : 0;
}

// The double nearest to d1d2..dcount x 10^(exponent - count + 1): an integer mantissa, so no locale's decimal point.
double readBack(const char* digits, int count, int exponent) {
  char text[48];
  std::memcpy(text, digits, size_t(count));
  text[count] = 'e';
  *std::to_chars(text + count + 1, text + sizeof text - 1, exponent - count + 1).ptr = '\0';
  return std::strtod(text, nullptr);
}

// The next decimal up of the same length (9.99 -> 10.0).
void nextUp(char* digits, int count, int* exponent) {
  int i = count - 1;
  while (i >= 0 && digits[i] == '9') digits[i--] = '0';
  if (i >= 0) {
    ++digits[i];
  } else {
    digits[0] = '1';
    ++*exponent;
  }
}

// The digits of x > 0 (finite) that Number::toString chooses: the fewest that read back as x, and of those the
// closest to x; no trailing zeros. Returns their count; *exponent is the power of ten of the first.
// For each length from the shortest possible, the closest decimal of that length is tried: the decimals that read
// back as x form an interval around x, so when any of a length does, the closest one does — except at a power of
// two, whose interval is half as wide below x as above. There the closest 16-digit decimal may lie just below and
// outside while the next one up is inside, so that one is tried too. (Decimals of 15 digits or fewer lie further
// apart than the whole interval is wide, and the closest of 17 digits lies nearer than its narrow side reaches.)
// A normal double starts at 15 digits: if its shortest has fewer, the closest 15-digit decimal is that one padded
// with zeros; a subnormal, whose interval is wider, tries every length. (Not std::to_chars: its double overload
// needs GCC 11's libstdc++, which the prebuild does not ask for; see moe/glibc_compat.h.)
int shortestDigits(double x, char* digits, int* exponent) {
  int exp2 = 0;
  const bool powerOfTwo = std::frexp(x, &exp2) == 0.5;
  int count = x < DBL_MIN ? 1 : 15;
  for (;; ++count) {
    closestDecimal(x, count, digits, exponent);
    const double back = readBack(digits, count, *exponent);
    if (back == x || count == 17) break;
    if (count == 16 && powerOfTwo && back < x) {
      nextUp(digits, count, exponent);
      if (readBack(digits, count, *exponent) == x) break;
    }
  }
  while (count > 1 && digits[count - 1] == '0') --count;
  return count;
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
