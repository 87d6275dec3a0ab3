#pragma once
// Netflix Lemur renewer (broker type "lemur", Lemur 1.9 REST API): POST /api/1/certificates
// with the CSR, authenticated by a Lemur API key (a JWT) that `certagent enroll` sealed into
// the host identity as "<broker>.lemur_token". The token is unsealed for every issuance, held
// only in a Secret, and never logged.
//
// State kept with each certificate: lemur_id (its Lemur id) and lemur_url (which Lemur).
//
// Request: owner, authority ({"name": ...}; {"id": N} when the configured authority is all
// digits), csr, validityStart/validityEnd (UTC, the wanted lifetime, backdated like the local
// CA by a tenth of it, at most a minute), notify: false, replaces: [{"id": N}] with the Lemur
// id of the certificate being rotated, and description/destinations/notifications/roles when
// configured. Before sending `replaces` the renewer checks that Lemur still has that
// certificate (GET /api/1/certificates/N): Lemur 1.9 answers 400 "Unable to find ... with id"
// for an unknown id there, which would fail every rotation after the predecessor was deleted
// (such a 400 is also retried once without `replaces`). Roles are sent by name; Lemur looks
// destinations and notifications up by id
// only (their models have a label, no name), so labels are resolved to ids with
// GET /api/1/destinations|notifications?filter=label;<label> (an all-digit entry is an id).
//
// Lemur imports CSRs with RSA and EC keys only (get_key_type_from_csr): an Ed25519 CSR is a
// configuration error here rather than a 500 there.
//
// Answers: a certificate (body + chain -> the chain, id -> state["lemur_id"]); or a pending
// certificate (issuers that do not sign at once): polled at GET /api/1/pending_certificates/N
// with backoff until resolved (then GET /api/1/certificates/<resolvedCertId>), within the
// broker's timeout; still pending then: cancelled (DELETE, best effort) and an Error with
// retry_after. 400/412 (validation), 401/403 (token, permissions) and 404 are configuration
// errors whose message says what to fix; after a 5xx the renewer asks two cheap questions
// (GET /api/1/healthcheck, GET /api/1/authorities?filter=name;<authority>) that tell Lemur's
// 500s apart: database down (a broker failure), unknown authority, deleted API key or user
// (configuration errors); network failures and timeouts are broker failures; Retry-After
// (429/503) becomes Error::retry_after. A change of `url` starts a new lineage, with a warning.

#include "core/http/client.h"
#include "core/secret.h"
#include "renewers/lemur_config.h"
#include "renewers/renewer.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::renewers {

// The name under which `certagent enroll` seals a lemur broker's token_file.
std::string lemur_token_name(std::string_view broker);

// Tuning knobs; the defaults are what the daemon uses, tests shorten them.
struct LemurTuning {
  std::chrono::milliseconds first_poll{500};   // pending certificate: then doubling
  std::chrono::milliseconds max_poll{5000};
  std::chrono::seconds pending_retry_after{30};
};

struct LemurStats {
  std::uint64_t posts{0};         // POST /api/1/certificates
  std::uint64_t polls{0};         // GET /api/1/pending_certificates/N
  std::uint64_t unseals{0};       // token unsealed from the identity
  std::uint64_t issued{0};
};

class LemurRenewer final : public Renewer {
 public:
  [[nodiscard]] static Result<std::unique_ptr<LemurRenewer>> create(const config::BrokerConfig& broker,
                                                                    const RenewerContext& context,
                                                                    LemurTuning tuning = {});

  std::string_view type() const override { return "lemur"; }
  boost::asio::awaitable<Result<IssueResult>> issue(IssueRequest request) override;
  // GET /api/1/healthcheck answers 200 "ok" (200 "db check failed" when its database is down).
  boost::asio::awaitable<Result<>> probe() override;

  // The JSON body of the POST (exposed for tests): `replaces` is the Lemur id of the certificate
  // being rotated, the ids are the resolved destinations and notifications.
  std::string certificate_request_json(const IssueRequest& request, SystemTime now,
                                       std::optional<std::int64_t> replaces,
                                       const std::vector<std::int64_t>& destination_ids,
                                       const std::vector<std::int64_t>& notification_ids) const;

  // The Lemur id of the certificate a request rotates: previous_state["lemur_id"], unless the
  // state was written for another Lemur (previous_state["lemur_url"] differs from ours).
  std::optional<std::int64_t> previous_lemur_id(const IssueRequest& request) const;

  const http::Client& client() const { return *client_; }
  LemurStats stats() const { return stats_; }

 private:
  LemurRenewer(const config::BrokerConfig& broker, const RenewerContext& context, LemurTuning tuning);

  SystemTime now() const;
  boost::asio::awaitable<Result<http::Response>> call(std::string method, std::string path, std::string body,
                                                      const Secret& token);
  boost::asio::awaitable<Result<std::vector<std::int64_t>>> resolve_labels(std::string_view kind,
                                                                           const std::vector<std::string>& labels,
                                                                           const Secret& token);
  boost::asio::awaitable<Result<IssueResult>> wait_pending(std::int64_t pending_id, const Secret& token,
                                                           std::chrono::steady_clock::time_point deadline);
  Error answer_error(std::string_view what, const http::Response& response) const;
  boost::asio::awaitable<Error> diagnose_server_error(Error original, const Secret& token);

  std::string broker_name_;
  LemurRenewerConfig config_;
  RenewerContext context_;
  std::chrono::milliseconds timeout_;
  LemurTuning tuning_;
  std::string base_url_;
  std::unique_ptr<http::Client> client_;
  LemurStats stats_;
};

}  // namespace certagent::renewers
