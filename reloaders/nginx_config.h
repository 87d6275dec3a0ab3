#pragma once
// The keys of a `nginx` reloader entry (DESIGN.md "Configuration"), read and written here; the
// reloader is nginx_reloader.h.

#include "reloaders/reloader.h"

#include <filesystem>
#include <string>
#include <vector>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::reloaders {

struct NginxReloaderConfig {
  std::vector<std::string> command{"nginx", "-s", "reload"};
  std::vector<std::string> test_command;     // pre-check; empty: derived from command (binary -t)
  std::filesystem::path error_log;           // [emerg] lines after the reload = failure

  void dump(config::ConfigWriter& w) const;
  bool operator==(const NginxReloaderConfig&) const = default;
};

// type: nginx (registered in agent/builtin_plugins.cpp).
ReloaderType nginx_reloader_type();

}  // namespace certagent::reloaders
