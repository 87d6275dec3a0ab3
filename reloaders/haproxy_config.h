#pragma once
// The keys of a `haproxy` reloader entry (DESIGN.md "Configuration"), read and written here; the
// reloader is haproxy_reloader.h.

#include "reloaders/reloader.h"

#include <filesystem>
#include <string>
#include <string_view>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::reloaders {

struct HaproxyReloaderConfig {
  std::filesystem::path admin_socket;
  std::string cert;                          // the name exactly as haproxy lists it
  std::filesystem::path issuer_file;         // optional .issuer carried in the transaction
  std::filesystem::path ocsp_file;           // optional .ocsp carried in the transaction

  void dump(config::ConfigWriter& w) const;
  bool operator==(const HaproxyReloaderConfig&) const = default;
};

// The name travels on one line of haproxy's runtime API: white space would split it.
bool valid_haproxy_cert_name(std::string_view name);

// type: haproxy (registered in agent/builtin_plugins.cpp).
ReloaderType haproxy_reloader_type();

}  // namespace certagent::reloaders
