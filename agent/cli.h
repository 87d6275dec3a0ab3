#pragma once
// The command line (DESIGN.md "CLI — contract"): argv in, exit code out.

namespace certagent {

// Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
int run_cli(int argc, char** argv);

}  // namespace certagent
