#include "agent/cli.h"

#include <malloc.h>
#include <sys/prctl.h>

#include <cerrno>
#include <cstring>

#include <exception>
#include <iostream>

int main(int argc, char** argv) {
  // Every command holds private keys or broker secrets at some point (run, fetch, enroll): no
  // core dump of this process, and no ptrace or /proc/PID/mem for other processes of the same
  // user (only CAP_SYS_PTRACE, i.e. root, still gets in). Before anything is read or made.
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    std::cerr << "certagent: prctl(PR_SET_DUMPABLE, 0) failed: " << std::strerror(errno) << "\n";
    return 1;
  }
  // Fixed thresholds turn off glibc's dynamic ones, which rise to the largest block ever freed
  // (a state.json rendering, the parsed configuration) and then keep such blocks in the heap
  // for good. Measured with 1,000 certificates: RSS 24.5 -> 21.7 MiB. 128 KiB is glibc's default.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  mallopt(M_TRIM_THRESHOLD, 128 * 1024);
  try {
    return certagent::run_cli(argc, argv);
  } catch (const std::exception& e) {
    // Nothing should get here: modules return errors as values. If something does, say what
    // and exit as a runtime failure rather than aborting without a word.
    std::cerr << "certagent: internal error: " << e.what() << "\n";
    return 1;
  }
}
