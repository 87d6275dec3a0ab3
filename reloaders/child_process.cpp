#include "reloaders/child_process.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>

extern char** environ;

namespace certagent::reloaders {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace {

// Time after the exit to let the readers see EOF; a grandchild that keeps the pipes open
// (a daemon started by a hook) must not hold us up longer than this.
constexpr milliseconds kDrainWait{200};
// After SIGKILL a process normally disappears at once; one in uninterruptible sleep may not.
constexpr milliseconds kKillWait{5000};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_{-1};
};

struct SpawnAttr {
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  SpawnAttr() {
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_init(&actions);
  }
  ~SpawnAttr() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  SpawnAttr(const SpawnAttr&) = delete;
  SpawnAttr& operator=(const SpawnAttr&) = delete;
};

void append_bounded(std::string& tail, const char* data, std::size_t n, std::size_t limit) {
  tail.append(data, n);
  // Trim in batches so a chatty child costs amortised O(n).
  if (tail.size() > 2 * limit) tail.erase(0, tail.size() - limit);
}

struct Output {
  Output(asio::any_io_executor ex, int out_fd, int err_fd, std::size_t limit)
      : out(ex, out_fd), err(ex, err_fd), drained(ex), limit(limit) {}
  asio::posix::stream_descriptor out;
  asio::posix::stream_descriptor err;
  std::string out_tail;
  std::string err_tail;
  asio::steady_timer drained;
  std::size_t limit;
  int open_readers{2};
};

asio::awaitable<void> read_stream(std::shared_ptr<Output> state, asio::posix::stream_descriptor& d,
                                  std::string& tail) {
  std::array<char, 4096> buf;
  for (;;) {
    auto [ec, n] = co_await d.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
    if (n > 0) append_bounded(tail, buf.data(), n, state->limit);
    if (ec) break;
  }
  if (--state->open_readers == 0) state->drained.cancel();
}

std::vector<std::string> merged_environment(const std::map<std::string, std::string>& extra) {
  std::vector<std::string> out;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string_view::npos && extra.count(std::string(kv.substr(0, eq)))) continue;
    out.emplace_back(kv);
  }
  for (const auto& [k, v] : extra) out.push_back(k + "=" + v);
  return out;
}

// Waits for the pidfd to become readable (the child exited) or the time to pass.
asio::awaitable<bool> wait_exit(asio::posix::stream_descriptor& pidfd, milliseconds limit) {
  asio::steady_timer timer(pidfd.get_executor());
  timer.expires_after(limit);
  auto r = co_await (pidfd.async_wait(asio::posix::descriptor_base::wait_read,
                                      asio::as_tuple(asio::use_awaitable)) ||
                     timer.async_wait(asio::as_tuple(asio::use_awaitable)));
  co_return r.index() == 0 && !std::get<0>(std::get<0>(r));
}

// Without a pidfd (kernels before 5.3): poll waitpid.
asio::awaitable<bool> poll_exit(pid_t pid, milliseconds limit, int& status, bool& reaped) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto end = steady_clock::now() + limit;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) {
      reaped = r == pid;
      co_return true;
    }
    if (steady_clock::now() >= end) co_return false;
    timer.expires_after(milliseconds(10));
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  }
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return std::to_string(sig) + (abbrev ? std::string(" (") + abbrev + ")" : std::string());
}

}  // namespace

std::string ChildExit::describe() const {
  if (timed_out) {
    return "timed out after " + std::to_string(elapsed.count()) + "ms (process group killed)";
  }
  if (signal != 0) return "killed by signal " + signal_name(signal);
  return "exit code " + std::to_string(exit_code);
}

std::string last_lines(std::string_view text, std::size_t max_lines, std::size_t max_bytes) {
  std::vector<std::string_view> lines;
  std::size_t end = text.size();
  while (end > 0 && lines.size() < max_lines) {
    std::size_t start = text.rfind('\n', end - 1);
    std::size_t from = start == std::string_view::npos ? 0 : start + 1;
    std::string_view line = text.substr(from, end - from);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (!line.empty()) lines.push_back(line);
    if (start == std::string_view::npos) break;
    end = start;
  }
  std::string out;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (!out.empty()) out += " | ";
    out += *it;
  }
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (out.size() > max_bytes) out = "..." + out.substr(out.size() - max_bytes + 3);
  return out;
}

asio::awaitable<Result<ChildExit>> run_child(ChildSpec spec) {
  auto ex = co_await asio::this_coro::executor;
  if (spec.argv.empty() || spec.argv[0].empty()) co_return make_error("empty command");

  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) co_return make_error(std::string("pipe: ") + std::strerror(errno));
  Fd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) co_return make_error(std::string("pipe: ") + std::strerror(errno));
  Fd err_r(err_pipe[0]), err_w(err_pipe[1]);

  SpawnAttr sa;
  posix_spawn_file_actions_addopen(&sa.actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&sa.actions, out_w.get(), 1);
  posix_spawn_file_actions_adddup2(&sa.actions, err_w.get(), 2);
  sigset_t none;
  sigemptyset(&none);
  sigset_t all;
  sigfillset(&all);
  // Own process group (so a timeout kills the hook's children too), no inherited signal mask
  // or ignored signals (the daemon may ignore SIGPIPE; a shell script should not).
  posix_spawnattr_setpgroup(&sa.attr, 0);
  posix_spawnattr_setsigmask(&sa.attr, &none);
  posix_spawnattr_setsigdefault(&sa.attr, &all);
  posix_spawnattr_setflags(&sa.attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv;
  for (auto& a : spec.argv) argv.push_back(a.data());
  argv.push_back(nullptr);
  auto env_strings = merged_environment(spec.env);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  const auto started = steady_clock::now();
  pid_t pid = -1;
  const bool search_path = spec.argv[0].find('/') == std::string::npos;
  // glibc's posix_spawn reports exec failures (ENOENT, EACCES) as its return value.
  int rc = search_path ? ::posix_spawnp(&pid, argv[0], &sa.actions, &sa.attr, argv.data(), envp.data())
                       : ::posix_spawn(&pid, argv[0], &sa.actions, &sa.attr, argv.data(), envp.data());
  if (rc != 0) {
    co_return make_error("cannot execute " + spec.argv[0] + ": " + std::strerror(rc));
  }
  out_w.reset();
  err_w.reset();

  auto output = std::make_shared<Output>(ex, out_r.release(), err_r.release(), spec.output_limit);
  asio::co_spawn(ex, read_stream(output, output->out, output->out_tail), asio::detached);
  asio::co_spawn(ex, read_stream(output, output->err, output->err_tail), asio::detached);

  ChildExit result;
  int status = 0;
  bool reaped = false;
  // The raw syscall: glibc 2.36's <sys/pidfd.h> lacks extern "C" for C++.
  Fd pidfd_owner(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (pidfd_owner.get() >= 0) {
    asio::posix::stream_descriptor pidfd(ex, pidfd_owner.release());
    bool exited = co_await wait_exit(pidfd, spec.timeout);
    if (!exited) {
      result.timed_out = true;
      ::kill(-pid, SIGTERM);
      exited = co_await wait_exit(pidfd, spec.kill_grace);
      if (!exited) {
        ::kill(-pid, SIGKILL);
        exited = co_await wait_exit(pidfd, kKillWait);
      }
    }
    if (exited) {
      reaped = ::waitpid(pid, &status, WNOHANG) == pid;
    }
  } else {
    bool exited = co_await poll_exit(pid, spec.timeout, status, reaped);
    if (!exited) {
      result.timed_out = true;
      ::kill(-pid, SIGTERM);
      exited = co_await poll_exit(pid, spec.kill_grace, status, reaped);
      if (!exited) {
        ::kill(-pid, SIGKILL);
        co_await poll_exit(pid, kKillWait, status, reaped);
      }
    }
  }
  result.elapsed = std::chrono::duration_cast<milliseconds>(steady_clock::now() - started);
  if (reaped) {
    if (WIFEXITED(status)) {
      result.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      result.signal = WTERMSIG(status);
    }
  } else if (!result.timed_out) {
    // Reaped by someone else (SIGCHLD ignored): the status is lost.
    result.signal = 0;
    result.exit_code = -1;
  }

  if (output->open_readers > 0) {
    output->drained.expires_after(kDrainWait);
    co_await output->drained.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  boost::system::error_code ignored;
  output->out.close(ignored);
  output->err.close(ignored);
  result.stdout_tail = output->out_tail;
  result.stderr_tail = output->err_tail;
  if (result.stdout_tail.size() > spec.output_limit) {
    result.stdout_tail.erase(0, result.stdout_tail.size() - spec.output_limit);
  }
  if (result.stderr_tail.size() > spec.output_limit) {
    result.stderr_tail.erase(0, result.stderr_tail.size() - spec.output_limit);
  }
  co_return result;
}

}  // namespace certagent::reloaders
