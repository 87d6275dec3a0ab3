#pragma once
// The keys of a `cfssl` broker entry (DESIGN.md "Configuration"), read and written here; the
// renewer is cfssl_renewer.h.

#include "renewers/renewer.h"

#include <filesystem>
#include <string>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::renewers {

struct CfsslRenewerConfig {
  std::string url;
  std::filesystem::path ca_bundle;
  std::filesystem::path auth_key_file;       // hex HMAC key, sealed into the TPM at enroll
  std::string profile;
  std::string label;                         // multirootca signer

  void dump(config::ConfigWriter& w) const;
  bool operator==(const CfsslRenewerConfig&) const = default;
};

// type: cfssl (registered in agent/builtin_plugins.cpp).
RenewerType cfssl_renewer_type();

}  // namespace certagent::renewers
