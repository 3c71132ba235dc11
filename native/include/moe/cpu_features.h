// Which SIMD level the kernels may use on this CPU, read once from CPUID (and XGETBV for OS support).
#pragma once

namespace moe {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512bf16 = false;
};

const CpuFeatures& cpuFeatures();
// The widest ISA both the CPU and the OS support, capped by MOE_ISA=scalar|avx2|avx512 when set.
Isa bestIsa();
const char* isaName(Isa isa);

}  // namespace moe
