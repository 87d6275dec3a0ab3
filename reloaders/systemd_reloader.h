#pragma once
// `systemctl --no-ask-password <action> -- <unit>` through the exec machinery. Chosen over
// D-Bus: no libsystemd/sd-bus dependency, and systemctl already waits for the job to finish,
// handles polkit and prints a readable reason on failure (kept in the outcome's detail).

#include "reloaders/reloader_base.h"
#include "reloaders/systemd_config.h"

#include <string>

namespace certagent::reloaders {

class SystemdReloader final : public ReloaderBase {
 public:
  // `systemctl` is the program to run; tests point it at a fake.
  SystemdReloader(const config::ReloaderConfig& config, const SystemdReloaderConfig& systemd,
                  const ReloaderContext& context, std::string systemctl = "systemctl");

  static bool valid_action(std::string_view action);

 protected:
  boost::asio::awaitable<ReloadOutcome> apply(const ReloadEvent& event, Deadline deadline) override;

 private:
  SystemdReloaderConfig systemd_;
  std::string systemctl_;
};

}  // namespace certagent::reloaders
