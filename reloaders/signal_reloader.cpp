#include "reloaders/signal_reloader.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>

namespace certagent::reloaders {
namespace asio = boost::asio;

namespace {

constexpr std::size_t kMaxPidFileBytes = 64;

std::string signal_label(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

}  // namespace

Result<pid_t> read_pid_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return make_error("cannot read pid file " + path.string() + ": " + std::strerror(errno));
  char buf[kMaxPidFileBytes + 1];
  ssize_t n = ::read(fd, buf, sizeof buf);
  int err = errno;
  ::close(fd);
  if (n < 0) return make_error("cannot read pid file " + path.string() + ": " + std::strerror(err));
  if (static_cast<std::size_t>(n) > kMaxPidFileBytes) {
    return make_error("pid file " + path.string() + " is too long to hold a pid");
  }
  std::string_view text(buf, static_cast<std::size_t>(n));
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  if (text.empty()) return make_error("pid file " + path.string() + " is empty");
  long long value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return make_error("pid file " + path.string() + " does not hold a positive integer");
    }
    value = value * 10 + (c - '0');
    if (value > std::numeric_limits<pid_t>::max()) {
      return make_error("pid file " + path.string() + " holds an out-of-range pid");
    }
  }
  if (value <= 0) return make_error("pid file " + path.string() + " does not hold a positive integer");
  return static_cast<pid_t>(value);
}

bool process_alive(pid_t pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return ::kill(pid, 0) == 0 || errno == EPERM;  // no procfs: trust kill()
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z' &&
         line[close + 2] != 'X';
}

SignalReloader::SignalReloader(const config::ReloaderConfig& config, const SignalReloaderConfig& signal,
                               const ReloaderContext& context)
    : ReloaderBase("signal", config, context), signal_(signal) {}

asio::awaitable<ReloadOutcome> SignalReloader::apply(const ReloadEvent&, Deadline) {
  pid_t pid = -1;
  std::string source;
  if (!signal_.pid_file.empty()) {
    auto r = read_pid_file(signal_.pid_file);
    if (!r) co_return ReloadOutcome{ReloadResult::failure, r.error().message};
    pid = *r;
    source = " from " + signal_.pid_file.string();
  } else if (signal_.pid && *signal_.pid > 0) {
    pid = *signal_.pid;
  } else {
    co_return ReloadOutcome{ReloadResult::failure, "neither pid_file nor a positive pid is configured"};
  }
  const std::string label = signal_label(signal_.signal);
  if (!process_alive(pid)) {
    co_return ReloadOutcome{ReloadResult::failure,
                            "process " + std::to_string(pid) + source + " is not running" +
                                (source.empty() ? std::string() : " (stale pid file)") + "; " + label + " not sent"};
  }
  if (::kill(pid, signal_.signal) != 0) {
    co_return ReloadOutcome{ReloadResult::failure, "sending " + label + " to " + std::to_string(pid) + source +
                                                       ": " + std::strerror(errno)};
  }
  co_return ReloadOutcome{ReloadResult::success, label + " sent to " + std::to_string(pid) + source};
}

}  // namespace certagent::reloaders
