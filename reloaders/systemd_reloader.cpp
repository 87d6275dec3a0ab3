#include "reloaders/systemd_reloader.h"

#include "reloaders/child_process.h"

#include <algorithm>

namespace certagent::reloaders {
namespace asio = boost::asio;

SystemdReloader::SystemdReloader(const config::ReloaderConfig& config,
                                 const SystemdReloaderConfig& systemd, const ReloaderContext& context,
                                 std::string systemctl)
    : ReloaderBase("systemd", config, context), systemd_(systemd), systemctl_(std::move(systemctl)) {}

bool SystemdReloader::valid_action(std::string_view action) {
  const auto& all = systemd_actions();
  return std::find(all.begin(), all.end(), action) != all.end();
}

asio::awaitable<ReloadOutcome> SystemdReloader::apply(const ReloadEvent&, Deadline deadline) {
  ChildSpec spec;
  // "--" so a unit name can never be read as an option.
  spec.argv = {systemctl_, "--no-ask-password", systemd_.action, "--", systemd_.unit};
  spec.timeout = time_left(deadline);
  const std::string what = "systemctl " + systemd_.action + " " + systemd_.unit;
  auto child = co_await run_child(std::move(spec));
  if (!child) co_return ReloadOutcome{ReloadResult::failure, what + ": " + child.error().message};
  if (child->timed_out) co_return ReloadOutcome{ReloadResult::timeout, what + " " + child->describe()};
  if (!child->success()) {
    std::string detail = what + " failed: " + child->describe();
    auto tail = last_lines(child->stderr_tail);
    if (!tail.empty()) detail += "; " + tail;
    co_return ReloadOutcome{ReloadResult::failure, std::move(detail)};
  }
  co_return ReloadOutcome{ReloadResult::success, what + " done in " + std::to_string(child->elapsed.count()) + "ms"};
}

}  // namespace certagent::reloaders
