#pragma once
// Helpers shared by the tests: temp dirs, waiting for a condition with a deadline (never a
// sleep as an assertion), running and stopping real processes by PID.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace certagent::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Changes the plug-in settings T of a broker or reloader entry: a copy, edited by `edit`, put
// back (the entry holds them immutable, shared between copies of the config).
template <class T, class Entry, class Edit>
void edit_settings(Entry& entry, Edit edit) {
  T settings = entry.settings.template as<T>();
  edit(settings);
  entry.settings = std::move(settings);
}

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "certagent-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

// Polls `condition` every `interval` until it holds or `deadline` passes.
bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds deadline,
                std::chrono::milliseconds interval = 10ms);

std::string read_file(const fs::path& path);
void write_file(const fs::path& path, const std::string& content, fs::perms mode = fs::perms(0644));

// A free TCP port on 127.0.0.1 at the moment of the call (bind to port 0, read, close).
int free_tcp_port();

// The binary under test and the source tree, from the environment CTest sets.
fs::path certagent_binary();
fs::path source_dir();

// Absolute path of a program on PATH (or /usr/sbin, /sbin). A missing program is a test
// failure: the test scripts install everything the suite needs.
fs::path require_program(const std::string& name);

struct RunResult {
  int exit_code{-1};       // -1: killed by a signal or timed out
  bool timed_out{false};
  std::string out;
  std::string err;
};

// Runs argv to completion (stdin from /dev/null), capturing output.
RunResult run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = 60s,
              const std::map<std::string, std::string>& extra_env = {});

// A child process started in its own process group, stopped by PID (and group) on destruction.
class Process {
 public:
  struct Options {
    std::map<std::string, std::string> env;       // added to the inherited environment
    std::optional<fs::path> stdout_file;          // default: inherit
    std::optional<fs::path> stderr_file;          // default: inherit
    std::optional<fs::path> cwd;
  };
  Process() = default;
  Process(const std::vector<std::string>& argv, const Options& options);
  Process(const std::vector<std::string>& argv) : Process(argv, Options{}) {}
  ~Process();
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;

  pid_t pid() const { return pid_; }
  bool running();                                 // not exited and not a zombie
  // Sends `signal` and waits up to `timeout` for the exit; escalates to SIGKILL after that.
  // Returns the exit status as from waitpid (or -1 if it had to be killed).
  int stop(int signal = 15, std::chrono::milliseconds timeout = 10s);
  void kill_now();                                // SIGKILL to the group, then reap
  // Waits for the process to exit by itself; nullopt on timeout.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);

 private:
  pid_t pid_{-1};
  std::optional<int> status_;
};

}  // namespace certagent::test
