#pragma once
// nginx: one reload per rotation, never two at once for the same nginx (binary + -c/-p), a
// pre-check (`nginx -t`) before it, failure from the exit code AND from `[emerg]` lines the
// master writes to its error log after the reload started (`nginx -s reload` exits 0 once the
// signal is sent; the master may still fail to load the files and keep the old certificate),
// then verification by fresh handshakes (old workers keep serving the old certificate for
// ~100 ms, hence the settle time).

#include "core/async/async_mutex.h"
#include "reloaders/reloader_base.h"
#include "reloaders/nginx_config.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::reloaders {

// Whether an error log line is nginx's own `[emerg]`: "2026/12/06 09:17:26 [emerg] 24498#24498: ..."
// (ngx_log_error_core). Only the level field counts: a message holding "[emerg]" (a client's
// request for /[emerg] logged at [error]) is not one.
bool is_nginx_emerg_line(std::string_view line);

// Watches an error log for `[emerg]` lines appended after start(). Reads only the new bytes;
// a log that shrank (rotated, truncated) is read from its beginning. Only whole lines count: the
// rest of a line cut by start(), by a flood or by its length is skipped.
class ErrorLogWatch {
 public:
  explicit ErrorLogWatch(std::filesystem::path path) : path_(std::move(path)) {}
  bool enabled() const { return !path_.empty(); }
  void start();
  // The first `[emerg]` line appended since start(), if any (sticky once found).
  std::optional<std::string> check();

 private:
  std::filesystem::path path_;
  std::uintmax_t offset_{0};
  std::string partial_;
  bool skipping_{false};  // inside a line whose start was not read: up to its end
  std::optional<std::string> found_;
};

class NginxReloader final : public ReloaderBase {
 public:
  NginxReloader(const config::ReloaderConfig& config, const NginxReloaderConfig& nginx,
                const ReloaderContext& context);

  // The pre-check used when test_command is not configured: the command's binary with -t -q and
  // its -c/-p/-g/-e options. Empty when the command does not run nginx (e.g. `kill -HUP`).
  static std::vector<std::string> default_test_command(const std::vector<std::string>& command);
  // Reloads with the same key are serialized process-wide.
  static std::string instance_key(const std::vector<std::string>& command);

 protected:
  boost::asio::awaitable<ReloadOutcome> run(const ReloadEvent& event, Deadline deadline) override;
  boost::asio::awaitable<ReloadOutcome> apply(const ReloadEvent& event, Deadline deadline) override;
  boost::asio::awaitable<ReloadOutcome> verify(const ReloadEvent& event, Deadline deadline,
                                               ReloadOutcome applied) override;

 private:
  NginxReloaderConfig nginx_;
  std::vector<std::string> test_command_;
  ErrorLogWatch log_watch_;
  AsyncMutex instance_mutex_;
  std::shared_ptr<AsyncMutex> global_mutex_;
};

}  // namespace certagent::reloaders
