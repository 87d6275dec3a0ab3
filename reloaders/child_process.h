#pragma once
// Runs a program to completion without blocking the io_context: posix_spawn (no shell), stdin
// from /dev/null, its own process group, exit awaited through a pidfd, the tail of stdout and
// stderr kept (bounded). On timeout the whole group gets SIGTERM, then SIGKILL after a grace.

#include "core/result.h"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace certagent::reloaders {

struct ChildSpec {
  std::vector<std::string> argv;               // argv[0] without '/' is looked up on PATH
  std::map<std::string, std::string> env;      // added to (or replacing in) the inherited environment
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds kill_grace{std::chrono::seconds(2)};  // SIGTERM -> SIGKILL
  std::size_t output_limit{4096};              // bytes kept of each stream's tail
};

struct ChildExit {
  int exit_code{-1};       // when exited normally
  int signal{0};           // when killed by a signal
  bool timed_out{false};   // the timeout passed and the group was killed
  std::string stdout_tail;
  std::string stderr_tail;
  std::chrono::milliseconds elapsed{};

  bool success() const { return !timed_out && signal == 0 && exit_code == 0; }
  // "exit code 3", "killed by signal 9 (KILL)", "timed out after 10s (process group killed)"
  std::string describe() const;
};

// The last `max_lines` non-empty lines of `text`, joined with " | ", at most `max_bytes` long.
std::string last_lines(std::string_view text, std::size_t max_lines = 3, std::size_t max_bytes = 512);

// An Error only when the program could not be started (missing binary, no permission); every
// outcome after a successful start is a ChildExit.
[[nodiscard]] boost::asio::awaitable<Result<ChildExit>> run_child(ChildSpec spec);

}  // namespace certagent::reloaders
