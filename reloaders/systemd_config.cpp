#include "reloaders/systemd_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "reloaders/systemd_reloader.h"

namespace certagent::reloaders {

namespace {

using config::describe;
using config::Field;
using config::MapView;

SystemdReloaderConfig parse(MapView& m, const config::ReloaderConfig&) {
  SystemdReloaderConfig s;
  config::YamlReader& r = m.reader();
  constexpr std::string_view kUnit = "a systemd unit name like nginx.service";
  if (auto uf = m.require("unit", kUnit)) {
    if (auto v = r.non_empty_string(*uf, kUnit)) {
      if (v->find_first_of(" \t/") == std::string::npos) s.unit = *v;
      else r.fail(*uf, "got " + describe(uf->value), kUnit);
    }
  }
  m.opt("action", [&](const Field& x) {
        return r.one_of(x, systemd_actions(), "systemd action");
      }, [&](std::string v) { s.action = std::move(v); });
  return s;
}

}  // namespace

const std::vector<std::string_view>& systemd_actions() {
  static const std::vector<std::string_view> kActions{"reload", "restart", "reload-or-restart",
                                                      "try-reload-or-restart", "try-restart"};
  return kActions;
}

void SystemdReloaderConfig::dump(config::ConfigWriter& w) const {
  w.str("unit", unit);
  w.str("action", action);
}

ReloaderType systemd_reloader_type() {
  return {
      .config = {.name = "systemd",
                 .keys = {"unit", "action"},
                 .parse = [](MapView& m, const config::ReloaderConfig& generic) -> config::SettingsSlot {
                   return parse(m, generic);
                 }},
      .make = [](const config::ReloaderConfig& config,
                 const ReloaderContext& context) -> Result<std::unique_ptr<Reloader>> {
        const auto* settings = config.settings.get_if<SystemdReloaderConfig>();
        if (!settings) return make_error("systemd: the entry holds no systemd settings");
        const auto& s = *settings;
        if (s.unit.empty()) return make_error("systemd: unit must not be empty");
        if (!SystemdReloader::valid_action(s.action)) {
          return make_error("systemd: action '" + s.action +
                            "' is not one of reload, restart, reload-or-restart, try-reload-or-restart, try-restart");
        }
        return std::unique_ptr<Reloader>(std::make_unique<SystemdReloader>(config, s, context));
      },
  };
}

}  // namespace certagent::reloaders
