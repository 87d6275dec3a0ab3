#include "agent/cli.h"

#include <exception>
#include <iostream>

int main(int argc, char** argv) {
  try {
    return certagent::run_cli(argc, argv);
  } catch (const std::exception& e) {
    // Nothing should get here: modules return errors as values. If something does, say what
    // and exit as a runtime failure rather than aborting without a word.
    std::cerr << "certagent: internal error: " << e.what() << "\n";
    return 1;
  }
}
