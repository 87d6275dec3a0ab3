#include "agent/cli.h"

#include <malloc.h>

#include <exception>
#include <iostream>

int main(int argc, char** argv) {
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
