#include "reloaders/nginx_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "reloaders/nginx_reloader.h"

namespace certagent::reloaders {

namespace {

using config::describe;
using config::Field;
using config::MapView;

NginxReloaderConfig parse(MapView& m, const config::ReloaderConfig&) {
  NginxReloaderConfig n;
  config::YamlReader& r = m.reader();
  if (auto cf = m.get("command")) {
    if (auto v = r.argv(*cf)) n.command = std::move(*v);
  }
  // Left empty when not given (an empty list means the same): the nginx reloader derives
  // the pre-check from `command` (its binary with -t and the same -c/-p/-g options).
  if (auto tc = m.get("test_command")) {
    if (tc->value.IsSequence() && tc->value.size() == 0) {
      n.test_command.clear();
    } else if (auto v = r.argv(*tc)) {
      n.test_command = std::move(*v);
    }
  }
  m.opt_path("error_log", n.error_log);
  return n;
}

}  // namespace

void NginxReloaderConfig::dump(config::ConfigWriter& w) const {
  w.strings("command", command);
  w.strings("test_command", test_command);
  w.path("error_log", error_log);
}

ReloaderType nginx_reloader_type() {
  return {
      .config = {.name = "nginx",
                 .keys = {"command", "test_command", "error_log"},
                 .parse = [](MapView& m, const config::ReloaderConfig& generic) -> config::SettingsSlot {
                   return parse(m, generic);
                 },
                 // Old workers keep serving the old certificate for ~100 ms after a reload.
                 .default_settle = std::chrono::milliseconds(150)},
      .make = [](const config::ReloaderConfig& config,
                 const ReloaderContext& context) -> Result<std::unique_ptr<Reloader>> {
        const auto* settings = config.settings.get_if<NginxReloaderConfig>();
        if (!settings) return make_error("nginx: the entry holds no nginx settings");
        const auto& s = *settings;
        if (s.command.empty() || s.command[0].empty()) return make_error("nginx: command must not be empty");
        return std::unique_ptr<Reloader>(std::make_unique<NginxReloader>(config, s, context));
      },
  };
}

}  // namespace certagent::reloaders
