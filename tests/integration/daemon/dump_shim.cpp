// LD_PRELOAD'ed into the daemon by core_dump_test's control cases: switches off the protections
// under test, so that the test shows it does find a key in a core when one is there.
//   CERTAGENT_SHIM_KEEP_DUMPABLE=1  prctl(PR_SET_DUMPABLE, 0) is ignored
//   CERTAGENT_SHIM_KEEP_DUMPS=1     madvise(MADV_DONTDUMP) is ignored (ours and OpenSSL's)
// Everything else goes to the kernel unchanged.

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdlib>
#include <cstring>

namespace {
bool on(const char* name) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, "1") == 0;
}
}  // namespace

extern "C" int prctl(int option, ...) {
  va_list ap;
  va_start(ap, option);
  unsigned long a2 = va_arg(ap, unsigned long);
  unsigned long a3 = va_arg(ap, unsigned long);
  unsigned long a4 = va_arg(ap, unsigned long);
  unsigned long a5 = va_arg(ap, unsigned long);
  va_end(ap);
  if (option == PR_SET_DUMPABLE && a2 == 0 && on("CERTAGENT_SHIM_KEEP_DUMPABLE")) return 0;
  return static_cast<int>(::syscall(SYS_prctl, option, a2, a3, a4, a5));
}

extern "C" int madvise(void* addr, size_t length, int advice) {
  if (advice == MADV_DONTDUMP && on("CERTAGENT_SHIM_KEEP_DUMPS")) return 0;
  return static_cast<int>(::syscall(SYS_madvise, addr, length, advice));
}
