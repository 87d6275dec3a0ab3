#pragma once
// ACME (RFC 8555) renewer: the account key is the host identity (ES256 signed by the TPM),
// optional External Account Binding with the HMAC key held by the identity, http-01 via the
// built-in responder or dns-01 via a hook, notBefore/notAfter for the wanted lifetime,
// badNonce retried, Retry-After honoured, short polling, alternate chains, ARI (RFC 9773).
// All requests of a broker share one keep-alive HTTPS connection.

#include "core/time_format.h"
#include "core/http/client.h"
#include "renewers/acme_config.h"
#include "renewers/renewer.h"

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace certagent::renewers {

namespace acme {
class Http01Responder;
struct Jwk;
}  // namespace acme

// The HMAC key names under which `certagent enroll` stores a broker's shared secret.
std::string acme_eab_key_name(std::string_view broker);
// An EAB key file holds the base64url key as the CA hands it out (padding and the standard
// alphabet accepted, surrounding whitespace ignored).
[[nodiscard]] Result<std::vector<std::uint8_t>> parse_eab_key_file_text(std::string_view text);

// A Replay-Nonce the client may use (RFC 8555 §6.5.1: base64url; clients MUST ignore others).
bool valid_replay_nonce(std::string_view nonce);

// RFC 9773 CertID of a PEM certificate: base64url(AKI keyIdentifier) "." base64url(serial).
[[nodiscard]] Result<std::string> ari_cert_id(std::string_view cert_pem);

// RFC 3339 (UTC "Z" or an offset, optional fractional seconds): the daemon's one formatter.
using certagent::format_rfc3339;
using certagent::parse_rfc3339;

// Tuning knobs; the defaults are what the daemon uses, tests shorten them.
struct AcmeTuning {
  std::chrono::milliseconds first_poll{10};   // then doubling
  std::chrono::milliseconds max_poll{2000};
  int max_bad_nonce_retries{8};
};

struct AcmeStats {
  std::uint64_t accounts_registered{0};  // newAccount calls that returned an account
  std::uint64_t bad_nonce_retries{0};
  std::uint64_t signed_requests{0};      // JWS POSTs (one identity signature each)
  std::uint64_t issued{0};
  std::uint64_t nonce_fetches{0};        // HEAD newNonce (only when no answer left a nonce)
  // JWS POSTs by step: "newAccount", "newOrder", "authorization", "challenge",
  // "authorization poll", "finalize", "order poll", "certificate download".
  std::map<std::string, std::uint64_t> signed_by_step;
  // Answers saying "not yet" (an order processing, an authorization or challenge pending or
  // processing): each allows one poll, and nothing else does.
  std::uint64_t not_yet_answers{0};
};

class AcmeRenewer final : public Renewer {
 public:
  [[nodiscard]] static Result<std::unique_ptr<AcmeRenewer>> create(const config::BrokerConfig& broker,
                                                                   const RenewerContext& context,
                                                                   AcmeTuning tuning = {});
  ~AcmeRenewer() override;

  std::string_view type() const override { return "acme"; }
  boost::asio::awaitable<Result<IssueResult>> issue(IssueRequest request) override;
  boost::asio::awaitable<Result<>> probe() override;

  // For tests and the benchmark.
  const http::Client& client() const { return *client_; }
  std::uint16_t http01_port() const;
  const std::string& account_url() const { return kid_; }
  void forget_account() { kid_.clear(); }
  AcmeStats stats() const { return stats_; }

 private:
  struct Directory {
    std::string new_nonce, new_account, new_order, renewal_info, terms_of_service;
    bool external_account_required{false};
  };
  struct Posted;  // a response to a signed POST, with its parsed JSON

  AcmeRenewer(const config::BrokerConfig& broker, const RenewerContext& context, AcmeTuning tuning);

  boost::asio::awaitable<Result<>> ensure_directory();
  boost::asio::awaitable<Result<std::string>> take_nonce();
  // `due`: the issuance's deadline in the identity's queue (tpm_deadline), for every signature.
  using Due = std::chrono::system_clock::time_point;
  boost::asio::awaitable<Result<>> ensure_account(Due due);
  // `after`: send no sooner than this (a poll); the request is signed while it waits.
  boost::asio::awaitable<Result<Posted>> post(const std::string& url, std::string payload, bool use_jwk,
                                              const char* what, Due due, std::string accept = {},
                                              std::chrono::milliseconds after = std::chrono::milliseconds(0));
  boost::asio::awaitable<Result<IssueResult>> issue_once(const IssueRequest& request, bool& stale_account);
  boost::asio::awaitable<Result<>> authorize(const std::vector<std::string>& authorization_urls, Due due);
  struct Downloaded {
    std::string chain_pem;
    std::optional<SystemTime> broker_time;  // its Date header
  };
  boost::asio::awaitable<Result<Downloaded>> download_chain(const std::string& certificate_url, Due due);
  boost::asio::awaitable<std::optional<SystemTime>> renewal_hint(const std::string& leaf_pem);
  boost::asio::awaitable<Result<>> run_hook(const std::vector<std::string>& argv);
  boost::asio::awaitable<void> sleep_for(std::chrono::milliseconds d);
  Result<std::string> eab_member();
  Error step_error(const char* what, const Posted& posted);

  std::string broker_name_;
  AcmeRenewerConfig config_;
  std::chrono::milliseconds timeout_;
  RenewerContext context_;
  AcmeTuning tuning_;
  const Clock* clock_;
  std::unique_ptr<http::Client> client_;
  std::unique_ptr<acme::Jwk> jwk_;
  std::unique_ptr<acme::Http01Responder> responder_;
  std::optional<Directory> directory_;
  std::vector<std::string> nonces_;
  std::string kid_;
  bool dates_supported_{true};  // cleared when the CA rejects notBefore/notAfter
  std::mt19937_64 rng_;
  AcmeStats stats_;
};

}  // namespace certagent::renewers
