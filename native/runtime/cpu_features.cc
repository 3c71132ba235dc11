// CPUID-based feature detection. The addon is compiled for baseline x86-64; AVX2 and AVX-512 kernels live in
// their own translation units and are only called when this says the CPU and the OS both support them.
#include "moe/cpu_features.h"

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace moe {

namespace {

#if defined(__x86_64__)
uint64_t readXcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = (ecx >> 27) & 1;
  const bool fma = (ecx >> 12) & 1;
  if (!osxsave) return f;
  const uint64_t xcr0 = readXcr0();
  const bool osAvx = (xcr0 & 0x6) == 0x6;
  const bool osAvx512 = (xcr0 & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return f;
  f.fma = fma && osAvx;
  f.avx2 = ((ebx >> 5) & 1) && osAvx;
  f.avx512f = ((ebx >> 16) & 1) && osAvx512;
  f.avx512bw = ((ebx >> 30) & 1) && osAvx512;
  f.avx512vl = ((ebx >> 31) & 1) && osAvx512;
  unsigned eax1 = 0, ebx1, ecx1, edx1;
  if (__get_cpuid_count(7, 1, &eax1, &ebx1, &ecx1, &edx1)) f.avx512bf16 = ((eax1 >> 5) & 1) && osAvx512;
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpuFeatures() {
  static const CpuFeatures features = detect();
  return features;
}

Isa bestIsa() {
  static const Isa isa = [] {
    const CpuFeatures& f = cpuFeatures();
    Isa best = Isa::Scalar;
    if (f.avx2 && f.fma) best = Isa::Avx2;
    if (best == Isa::Avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512bf16) best = Isa::Avx512;
    if (const char* cap = std::getenv("MOE_ISA")) {
      // any case, surrounding blanks ignored; an unknown value caps nothing (lib/native.ts warns about it)
      std::string name(cap);
      name.erase(0, name.find_first_not_of(" \t"));
      name.erase(name.find_last_not_of(" \t") + 1);
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      Isa limit = best;
      if (name == "scalar") limit = Isa::Scalar;
      if (name == "avx2") limit = Isa::Avx2;
      if (static_cast<int>(limit) < static_cast<int>(best)) best = limit;
    }
    return best;
  }();
  return isa;
}

const char* isaName(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace moe
