#pragma once
// Runs a command (argv, no shell) after each rotation or at expiry. The hook learns what
// happened from its environment: CERTAGENT_NAME, CERTAGENT_SERIAL, CERTAGENT_NOT_AFTER
// (RFC 3339), CERTAGENT_DIR (when files are configured), CERTAGENT_EVENT=rotated|expired.

#include "reloaders/reloader_base.h"
#include "reloaders/exec_config.h"

#include <map>
#include <string>

namespace certagent::reloaders {

// The variables the hook gets on top of the daemon's environment.
std::map<std::string, std::string> hook_environment(const ReloadEvent& event);

class ExecReloader final : public ReloaderBase {
 public:
  ExecReloader(const config::ReloaderConfig& config, const ExecReloaderConfig& exec,
               const ReloaderContext& context);

 protected:
  boost::asio::awaitable<ReloadOutcome> apply(const ReloadEvent& event, Deadline deadline) override;

 private:
  ExecReloaderConfig exec_;
};

}  // namespace certagent::reloaders
