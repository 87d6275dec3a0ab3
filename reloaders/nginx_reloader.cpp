#include "reloaders/nginx_reloader.h"

#include "core/logging.h"
#include "reloaders/child_process.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

namespace certagent::reloaders {
namespace asio = boost::asio;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace {

// Without verification: how long the error log is watched for the master's `[emerg]` after
// `nginx -s reload` returned. The master handles SIGHUP at once and fails within milliseconds.
constexpr milliseconds kLogWindow{500};
constexpr milliseconds kLogPoll{20};
constexpr std::size_t kMaxLogRead = 1024 * 1024;
constexpr std::size_t kMaxLineBytes = 400;

bool is_nginx(const std::string& arg0) {
  auto base = std::filesystem::path(arg0).filename().string();
  return base.rfind("nginx", 0) == 0;
}

// The options that select which nginx instance a command talks to.
bool instance_option(const std::string& arg, bool& takes_value) {
  for (const char* opt : {"-c", "-p", "-g", "-e"}) {
    if (arg == opt) {
      takes_value = true;
      return true;
    }
    if (arg.size() > 2 && arg.rfind(opt, 0) == 0) {
      takes_value = false;
      return true;
    }
  }
  return false;
}

std::vector<std::string> instance_options(const std::vector<std::string>& command) {
  std::vector<std::string> out;
  for (std::size_t i = 1; i < command.size(); ++i) {
    bool takes_value = false;
    if (!instance_option(command[i], takes_value)) continue;
    out.push_back(command[i]);
    if (takes_value && i + 1 < command.size()) out.push_back(command[++i]);
  }
  return out;
}

std::string clean_line(std::string_view line) {
  std::string out(line.substr(0, kMaxLineBytes));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  return out;
}

bool digits(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

bool is_nginx_emerg_line(std::string_view line) {
  // "yyyy/mm/dd hh:mm:ss [emerg] <pid>#<tid>: "
  constexpr std::string_view kLevel = " [emerg] ";
  if (line.size() < 19 + kLevel.size() + 4) return false;
  const std::string_view time = line.substr(0, 19);
  if (!digits(time.substr(0, 4)) || time[4] != '/' || !digits(time.substr(5, 2)) || time[7] != '/' ||
      !digits(time.substr(8, 2)) || time[10] != ' ' || !digits(time.substr(11, 2)) || time[13] != ':' ||
      !digits(time.substr(14, 2)) || time[16] != ':' || !digits(time.substr(17, 2)))
    return false;
  if (line.substr(19, kLevel.size()) != kLevel) return false;
  const std::string_view rest = line.substr(19 + kLevel.size());
  const std::size_t hash = rest.find('#');
  return hash > 0 && hash != std::string_view::npos && digits(rest.substr(0, hash));
}

void ErrorLogWatch::start() {
  partial_.clear();
  skipping_ = false;
  found_.reset();
  offset_ = 0;
  if (path_.empty()) return;
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return;
  struct stat st {};
  if (::fstat(fd, &st) == 0) offset_ = static_cast<std::uintmax_t>(st.st_size);
  // A last line without its end yet: what follows finishes it, it is no new line.
  char last = '\n';
  if (offset_ > 0 && ::pread(fd, &last, 1, static_cast<off_t>(offset_ - 1)) == 1) skipping_ = last != '\n';
  ::close(fd);
}

std::optional<std::string> ErrorLogWatch::check() {
  if (found_ || path_.empty()) return found_;
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return std::nullopt;
  }
  auto size = static_cast<std::uintmax_t>(st.st_size);
  if (size < offset_) {  // rotated or truncated: the new content is all after the reload
    offset_ = 0;
    partial_.clear();
    skipping_ = false;
  }
  if (size - offset_ > kMaxLogRead) {  // a flood: look at the most recent part only
    offset_ = size - kMaxLogRead;
    partial_.clear();
    skipping_ = true;
  }
  std::string chunk(static_cast<std::size_t>(size - offset_), '\0');
  ssize_t n = chunk.empty() ? 0 : ::pread(fd, chunk.data(), chunk.size(), static_cast<off_t>(offset_));
  ::close(fd);
  if (n <= 0) return std::nullopt;
  chunk.resize(static_cast<std::size_t>(n));
  offset_ += static_cast<std::uintmax_t>(n);
  std::string_view fresh(chunk);
  if (skipping_) {
    const auto nl = fresh.find('\n');
    if (nl == std::string_view::npos) return std::nullopt;
    fresh.remove_prefix(nl + 1);
    skipping_ = false;
  }
  partial_ += fresh;
  std::size_t pos = 0;
  for (;;) {
    auto nl = partial_.find('\n', pos);
    if (nl == std::string::npos) break;
    std::string_view line(partial_.data() + pos, nl - pos);
    if (is_nginx_emerg_line(line)) {
      found_ = clean_line(line);
      break;
    }
    pos = nl + 1;
  }
  partial_.erase(0, found_ ? partial_.size() : pos);
  if (partial_.size() > kMaxLineBytes * 4) {  // no newline in sight: not a log line
    partial_.clear();
    skipping_ = true;
  }
  return found_;
}

std::vector<std::string> NginxReloader::default_test_command(const std::vector<std::string>& command) {
  if (command.empty() || !is_nginx(command[0])) return {};
  std::vector<std::string> test{command[0], "-t", "-q"};
  for (auto& opt : instance_options(command)) test.push_back(std::move(opt));
  return test;
}

std::string NginxReloader::instance_key(const std::vector<std::string>& command) {
  std::string key = "nginx:";
  if (command.empty()) return key;
  if (!is_nginx(command[0])) {
    for (const auto& a : command) key += a + '\0';
    return key;
  }
  key += command[0];
  // The error log (-e) does not select the instance; -c, -p and -g do.
  auto opts = instance_options(command);
  for (std::size_t i = 0; i < opts.size(); ++i) {
    if (opts[i] == "-e") {
      ++i;
      continue;
    }
    if (opts[i].rfind("-e", 0) == 0) continue;
    key += '\0' + opts[i];
  }
  return key;
}

NginxReloader::NginxReloader(const config::ReloaderConfig& config, const NginxReloaderConfig& nginx,
                             const ReloaderContext& context)
    : ReloaderBase("nginx", config, context),
      nginx_(nginx),
      test_command_(nginx.test_command.empty() ? default_test_command(nginx.command) : nginx.test_command),
      log_watch_(nginx.error_log),
      global_mutex_(named_mutex(instance_key(nginx.command))) {
  if (test_command_.empty()) {
    logger_->info("event=nginx_precheck_disabled reason={}",
                  certagent::log::quote("test_command is not set and the command does not run nginx"));
  }
  if (!log_watch_.enabled()) {
    logger_->warn("event=nginx_error_log_unset effect={}",
                  certagent::log::quote("a reload the master fails after `nginx -s reload` returned is seen "
                                        "only by verification"));
  }
}

asio::awaitable<ReloadOutcome> NginxReloader::run(const ReloadEvent& event, Deadline deadline) {
  // Held through verification: a second reload would restart the old-worker overlap.
  auto mine = co_await instance_mutex_.lock_until(deadline);
  if (!mine) co_return ReloadOutcome{ReloadResult::timeout, "the previous reload of this reloader is still running"};
  auto global = co_await global_mutex_->lock_until(deadline);
  if (!global) co_return ReloadOutcome{ReloadResult::timeout, "another reload of the same nginx is still running"};
  co_return co_await ReloaderBase::run(event, deadline);
}

asio::awaitable<ReloadOutcome> NginxReloader::apply(const ReloadEvent& event, Deadline deadline) {
  const auto start = steady_clock::now();
  auto failed = [&](std::string detail) -> ReloadOutcome {
    return {steady_clock::now() >= deadline ? ReloadResult::timeout : ReloadResult::failure, std::move(detail)};
  };
  if (!test_command_.empty()) {
    ChildSpec test;
    test.argv = test_command_;
    test.timeout = time_left(deadline);
    auto child = co_await run_child(std::move(test));
    if (!child) co_return failed("pre-check " + test_command_[0] + ": " + child.error().message + "; not reloaded");
    if (child->timed_out) co_return ReloadOutcome{ReloadResult::timeout, "pre-check " + child->describe()};
    if (!child->success()) {
      co_return failed("configuration test failed (" + child->describe() + "): " +
                       last_lines(child->stderr_tail + "\n" + child->stdout_tail) + "; not reloaded");
    }
  }

  log_watch_.start();
  ChildSpec reload;
  reload.argv = nginx_.command;
  reload.timeout = time_left(deadline);
  auto child = co_await run_child(std::move(reload));
  if (!child) co_return failed("reload: " + child.error().message);
  if (child->timed_out) co_return ReloadOutcome{ReloadResult::timeout, "reload command " + child->describe()};
  if (!child->success()) {
    std::string detail = "reload command failed (" + child->describe() + ")";
    auto tail = last_lines(child->stderr_tail);
    if (!tail.empty()) detail += ": " + tail;
    co_return failed(std::move(detail) + "; old certificate still served");
  }
  const auto reloaded_ms = std::chrono::duration_cast<milliseconds>(steady_clock::now() - start).count();
  if (auto emerg = log_watch_.check()) {
    co_return failed("nginx master failed the reload: " + *emerg + "; old certificate still served");
  }

  const bool verifying = config_.verify && !event.expired;
  if (!verifying && log_watch_.enabled()) {
    // No handshake will tell: give the master time to load the files and watch its log.
    asio::steady_timer timer(co_await asio::this_coro::executor);
    const auto until = std::min(deadline, steady_clock::now() + kLogWindow);
    while (steady_clock::now() < until) {
      timer.expires_at(std::min(until, steady_clock::now() + kLogPoll));
      co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      if (auto emerg = log_watch_.check()) {
        co_return failed("nginx master failed the reload: " + *emerg + "; old certificate still served");
      }
    }
    co_return ReloadOutcome{ReloadResult::success,
                            "reloaded in " + std::to_string(reloaded_ms) + "ms; no [emerg] in " +
                                nginx_.error_log.string() + " for " + std::to_string(kLogWindow.count()) + "ms"};
  }
  co_return ReloadOutcome{ReloadResult::success, "reloaded in " + std::to_string(reloaded_ms) + "ms"};
}

asio::awaitable<ReloadOutcome> NginxReloader::verify(const ReloadEvent& event, Deadline deadline,
                                                     ReloadOutcome applied) {
  auto report = co_await probe(event, deadline, [this] { return log_watch_.check(); });
  // The log is the last word: a failed master may leave old workers that happen to match.
  if (auto emerg = log_watch_.check()) {
    co_return ReloadOutcome{ReloadResult::failure,
                            applied.detail + "; nginx master failed the reload: " + *emerg + "; " + report.describe()};
  }
  applied.detail += "; " + report.describe();
  if (!report.verified) applied.result = ReloadResult::unverified;
  co_return applied;
}

}  // namespace certagent::reloaders
