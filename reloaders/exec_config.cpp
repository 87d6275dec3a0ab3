#include "reloaders/exec_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "reloaders/exec_reloader.h"

namespace certagent::reloaders {

namespace {

using config::describe;
using config::Field;
using config::MapView;

ExecReloaderConfig parse(MapView& m, const config::ReloaderConfig& generic) {
  ExecReloaderConfig e;
  if (auto cf = m.require("command", config::kArgvExpected)) {
    if (auto v = m.reader().argv(*cf)) e.command = std::move(*v);
  }
  e.timeout = generic.timeout;
  return e;
}

}  // namespace

void ExecReloaderConfig::dump(config::ConfigWriter& w) const {
  w.strings("command", command);
  w.duration("timeout", timeout);
}

ReloaderType exec_reloader_type() {
  return {
      .config = {.name = "exec",
                 .keys = {"command"},
                 .parse = [](MapView& m, const config::ReloaderConfig& generic) -> config::SettingsSlot {
                   return parse(m, generic);
                 },
                 // `timeout` is the command's own limit (default 10s), and so also the entry's.
                 .default_timeout = std::chrono::seconds(10)},
      .make = [](const config::ReloaderConfig& config,
                 const ReloaderContext& context) -> Result<std::unique_ptr<Reloader>> {
        const auto* settings = config.settings.get_if<ExecReloaderConfig>();
        if (!settings) return make_error("exec: the entry holds no exec settings");
        const auto& s = *settings;
        if (s.command.empty() || s.command[0].empty()) return make_error("exec: command must not be empty");
        if (s.timeout.count() <= 0) return make_error("exec: timeout must be positive");
        return std::unique_ptr<Reloader>(std::make_unique<ExecReloader>(config, s, context));
      },
  };
}

}  // namespace certagent::reloaders
