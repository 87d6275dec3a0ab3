#pragma once
// The keys of a `lemur` broker entry (DESIGN.md "Configuration"), read and written here; the
// renewer is lemur_renewer.h.

#include "renewers/renewer.h"

#include <filesystem>
#include <string>
#include <vector>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::renewers {

struct LemurRenewerConfig {
  std::string url;
  std::filesystem::path ca_bundle;
  std::filesystem::path token_file;          // API key JWT, sealed into the TPM at enroll
  std::string authority;
  std::string owner;
  std::string description;
  std::vector<std::string> destinations;
  std::vector<std::string> notifications;
  std::vector<std::string> roles;

  void dump(config::ConfigWriter& w) const;
  bool operator==(const LemurRenewerConfig&) const = default;
};

// type: lemur (registered in agent/builtin_plugins.cpp).
RenewerType lemur_renewer_type();

}  // namespace certagent::renewers
