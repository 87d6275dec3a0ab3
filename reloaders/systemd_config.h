#pragma once
// The keys of a `systemd` reloader entry (DESIGN.md "Configuration"), read and written here; the
// reloader is systemd_reloader.h.

#include "reloaders/reloader.h"

#include <string>
#include <string_view>
#include <vector>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::reloaders {

struct SystemdReloaderConfig {
  std::string unit;
  std::string action{"reload-or-restart"};   // reload | restart | reload-or-restart | try-(reload-or-)restart

  void dump(config::ConfigWriter& w) const;
  bool operator==(const SystemdReloaderConfig&) const = default;
};

// The systemctl verbs an entry may use, in the order messages list them.
const std::vector<std::string_view>& systemd_actions();

// type: systemd (registered in agent/builtin_plugins.cpp).
ReloaderType systemd_reloader_type();

}  // namespace certagent::reloaders
