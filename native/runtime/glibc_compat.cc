// The addon's own __libc_single_threaded (see native/include/moe/glibc_compat.h): always 0, "the process may have
// several threads", so libstdc++'s inline reference counting always takes its atomic path.
#include "moe/glibc_compat.h"

#if defined(__linux__) && defined(__x86_64__) && !defined(MOE_NO_GLIBC_COMPAT) && defined(__GLIBC__)
extern "C" {
__attribute__((visibility("hidden"))) char moe_libc_single_threaded = 0;
}
#endif
