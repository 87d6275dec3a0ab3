#pragma once
// The keys of a `envoy` reloader entry (DESIGN.md "Configuration"), read and written here; the
// reloader is envoy_reloader.h.

#include "reloaders/reloader.h"

#include <filesystem>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::reloaders {

struct EnvoyReloaderConfig {
  std::filesystem::path sds_dir;

  void dump(config::ConfigWriter& w) const;
  bool operator==(const EnvoyReloaderConfig&) const = default;
};

// type: envoy (registered in agent/builtin_plugins.cpp).
ReloaderType envoy_reloader_type();

}  // namespace certagent::reloaders
