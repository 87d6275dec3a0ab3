#pragma once
// The keys of a `signal` reloader entry (DESIGN.md "Configuration"), read and written here; the
// reloader is signal_reloader.h.

#include "reloaders/reloader.h"

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::reloaders {

struct SignalReloaderConfig {
  std::filesystem::path pid_file;
  std::optional<int> pid;
  int signal{1};                             // SIGHUP

  void dump(config::ConfigWriter& w) const;
  bool operator==(const SignalReloaderConfig&) const = default;
};

// "SIGHUP", "hup", "10" -> the signal number (1 to 64); nullopt for anything else.
std::optional<int> parse_signal(std::string_view s);
// The name for the numbers parse_signal knows by name, else the number.
std::string signal_name(int n);

// type: signal (registered in agent/builtin_plugins.cpp).
ReloaderType signal_reloader_type();

}  // namespace certagent::reloaders
