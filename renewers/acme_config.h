#pragma once
// The keys of an `acme` broker entry (DESIGN.md "Configuration"), read and written here; the
// renewer is acme_renewer.h.

#include "renewers/renewer.h"

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::renewers {

struct AcmeChallengeConfig {
  std::string type{"http-01"};               // http-01 | dns-01
  std::string listen{"0.0.0.0:80"};          // http-01 responder
  std::vector<std::string> hook;             // dns-01: argv; the agent appends
                                             // "present|cleanup" <fqdn> <txt value>

  bool operator==(const AcmeChallengeConfig&) const = default;
};

struct AcmeRenewerConfig {
  std::string directory;                     // https URL of the ACME directory
  std::filesystem::path ca_bundle;           // trust for the broker's own TLS; empty: system store
  std::optional<std::string> eab_kid;
  std::filesystem::path eab_hmac_key_file;   // sealed into the TPM at enroll
  AcmeChallengeConfig challenge;
  std::string preferred_chain;               // issuer CN of the preferred chain's root
  std::string contact;                       // optional mailto:

  void dump(config::ConfigWriter& w) const;
  bool operator==(const AcmeRenewerConfig&) const = default;
};

// type: acme (registered in agent/builtin_plugins.cpp).
RenewerType acme_renewer_type();

}  // namespace certagent::renewers
