// Forced into every C++ translation unit of the CPU addon (-include, binding.gyp and CMakeLists.txt) so that the
// bundled prebuild loads on older Linux systems than the one it was built on. A binary asks for the newest version
// of each glibc / libstdc++ symbol the build machine has; these directives bind the few that moved to the oldest
// version that does the same job:
//   - exp, log, pow, exp2, log2 (new versions in glibc 2.29) and their float forms (2.27): the new versions only
//     dropped the SVID error wrapper, which the old ones keep (a new glibc runs the same function behind it, ~0.6 ns
//     more a call; the kernels' hot loops use their own exp). An old glibc runs its own, within an ulp.
//   - dlopen, dlsym, dlerror, dlclose (2.34, when libdl moved into libc): the 2.2.5 versions are libdl's, which the
//     addon names as a dependency (the linker flags), and glibc 2.34+ keeps them in libc.
//   - std::condition_variable::wait (GLIBCXX_3.4.30, GCC 12): the older version is the same wait, declared noexcept.
//   - __libc_single_threaded (glibc 2.32), which libstdc++'s headers read to skip atomic reference counts while a
//     process has one thread: renamed to a hidden variable of the addon that always says "threaded" (the
//     atomic path, which is always correct).
// std::to_chars for double (GLIBCXX_3.4.29) is not used (native/telemetry/exposition_text.cc).
// test/package.test.ts reads the prebuild's version needs and fails when one goes past the floor the README
// states; scripts/test-old-glibc.sh runs the tests on Debian 11's glibc. MOE_NO_GLIBC_COMPAT turns this off.
#pragma once

#if defined(__linux__) && defined(__x86_64__) && !defined(MOE_NO_GLIBC_COMPAT)
#include <features.h>
#if defined(__GLIBC__)

#define MOE_GLIBC_SYMVER(name, version) __asm__(".symver " #name "," #name "@" #version)
MOE_GLIBC_SYMVER(exp, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(log, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(pow, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(exp2, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(log2, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(expf, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(logf, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(powf, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(exp2f, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(log2f, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(dlopen, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(dlsym, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(dlerror, GLIBC_2.2.5);
MOE_GLIBC_SYMVER(dlclose, GLIBC_2.2.5);
#ifdef __cplusplus
// std::condition_variable::wait(std::unique_lock<std::mutex>&)
MOE_GLIBC_SYMVER(_ZNSt18condition_variable4waitERSt11unique_lockISt5mutexE, GLIBCXX_3.4.11);
#endif
#undef MOE_GLIBC_SYMVER

#define __libc_single_threaded moe_libc_single_threaded
#ifdef __cplusplus
extern "C" {
#endif
// Defined (as 0) in native/runtime/glibc_compat.cc.
extern __attribute__((visibility("hidden"))) char moe_libc_single_threaded;
#ifdef __cplusplus
}
#endif

#endif  // __GLIBC__
#endif
