// CPUID-based feature detection. The addon is compiled for baseline x86-64; AVX2, AVX-512 and AMX kernels live in
// their own translation units and are only called when this says the CPU and the OS both support them.
#include "moe/cpu_features.h"

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cpu/gemm_isa.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
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
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return f;
  f.intel = ebx == 0x756e6547u && edx == 0x49656e69u && ecx == 0x6c65746eu;  // "Genu" "ineI" "ntel"
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = (ecx >> 27) & 1;
  const bool fma = (ecx >> 12) & 1;
  const bool f16c = (ecx >> 29) & 1;
  if (!osxsave) return f;
  const uint64_t xcr0 = readXcr0();
  const bool osAvx = (xcr0 & 0x6) == 0x6;
  const bool osAvx512 = (xcr0 & 0xe6) == 0xe6;
  const bool osAmx = ((xcr0 >> 17) & 3) == 3;  // XTILECFG and XTILEDATA
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return f;
  f.fma = fma && osAvx;
  // (the AVX2 kernels widen fp8 weights through fp16 with F16C, which every AVX2 CPU has)
  f.avx2 = ((ebx >> 5) & 1) && osAvx && f16c;
  f.avx512f = ((ebx >> 16) & 1) && osAvx512;
  f.avx512bw = ((ebx >> 30) & 1) && osAvx512;
  f.avx512vl = ((ebx >> 31) & 1) && osAvx512;
  unsigned eax1 = 0, ebx1, ecx1, edx1;
  if (__get_cpuid_count(7, 1, &eax1, &ebx1, &ecx1, &edx1)) f.avx512bf16 = ((eax1 >> 5) & 1) && osAvx512;
  f.amxBf16 = ((edx >> 24) & 1) && ((edx >> 22) & 1) && osAmx;
#endif
  return f;
}

// Linux gives a process the AMX tile data state only on request (since 5.16); without it the first tile
// instruction raises SIGILL. Granted once for the whole process.
bool requestAmxPermission() {
#if defined(__x86_64__) && defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
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
    if (best == Isa::Avx512 && f.amxBf16 && amx::built()) best = Isa::Amx;
    if (const char* cap = std::getenv("MOE_ISA")) {
      // any case, surrounding blanks ignored; an unknown value caps nothing (lib/native.ts warns about it)
      std::string name(cap);
      name.erase(0, name.find_first_not_of(" \t"));
      name.erase(name.find_last_not_of(" \t") + 1);
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      Isa limit = best;
      if (name == "scalar") limit = Isa::Scalar;
      if (name == "avx2") limit = Isa::Avx2;
      if (name == "avx512") limit = Isa::Avx512;
      if (static_cast<int>(limit) < static_cast<int>(best)) best = limit;
    }
    if (best == Isa::Amx && !requestAmxPermission()) best = Isa::Avx512;
    return best;
  }();
  return isa;
}

const char* isaName(Isa isa) {
  switch (isa) {
    case Isa::Amx: return "amx";
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace moe
