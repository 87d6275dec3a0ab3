#pragma once
// A broker client. Given a CSR signed by a fresh key, it obtains a certificate chain from its
// broker, authenticating with the host identity. It does not validate the chain: the core
// does that for every renewer before anything is committed (agent/validation.h).

#include "core/clock.h"
#include "core/config/config.h"
#include "core/result.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace certagent::tpm {
class Identity;
}

namespace certagent::renewers {

struct IssueRequest {
  std::string cert_name;
  std::string csr_pem;                        // signed by the new key
  std::string common_name;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  std::vector<std::string> uris;
  config::Duration lifetime{};                // wanted lifetime
  // What the broker returned with the current certificate, if any (e.g. Lemur id, ACME
  // certificate URL for ARI): lets a broker link the rotation to its predecessor.
  std::map<std::string, std::string> previous_state;
  std::string previous_cert_pem;              // current leaf, if any (ARI's CertID)
};

struct IssueResult {
  std::string chain_pem;                      // leaf first, then intermediates
  // The broker's suggested renewal time (ACME ARI): used when earlier than our own point.
  std::optional<SystemTime> renew_hint;
  std::map<std::string, std::string> state;   // kept with the certificate, see previous_state
  // The broker's clock when it answered (HTTP Date), when seen: the loop reports clock skew
  // from it (certagent_clock_skew_seconds) and tells a skewed clock from a bad broker.
  std::optional<SystemTime> broker_time;
};

class Renewer {
 public:
  virtual ~Renewer() = default;
  virtual std::string_view type() const = 0;

  // One issuance. Errors carry retry_after when the broker asked for it, and
  // configuration=true when retrying cannot help until someone fixes something.
  virtual boost::asio::awaitable<Result<IssueResult>> issue(IssueRequest request) = 0;

  // "The broker answers": one cheap, unauthenticated request (ACME directory, cfssl info,
  // Lemur healthcheck) for certagent_broker_up, asked by agent/broker_health on its schedule.
  // An error says why: Cause::unreachable (down, unhealthy) or Cause::local_config (we cannot
  // trust its TLS certificate: ca_bundle, url).
  virtual boost::asio::awaitable<Result<>> probe() { co_return Result<>{}; }
};

// What a renewer may use besides its own config.
struct RenewerContext {
  boost::asio::any_io_executor executor;
  tpm::Identity* identity{nullptr};           // never null in the daemon
  std::filesystem::path state_dir;
  const Clock* clock{nullptr};
};

// A secret a broker needs in the identity, moved there from its file by `certagent enroll`.
struct SealedSecret {
  enum class Format {
    hmac_base64url,  // an HMAC key, base64url (or standard) text -> Identity::import_hmac_key
    hmac_hex,        // an HMAC key, hex text -> Identity::import_hmac_key
    text,            // anything else, kept as written -> Identity::seal
  };
  std::string name;             // "<broker>.eab_hmac": what the renewer asks the identity for
  std::filesystem::path file;   // the plaintext, deleted once the sealed copy checks out
  Format format{Format::text};
  std::string config_key;       // "brokers.ca.eab.hmac_key_file", for messages
};

// A broker type: its config (name, keys, parser) and how to make its renewer. The built-in
// ones are registered in agent/builtin_plugins.cpp.
struct RenewerType {
  config::BrokerType config;
  // Gets only brokers of this type. Errors name the broker.
  std::function<Result<std::unique_ptr<Renewer>>(const config::BrokerConfig&, const RenewerContext&)> make;
  // The secrets `certagent enroll` seals for a broker of this type; unset: none.
  std::function<std::vector<SealedSecret>(const config::BrokerConfig&)> secrets;
};

}  // namespace certagent::renewers
