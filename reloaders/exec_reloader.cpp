#include "reloaders/exec_reloader.h"

#include "core/time_format.h"
#include "reloaders/child_process.h"

namespace certagent::reloaders {
namespace asio = boost::asio;

std::map<std::string, std::string> hook_environment(const ReloadEvent& event) {
  std::map<std::string, std::string> env;
  env["CERTAGENT_NAME"] = event.cert_name;
  env["CERTAGENT_EVENT"] = event.expired ? "expired" : "rotated";
  if (event.material) {
    env["CERTAGENT_SERIAL"] = event.material->serial_hex;
    env["CERTAGENT_NOT_AFTER"] = format_rfc3339(event.material->not_after);
  }
  if (event.files_dir) env["CERTAGENT_DIR"] = event.files_dir->string();
  return env;
}

ExecReloader::ExecReloader(const config::ReloaderConfig& config, const ExecReloaderConfig& exec,
                           const ReloaderContext& context)
    : ReloaderBase("exec", config, context), exec_(exec) {}

asio::awaitable<ReloadOutcome> ExecReloader::apply(const ReloadEvent& event, Deadline deadline) {
  ChildSpec spec;
  spec.argv = exec_.command;
  spec.env = hook_environment(event);
  spec.timeout = std::min(exec_.timeout, time_left(deadline));
  auto child = co_await run_child(std::move(spec));
  if (!child) co_return ReloadOutcome{ReloadResult::failure, child.error().message};
  if (child->timed_out) co_return ReloadOutcome{ReloadResult::timeout, exec_.command[0] + " " + child->describe()};
  if (!child->success()) {
    std::string detail = exec_.command[0] + " failed: " + child->describe();
    auto tail = last_lines(child->stderr_tail);
    if (!tail.empty()) detail += "; stderr: " + tail;
    co_return ReloadOutcome{ReloadResult::failure, std::move(detail)};
  }
  co_return ReloadOutcome{ReloadResult::success,
                          exec_.command[0] + " exited 0 in " + std::to_string(child->elapsed.count()) + "ms"};
}

}  // namespace certagent::reloaders
