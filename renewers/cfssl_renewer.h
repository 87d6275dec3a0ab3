#pragma once
// cfssl API renewer: POST /api/v1/cfssl/authsign to multirootca (or `cfssl serve`) with
// {"token": b64(HMAC-SHA256(key, R)), "request": b64(R)}, where R is the exact JSON of the sign
// request and the HMAC key is held by the host identity. Sends exactly the wanted names.

#include "core/http/client.h"
#include "renewers/cfssl_config.h"
#include "renewers/renewer.h"

#include <memory>
#include <string>

namespace certagent::renewers {

// The HMAC key name under which `certagent enroll` stores a cfssl broker's auth key; the
// key file holds it in hex, as cfssl's config does.
std::string cfssl_auth_key_name(std::string_view broker);

class CfsslRenewer final : public Renewer {
 public:
  [[nodiscard]] static Result<std::unique_ptr<CfsslRenewer>> create(const config::BrokerConfig& broker,
                                                                    const RenewerContext& context);
  std::string_view type() const override { return "cfssl"; }
  boost::asio::awaitable<Result<IssueResult>> issue(IssueRequest request) override;
  boost::asio::awaitable<Result<>> probe() override;

  const http::Client& client() const { return *client_; }

  // The exact bytes of R for a request (exposed for tests).
  std::string sign_request_json(const IssueRequest& request) const;

 private:
  CfsslRenewer(const config::BrokerConfig& broker, const RenewerContext& context);
  // cfssl's own error about our request: credentials, label or profile, with what to change.
  Error classify_refusal(std::string message, const std::string& errors) const;

  std::string broker_name_;
  CfsslRenewerConfig config_;
  RenewerContext context_;
  std::string base_url_;
  std::unique_ptr<http::Client> client_;
};

}  // namespace certagent::renewers
