#pragma once
// One issued certificate with its key, as held in memory and written by the sinks.

#include "core/clock.h"
#include "core/secret.h"

#include <map>
#include <memory>
#include <string>

namespace certagent {

struct Material {
  std::string cert_pem;       // leaf only
  std::string chain_pem;      // intermediates, leaf excluded (may be empty)
  Secret key_pem;             // PKCS#8 PEM
  std::string serial_hex;     // lowercase hex, no leading zeros stripped beyond what X509 gives
  SystemTime not_before{};
  SystemTime not_after{};
  std::string sha256_hex;     // SHA-256 of the leaf DER, lowercase hex
  std::string broker;         // name of the broker that issued it
  // Broker-specific facts carried to the next rotation (e.g. the Lemur id for `replaces`).
  std::map<std::string, std::string> broker_state;

  std::string fullchain_pem() const { return cert_pem + chain_pem; }
  bool valid_at(SystemTime t) const { return not_before <= t && t < not_after; }
};

using MaterialPtr = std::shared_ptr<const Material>;

}  // namespace certagent
