// Which SIMD level the kernels may use on this CPU, read once from CPUID (and XGETBV for OS support).
#pragma once

namespace moe {

// Amx: AVX-512 plus the AMX tile unit for bf16 matrix products (Xeon since Sapphire Rapids).
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512bf16 = false;
  bool amxBf16 = false;  // AMX-TILE and AMX-BF16, with the OS saving tile state (XCR0)
  bool intel = false;    // vendor GenuineIntel (the kernels' weight prefetch is tuned per vendor)
};

const CpuFeatures& cpuFeatures();
// The widest ISA both the CPU and the OS support, capped by MOE_ISA=scalar|avx2|avx512|amx when set. AMX also needs
// the kernel's per-process permission (arch_prctl), which the first call asks for when AMX could be chosen.
Isa bestIsa();
const char* isaName(Isa isa);

}  // namespace moe
