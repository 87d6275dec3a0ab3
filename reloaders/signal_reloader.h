#pragma once
// Sends a signal (SIGHUP by default) to a process named by a pid file or a pid. A pid file that
// is not a positive integer, or names a process that is gone (or a zombie), is a failure: a
// stale pid file must not look like a successful reload.

#include "reloaders/reloader_base.h"
#include "reloaders/signal_config.h"

#include <sys/types.h>

namespace certagent::reloaders {

// Reads and validates a pid file: one positive integer, optional surrounding whitespace.
[[nodiscard]] Result<pid_t> read_pid_file(const std::filesystem::path& path);
// True when the process exists and is not a zombie.
bool process_alive(pid_t pid);

class SignalReloader final : public ReloaderBase {
 public:
  SignalReloader(const config::ReloaderConfig& config, const SignalReloaderConfig& signal,
                 const ReloaderContext& context);

 protected:
  boost::asio::awaitable<ReloadOutcome> apply(const ReloadEvent& event, Deadline deadline) override;

 private:
  SignalReloaderConfig signal_;
};

}  // namespace certagent::reloaders
