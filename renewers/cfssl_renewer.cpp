#include "renewers/cfssl_renewer.h"

#include "core/crypto/ossl_ptr.h"
#include "core/logging.h"
#include "renewers/broker_keys.h"
#include "renewers/identity_calls.h"
#include "tpm/identity.h"

#include <boost/json.hpp>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

namespace certagent::renewers {

namespace json = boost::json;
using boost::asio::awaitable;

namespace {

std::shared_ptr<spdlog::logger> logger() { return log::get("renewer.cfssl"); }

std::string base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// cfssl's {"errors":[{"code":N,"message":"..."}]} as one line.
std::string cfssl_errors(const json::value& v) {
  std::string out;
  if (const auto* o = v.if_object())
    if (const auto* errs = o->if_contains("errors"); errs && errs->is_array())
      for (const auto& e : errs->get_array()) {
        std::string m;
        if (const auto* eo = e.if_object()) {
          if (const auto* msg = eo->if_contains("message"); msg && msg->is_string()) m = std::string(msg->get_string());
          if (const auto* code = eo->if_contains("code"); code && code->is_number())
            m = "code " + json::serialize(*code) + ": " + m;
        }
        out += (out.empty() ? "" : "; ") + m;
      }
  return out;
}

int pem_certificate_count(std::string_view pem, std::string& error) {
  std::size_t begins = 0, pos = 0;
  while ((pos = pem.find("-----BEGIN CERTIFICATE-----", pos)) != std::string_view::npos) {
    ++begins;
    pos += 27;
  }
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::size_t parsed = 0;
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    X509_free(c);
    ++parsed;
  }
  ERR_clear_error();
  if (begins == 0) error = "no PEM certificate in the answer";
  else if (parsed != begins)
    error = "malformed PEM (" + std::to_string(parsed) + " of " + std::to_string(begins) + " certificates parse)";
  return error.empty() ? static_cast<int>(parsed) : 0;
}

}  // namespace

std::string cfssl_auth_key_name(std::string_view broker) { return std::string(broker) + ".cfssl_auth"; }

CfsslRenewer::CfsslRenewer(const config::BrokerConfig& broker, const RenewerContext& context)
    : broker_name_(broker.name), config_(broker.settings.as<CfsslRenewerConfig>()), context_(context) {
  base_url_ = config_.url;
  while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
}

Result<std::unique_ptr<CfsslRenewer>> CfsslRenewer::create(const config::BrokerConfig& broker,
                                                           const RenewerContext& context) {
  const auto* settings = broker.settings.get_if<CfsslRenewerConfig>();
  if (!settings) return Error{"broker " + broker.name + ": not a cfssl broker", {}, true};
  if (!context.identity) return Error{"broker " + broker.name + ": cfssl needs the host identity", {}, true};
  if (auto url = http::parse_url(settings->url); !url)
    return Error{"broker " + broker.name + ": url: " + url.error().message, {}, true};
  std::unique_ptr<CfsslRenewer> renewer(new CfsslRenewer(broker, context));
  auto client = http::Client::create(context.executor, http::ClientOptions{.ca_bundle = settings->ca_bundle,
                                                                           .timeout = broker.timeout,
                                                                           .user_agent = "certagent-cfssl"});
  if (!client) return Error{"broker " + broker.name + ": " + client.error().message, {}, true};
  renewer->client_ = std::move(*client);
  return renewer;
}

std::string CfsslRenewer::sign_request_json(const IssueRequest& request) const {
  // `hosts` replaces the CSR's SANs at the CA: list exactly the names we want, CN first.
  json::array hosts;
  auto add = [&](const std::string& h) {
    if (h.empty()) return;
    for (const auto& existing : hosts)
      if (existing.get_string() == h) return;
    hosts.emplace_back(h);
  };
  for (const auto& d : request.dns_names) add(d);
  for (const auto& ip : request.ip_addresses) add(ip);
  for (const auto& uri : request.uris) add(uri);
  json::object r;
  r["certificate_request"] = request.csr_pem;
  r["hosts"] = std::move(hosts);
  if (!config_.profile.empty()) r["profile"] = config_.profile;
  if (!config_.label.empty()) r["label"] = config_.label;
  return json::serialize(r);
}

awaitable<Result<IssueResult>> CfsslRenewer::issue(IssueRequest request) {
  auto fail = [&](Error e) { return with_context("cfssl broker " + broker_name_, std::move(e)); };
  std::string r = sign_request_json(request);
  // One TPM command (TPM2_HMAC with the kept auth key), queued under the certificate's deadline.
  const auto deadline = tpm_deadline(request, context_.clock ? context_.clock->now() : std::chrono::system_clock::now());
  std::vector<std::uint8_t> signed_bytes(r.begin(), r.end());
  std::string key_name = cfssl_auth_key_name(broker_name_);
  auto mac = co_await broker_hmac_async(*context_.identity, context_.executor, std::move(key_name),
                                        config_.auth_key_file, parse_hex_key_text, std::move(signed_bytes), deadline);
  if (!mac) {
    const std::string reason = mac.error().reason.empty() ? "secret" : mac.error().reason;
    co_return fail(config_error(Cause::local_config, reason, "auth token: " + mac.error().message));
  }
  std::string token = base64(std::string_view(reinterpret_cast<const char*>(mac->data()), mac->size()));
  json::object body{{"token", token}, {"request", base64(r)}};

  http::Request post{.method = "POST",
                     .url = base_url_ + "/api/v1/cfssl/authsign",
                     .headers = {{"Content-Type", "application/json"}},
                     .body = json::serialize(body)};
  auto res = co_await client_->send(std::move(post));
  if (!res) co_return fail(with_context("authsign", res.error()));

  Error error;
  error.retry_after = res->retry_after(context_.clock ? context_.clock->now() : std::chrono::system_clock::now());
  boost::system::error_code ec;
  json::value v = json::parse(res->body, ec);
  if (ec || !v.is_object()) {
    error.message = "authsign: HTTP " + std::to_string(res->status) + ": the answer is not JSON: " + log::excerpt(res->body);
    co_return fail(std::move(error));
  }
  const auto& o = v.get_object();
  bool success = false;
  if (const auto* s = o.if_contains("success"); s && s->is_bool()) success = s->get_bool();
  if (res->status != 200 || !success) {
    std::string errors = cfssl_errors(v);
    error.message = "authsign: HTTP " + std::to_string(res->status) + ": " + (errors.empty() ? "failed" : errors);
    // Wrong key, unknown profile or label: only the operator can fix those.
    if (res->status == 400 || res->status == 401 || res->status == 403 || res->status == 404) {
      std::string lower = errors;
      for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (lower.find("token") != std::string::npos || lower.find("auth") != std::string::npos ||
          lower.find("profile") != std::string::npos || lower.find("label") != std::string::npos ||
          lower.find("signer") != std::string::npos || res->status == 401 || res->status == 403) {
        auto retry_after = error.retry_after;
        error = classify_refusal(error.message, errors);
        error.retry_after = retry_after;
      }
    } else if (res->status >= 500) {
      error.cause = Cause::unreachable;
    }
    logger()->warn("event=cfssl_error broker={} status={} error={}", broker_name_, res->status,
                   log::quote(error.message));
    co_return fail(std::move(error));
  }
  std::string certificate;
  if (const auto* result = o.if_contains("result"); result && result->is_object())
    if (const auto* c = result->get_object().if_contains("certificate"); c && c->is_string())
      certificate = std::string(c->get_string());
  std::string pem_error;
  if (certificate.empty() || pem_certificate_count(certificate, pem_error) == 0)
    co_return fail(make_error("authsign: " + (certificate.empty() ? std::string("no result.certificate in the answer")
                                                                   : pem_error)));
  IssueResult out;
  out.chain_pem = std::move(certificate);
  if (out.chain_pem.back() != '\n') out.chain_pem += '\n';
  out.broker_time = res->date();
  co_return out;
}

awaitable<Result<>> CfsslRenewer::probe() {
  json::object body;
  if (!config_.label.empty()) body["label"] = config_.label;
  http::Request post{.method = "POST",
                     .url = base_url_ + "/api/v1/cfssl/info",
                     .headers = {{"Content-Type", "application/json"}},
                     .body = json::serialize(body)};
  auto res = co_await client_->send(std::move(post));
  if (!res) co_return res.error();
  if (res->status == 200) co_return Result<>{};
  // cfssl answered: a JSON error about our label or profile is a refusal that only a change of
  // configuration fixes; anything else (a proxy's 502, a 404 for the path) says it is not up.
  boost::system::error_code ec;
  json::value v = json::parse(res->body, ec);
  const std::string errors = ec ? std::string() : cfssl_errors(v);
  const std::string said = "info: HTTP " + std::to_string(res->status) + ": " +
                           (errors.empty() ? log::excerpt(res->body, 120) : errors);
  if (!errors.empty() && res->status < 500) co_return classify_refusal(said, errors);
  if (res->status == 404)
    co_return config_error(Cause::local_config, "url",
                           said + ": the broker's url must be the cfssl server (multirootca) itself");
  Error e = make_error(said);
  e.cause = Cause::unreachable;
  co_return e;
}

Error CfsslRenewer::classify_refusal(std::string message, const std::string& errors) const {
  std::string lower = errors;
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto has = [&](std::string_view w) { return lower.find(w) != std::string::npos; };
  if (has("token") || has("auth") || has("hmac"))
    return config_error(Cause::refused, "credentials",
                        message + ": cfssl does not accept our auth key: put the key of the signer's auth_key "
                                  "in auth_key_file and seal it with `certagent enroll`");
  if (has("label") || has("signer"))
    return config_error(Cause::refused, "label",
                        message + ": cfssl has no signer labelled '" + config_.label +
                            "': set the broker's label to one of multirootca's signers");
  if (has("profile") || has("policy"))
    return config_error(Cause::refused, "profile",
                        message + ": the signer has no usable profile '" + config_.profile +
                            "': set the broker's profile to one in the signer's configuration");
  return config_error(Cause::refused, "request",
                      message + ": check the broker's label and profile and the certificate's names");
}

}  // namespace certagent::renewers
