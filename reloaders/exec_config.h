#pragma once
// The keys of a `exec` reloader entry (DESIGN.md "Configuration"), read and written here; the
// reloader is exec_reloader.h.

#include "reloaders/reloader.h"

#include <chrono>
#include <string>
#include <vector>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::reloaders {

struct ExecReloaderConfig {
  std::vector<std::string> command;          // argv, no shell
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};  // the command's, = the entry's

  // `timeout` is the command's own limit: written with the command, not before it.
  static constexpr bool kDumpsTimeout = true;
  void dump(config::ConfigWriter& w) const;
  bool operator==(const ExecReloaderConfig&) const = default;
};

// type: exec (registered in agent/builtin_plugins.cpp).
ReloaderType exec_reloader_type();

}  // namespace certagent::reloaders
