#include "reloaders/envoy_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "reloaders/envoy_reloader.h"

namespace certagent::reloaders {

namespace {

using config::describe;
using config::Field;
using config::MapView;

EnvoyReloaderConfig parse(MapView& m, const config::ReloaderConfig&) {
  EnvoyReloaderConfig e;
  m.req_path("sds_dir", e.sds_dir);
  return e;
}

}  // namespace

void EnvoyReloaderConfig::dump(config::ConfigWriter& w) const { w.path("sds_dir", sds_dir); }

ReloaderType envoy_reloader_type() {
  return {
      .config = {.name = "envoy",
                 .keys = {"sds_dir"},
                 .parse = [](MapView& m, const config::ReloaderConfig& generic) -> config::SettingsSlot {
                   return parse(m, generic);
                 }},
      .make = [](const config::ReloaderConfig& config,
                 const ReloaderContext& context) -> Result<std::unique_ptr<Reloader>> {
        const auto* settings = config.settings.get_if<EnvoyReloaderConfig>();
        if (!settings) return make_error("envoy: the entry holds no envoy settings");
        const auto& s = *settings;
        if (s.sds_dir.empty()) return make_error("envoy: sds_dir must be set");
        return std::unique_ptr<Reloader>(std::make_unique<EnvoyReloader>(config, s, context));
      },
  };
}

}  // namespace certagent::reloaders
