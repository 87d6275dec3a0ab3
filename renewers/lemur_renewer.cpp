#include "renewers/lemur_renewer.h"

#include "core/crypto/csr.h"
#include "core/logging.h"
#include "core/time_format.h"
#include "renewers/identity_calls.h"
#include "tpm/identity.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <charconv>

namespace certagent::renewers {

namespace asio = boost::asio;
namespace json = boost::json;
using asio::awaitable;
using std::chrono::milliseconds;
using SteadyTime = std::chrono::steady_clock::time_point;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);
constexpr std::string_view kCertificates = "/api/1/certificates";
constexpr std::string_view kPending = "/api/1/pending_certificates/";

std::shared_ptr<spdlog::logger> logger() { return log::get("renewer.lemur"); }

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool all_digits(std::string_view s) {
  return !s.empty() && s.size() <= 18 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::int64_t to_int(std::string_view digits) {
  std::int64_t v = 0;
  std::from_chars(digits.data(), digits.data() + digits.size(), v);
  return v;
}

std::string format_ms(milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

// Lemur ids: JSON integers (or digit strings); positive.
std::optional<std::int64_t> json_id(const json::value* v) {
  if (!v) return std::nullopt;
  if (v->is_int64() && v->get_int64() > 0) return v->get_int64();
  if (v->is_uint64() && v->get_uint64() > 0 &&
      v->get_uint64() <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return static_cast<std::int64_t>(v->get_uint64());
  if (v->is_string() && all_digits(v->get_string()) && to_int(v->get_string()) > 0) return to_int(v->get_string());
  return std::nullopt;
}

std::string json_string(const json::object& o, std::string_view key) {
  if (const auto* v = o.if_contains(key); v && v->is_string()) return std::string(v->get_string());
  return {};
}

// Lemur's "reasons" ({"owner": "Not a valid email address.", "Schema": {"rule": [...]}}) as
// one line: "owner: Not a valid email address.; Schema.rule: Missing Authority.".
void flatten_reasons(const json::value& v, const std::string& prefix, std::string& out) {
  auto add = [&](const std::string& text) {
    if (!out.empty()) out += "; ";
    out += prefix.empty() ? text : prefix + ": " + text;
  };
  if (const auto* o = v.if_object()) {
    for (const auto& [k, sub] : *o)
      flatten_reasons(sub, prefix.empty() ? std::string(k) : prefix + "." + std::string(k), out);
  } else if (const auto* a = v.if_array()) {
    std::string joined;
    for (const auto& e : *a) {
      if (!joined.empty()) joined += ", ";
      joined += e.is_string() ? std::string(e.get_string()) : json::serialize(e);
    }
    add(joined);
  } else if (v.is_string()) {
    add(std::string(v.get_string()));
  } else {
    add(json::serialize(v));
  }
}

// What Lemur said: its {"message", "reasons"} or, for non-JSON answers, the start of the body.
std::string lemur_message(const http::Response& r) {
  boost::system::error_code ec;
  json::value v = json::parse(r.body, ec);
  if (!ec && v.is_object()) {
    const auto& o = v.as_object();
    std::string msg = json_string(o, "message");
    std::string reasons;
    if (const auto* rs = o.if_contains("reasons")) flatten_reasons(*rs, "", reasons);
    if (!reasons.empty()) msg += (msg.empty() ? "" : " ") + ("(" + reasons + ")");
    if (!msg.empty()) return log::excerpt(msg, 600);
  }
  std::string_view body = trim(r.body);
  return body.empty() ? "empty answer" : log::excerpt(body, 200);
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

std::string percent_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

// A JWT in compact form: base64url segments and dots. Anything else (white space inside, a
// newline that would end the header, a pasted PEM) is refused before it is sent.
// Every occurrence of `secret` in `text` replaced by "[redacted]".
void redact(std::string& text, std::string_view secret) {
  if (secret.empty()) return;
  constexpr std::string_view kRedacted = "[redacted]";
  for (auto at = text.find(secret); at != std::string::npos; at = text.find(secret, at + kRedacted.size()))
    text.replace(at, secret.size(), kRedacted);
}

bool token_charset_ok(std::string_view t) {
  return !t.empty() && t.size() <= 8192 && std::all_of(t.begin(), t.end(), [](char c) {
    unsigned char u = static_cast<unsigned char>(c);
    return std::isalnum(u) || c == '-' || c == '_' || c == '.' || c == '=' || c == '+' || c == '/';
  });
}

milliseconds bounded_delay(std::optional<std::chrono::seconds> retry_after, milliseconds interval,
                           SteadyTime deadline) {
  milliseconds d = retry_after ? std::max<milliseconds>(*retry_after, interval) : interval;
  auto left = std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
  return std::max(milliseconds(1), std::min(d, left));
}

// A certificate object (POST answer or GET /api/1/certificates/N): leaf, chain and the id.
Result<IssueResult> certificate_from(const json::object& o, std::optional<std::int64_t> id, std::string_view what,
                                     const std::string& broker) {
  const std::string body_text = json_string(o, "body");
  std::string_view body = trim(body_text);
  if (!contains(body, "-----BEGIN CERTIFICATE-----"))
    return make_error(std::string(what) + ": the certificate body is not PEM: " + log::excerpt(body, 80));
  const std::string chain_text = json_string(o, "chain");
  std::string_view chain = trim(chain_text);
  IssueResult out;
  out.chain_pem.assign(body);
  out.chain_pem += '\n';
  if (!chain.empty()) {
    out.chain_pem.append(chain);
    out.chain_pem += '\n';
  }
  if (id)
    out.state["lemur_id"] = std::to_string(*id);
  else
    logger()->warn("event=lemur_no_id broker={} effect={}", broker,
                   log::quote("the next rotation cannot name the certificate it replaces"));
  return out;
}

}  // namespace

std::string lemur_token_name(std::string_view broker) { return std::string(broker) + ".lemur_token"; }

LemurRenewer::LemurRenewer(const config::BrokerConfig& broker, const RenewerContext& context, LemurTuning tuning)
    : broker_name_(broker.name),
      config_(broker.settings.as<LemurRenewerConfig>()),
      context_(context),
      timeout_(broker.timeout),
      tuning_(tuning) {
  base_url_ = config_.url;
  while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
}

Result<std::unique_ptr<LemurRenewer>> LemurRenewer::create(const config::BrokerConfig& broker,
                                                           const RenewerContext& context, LemurTuning tuning) {
  const auto* settings = broker.settings.get_if<LemurRenewerConfig>();
  if (!settings) return Error{"broker " + broker.name + ": not a lemur broker", {}, true};
  if (!context.identity)
    return Error{"broker " + broker.name + ": lemur needs the host identity (it holds the API key)", {}, true};
  if (auto url = http::parse_url(settings->url); !url)
    return Error{"broker " + broker.name + ": url: " + url.error().message, {}, true};
  std::unique_ptr<LemurRenewer> renewer(new LemurRenewer(broker, context, tuning));
  if (renewer->timeout_ <= milliseconds::zero()) renewer->timeout_ = std::chrono::seconds(30);
  auto client = http::Client::create(context.executor, http::ClientOptions{.ca_bundle = settings->ca_bundle,
                                                                           .timeout = renewer->timeout_,
                                                                           .user_agent = "certagent-lemur"});
  if (!client) return Error{"broker " + broker.name + ": " + client.error().message, {}, true};
  renewer->client_ = std::move(*client);
  return renewer;
}

SystemTime LemurRenewer::now() const {
  return context_.clock ? context_.clock->now() : std::chrono::system_clock::now();
}

std::optional<std::int64_t> LemurRenewer::previous_lemur_id(const IssueRequest& request) const {
  const auto& state = request.previous_state;
  auto id = state.find("lemur_id");
  if (id == state.end() || !all_digits(id->second) || to_int(id->second) <= 0) return std::nullopt;
  if (auto url = state.find("lemur_url"); url != state.end() && url->second != base_url_) {
    // Another URL may be another Lemur (another id space) or the same one moved (http -> https):
    // either way the rotation cannot name its predecessor, and Lemur's lineage restarts here.
    logger()->warn("event=lemur_new_lineage broker={} cert={} lemur_id={} previous_url={} url={} effect={}",
                   broker_name_, request.cert_name, id->second, log::quote(url->second), log::quote(base_url_),
                   log::quote("the broker's url changed: this certificate starts a new lineage in Lemur (replaces "
                              "is not sent); if it is the same Lemur, link them in Lemur's UI"));
    return std::nullopt;
  }
  return to_int(id->second);
}

std::string LemurRenewer::certificate_request_json(const IssueRequest& request, SystemTime now,
                                                   std::optional<std::int64_t> replaces_id,
                                                   const std::vector<std::int64_t>& destination_ids,
                                                   const std::vector<std::int64_t>& notification_ids) const {
  auto ref = [](const std::string& name_or_id) {
    return all_digits(name_or_id) ? json::object{{"id", to_int(name_or_id)}} : json::object{{"name", name_or_id}};
  };
  json::object r;
  r["owner"] = config_.owner;
  r["authority"] = ref(config_.authority);
  r["csr"] = request.csr_pem;
  if (request.lifetime > config::Duration::zero()) {
    // Backdated like the local CA so a peer whose clock lags a little accepts the leaf at once;
    // the end is start + lifetime, so the leaf never lives longer than asked.
    const auto backdate = std::min<config::Duration>(request.lifetime / 10, std::chrono::minutes(1));
    const auto start = std::chrono::floor<std::chrono::seconds>(now - backdate);
    // RFC 3339 UTC, seconds floored: what Lemur's ArrowDateTime reads.
    r["validityStart"] = format_rfc3339(start);
    r["validityEnd"] = format_rfc3339(start + request.lifetime);
  }
  // Short-lived certificates rotate long before they expire: no expiry mail for each one.
  r["notify"] = false;
  json::array replaces;
  if (replaces_id) replaces.push_back(json::object{{"id", *replaces_id}});
  r["replaces"] = std::move(replaces);
  if (!config_.description.empty()) r["description"] = config_.description;
  auto ids = [](const std::vector<std::int64_t>& v) {
    json::array a;
    for (auto id : v) a.push_back(json::object{{"id", id}});
    return a;
  };
  if (!destination_ids.empty()) r["destinations"] = ids(destination_ids);
  if (!notification_ids.empty()) r["notifications"] = ids(notification_ids);
  if (!config_.roles.empty()) {
    json::array roles;
    for (const auto& role : config_.roles) roles.push_back(ref(role));
    r["roles"] = std::move(roles);
  }
  return json::serialize(r);
}

awaitable<Result<http::Response>> LemurRenewer::call(std::string method, std::string path, std::string body,
                                                     const Secret& token) {
  http::Request request;
  request.method = std::move(method);
  request.url = base_url_ + path;
  std::string authorization = "Bearer ";
  authorization.append(token.view());
  request.headers.emplace_back("Authorization", std::move(authorization));
  request.headers.emplace_back("Accept", "application/json");
  if (!body.empty()) request.headers.emplace_back("Content-Type", "application/json");
  request.body = std::move(body);
  auto res = co_await client_->send(std::move(request));
  // Errors quote the answer; a proxy or a debugging page that echoes the request's headers would
  // otherwise put the API key into the log through them.
  if (res) redact(res->body, token.view());
  co_return res;
}

Error LemurRenewer::answer_error(std::string_view what, const http::Response& response) const {
  const std::string said = lemur_message(response);
  Error e = make_error(std::string(what) + ": HTTP " + std::to_string(response.status) + ": " + said);
  e.retry_after = response.retry_after(now());
  std::string fix;
  std::string reason = "credentials";
  Cause cause = Cause::refused;
  switch (response.status) {
    case 401:
      fix = "Lemur saw no API key: make sure nothing between certagent and Lemur strips the Authorization header";
      break;
    case 403:
      if (contains(said, "Token is invalid") || contains(said, "Failed to decode token"))
        fix = "the sealed API key is not a token this Lemur accepts (another server's key, or its LEMUR_TOKEN_SECRET "
              "changed): create an API key in Lemur and seal it with `certagent enroll`";
      else if (contains(said, "expired"))
        fix = "the API key has expired: create a new one in Lemur (ttl -1 never expires) and seal it with "
              "`certagent enroll`";
      else if (contains(said, "revoked"))
        fix = "the API key was revoked in Lemur: create a new one and seal it with `certagent enroll`";
      else if (contains(said, "authority")) {
        fix = "the API key's user may not use authority " + config_.authority +
              ": give it the authority's owner role or one of the authority's roles in Lemur";
        reason = "permissions";
      } else if (contains(said, "create a new certificate")) {
        fix = "the API key's user only has read-only rights: give it a role that may create certificates";
        reason = "permissions";
      } else if (contains(said, "not currently active")) {
        fix = "the API key's user is deactivated in Lemur: reactivate it, or seal a key of an active user";
      } else {
        fix = "check the API key's user, its roles and the domains it may issue for in Lemur";
        reason = "permissions";
      }
      break;
    case 400:
    case 412:
      fix = "fix the broker's owner, authority, destinations, notifications or roles, or the certificate's names";
      reason = contains(said, "authority") ? "authority" : "request";
      break;
    case 404:
    case 405:
      fix = "check the broker's url: it must point at the Lemur server itself, without /api/1";
      reason = "url";
      cause = Cause::local_config;
      break;
    default:
      if (response.status >= 500) e.cause = Cause::unreachable;  // refined by diagnose_server_error
      break;
  }
  if (!fix.empty()) {
    e.configuration = true;
    e.cause = cause;
    e.reason = reason;
    e.message += " (" + fix + ")";
  }
  logger()->warn("event=lemur_error broker={} status={} configuration={} error={}", broker_name_, response.status,
                 e.configuration, log::quote(said));
  return e;
}

awaitable<Result<std::vector<std::int64_t>>> LemurRenewer::resolve_labels(std::string_view kind,
                                                                          const std::vector<std::string>& labels,
                                                                          const Secret& token) {
  std::vector<std::int64_t> ids;
  for (const auto& label : labels) {
    if (all_digits(label)) {
      ids.push_back(to_int(label));
      continue;
    }
    const std::string what = "GET /api/1/" + std::string(kind);
    // Lemur's filter is a case-insensitive substring match: the exact label is picked below.
    auto res = co_await call("GET", "/api/1/" + std::string(kind) + "?filter=label;" + percent_encode(label) +
                                        "&count=100",
                             "", token);
    if (!res) co_return with_context(what, res.error());
    if (res->status != 200) co_return answer_error(what, *res);
    boost::system::error_code ec;
    json::value v = json::parse(res->body, ec);
    std::optional<std::int64_t> found;
    if (!ec && v.is_object())
      if (const auto* items = v.as_object().if_contains("items"); items && items->is_array())
        for (const auto& item : items->get_array())
          if (const auto* o = item.if_object(); o && json_string(*o, "label") == label)
            found = json_id(o->if_contains("id"));
    if (ec || !v.is_object()) co_return make_error(what + ": the answer is not JSON: " + log::excerpt(res->body, 120));
    if (!found)
      co_return config_error(Cause::refused, "request",
                             "Lemur has no " + std::string(kind).substr(0, kind.size() - 1) + " labelled " +
                                 log::quote(label) + " (check " + std::string(kind) + " of broker " + broker_name_ +
                                 ")");
    ids.push_back(*found);
  }
  co_return ids;
}

awaitable<Result<IssueResult>> LemurRenewer::issue(IssueRequest request) {
  auto fail = [&](Error e) { return with_context("lemur broker " + broker_name_, std::move(e)); };
  const SteadyTime deadline = std::chrono::steady_clock::now() + timeout_;

  // Lemur reads the key type from the CSR and knows RSA and EC only.
  {
    auto csr = crypto::parse_csr(request.csr_pem);
    if (!csr) co_return fail(with_context("the CSR", csr.error()));
    crypto::EvpPkeyPtr key(X509_REQ_get_pubkey(csr->get()));
    const int base = key ? EVP_PKEY_get_base_id(key.get()) : 0;
    if (base != EVP_PKEY_RSA && base != EVP_PKEY_EC)
      co_return fail(config_error(Cause::local_config, "key",
                                  "Lemur issues for RSA and ECDSA keys only: set `key` of certificate " +
                                      request.cert_name + " to ecdsa-p256, ecdsa-p384 or rsa-*"));
  }

  // The API key: unsealed for this issuance, wiped when it ends (Secret); never kept between
  // issuances. The sealed object stays loaded in the TPM, so the unseal is the issuance's one
  // TPM command, queued on the identity's thread under the certificate's deadline.
  const std::string token_name = lemur_token_name(broker_name_);
  if (!context_.identity->has_secret(token_name))
    co_return fail(config_error(Cause::local_config, "secret",
                                "no API key sealed in the identity as " + token_name +
                                    ": run `certagent enroll --config FILE` (FILE: this configuration) to seal "
                                    "token_file " +
                                    config_.token_file.string()));
  Secret token;
  {
    const auto tpm_due = tpm_deadline(request, now());
    std::string sealed_name = token_name;
    auto unsealed = co_await identity_unseal(*context_.identity, context_.executor, std::move(sealed_name), tpm_due);
    if (!unsealed) co_return fail(with_context("unsealing " + token_name, unsealed.error()));
    ++stats_.unseals;
    std::string_view t = trim(unsealed->view());
    if (!token_charset_ok(t))
      co_return fail(config_error(Cause::local_config, "secret",
                                  "the sealed API key " + token_name +
                                      " is not a JWT (unexpected characters): seal the key Lemur showed with "
                                      "`certagent enroll` again"));
    token = t.size() == unsealed->size() ? std::move(*unsealed) : Secret(std::string(t));
  }

  std::vector<std::int64_t> destination_ids, notification_ids;
  if (!config_.destinations.empty()) {
    auto ids = co_await resolve_labels("destinations", config_.destinations, token);
    if (!ids) co_return fail(ids.error());
    destination_ids = std::move(*ids);
  }
  if (!config_.notifications.empty()) {
    auto ids = co_await resolve_labels("notifications", config_.notifications, token);
    if (!ids) co_return fail(ids.error());
    notification_ids = std::move(*ids);
  }

  // The predecessor, if Lemur still has it: an unknown id in `replaces` makes Lemur 1.9 refuse
  // the whole request (400 "Unable to find ... with id"), and would do so at every later attempt.
  auto previous = previous_lemur_id(request);
  if (previous) {
    const std::string get_path = std::string(kCertificates) + "/" + std::to_string(*previous);
    auto got = co_await call("GET", get_path, "", token);
    if (got && got->status == 404) {
      logger()->warn("event=lemur_predecessor_missing broker={} cert={} lemur_id={} effect={}", broker_name_,
                     request.cert_name, *previous, log::quote("issued without replaces: the lineage restarts"));
      previous.reset();
    } else if (got && (got->status == 401 || got->status == 403)) {
      co_return fail(answer_error("GET " + get_path, *got));
    }
  }
  ++stats_.posts;
  auto res = co_await call("POST", std::string(kCertificates),
                           certificate_request_json(request, now(), previous, destination_ids, notification_ids),
                           token);
  const std::string what = "POST " + std::string(kCertificates);
  if (!res) co_return fail(with_context(what, res.error()));
  if (res->status == 400 && previous && contains(res->body, "replaces") && contains(res->body, "Unable to find")) {
    // The predecessor went between the look-up and the POST (or the look-up could not tell).
    logger()->warn("event=lemur_predecessor_missing broker={} cert={} lemur_id={} effect={}", broker_name_,
                   request.cert_name, *previous, log::quote("issued without replaces: the lineage restarts"));
    previous.reset();
    ++stats_.posts;
    res = co_await call("POST", std::string(kCertificates),
                        certificate_request_json(request, now(), previous, destination_ids, notification_ids), token);
    if (!res) co_return fail(with_context(what, res.error()));
  }
  if (res->status >= 500) co_return fail(co_await diagnose_server_error(answer_error(what, *res), token));
  if (res->status != 200) co_return fail(answer_error(what, *res));

  boost::system::error_code ec;
  json::value v = json::parse(res->body, ec);
  if (ec || !v.is_object()) co_return fail(make_error(what + ": the answer is not a JSON object: " + log::excerpt(res->body, 120)));
  const auto& o = v.as_object();
  auto id = json_id(o.if_contains("id"));
  Result<IssueResult> out = make_error("");
  if (!json_string(o, "body").empty()) {
    out = certificate_from(o, id, what, broker_name_);
    // Lemur's clock as it answered: the loop measures clock skew from it.
    if (out) out->broker_time = res->date();
  } else {
    // Issuers that do not sign at once: Lemur answers with a pending certificate (no body;
    // its id is in the pending_certificates table, not the certificates one).
    if (!id) co_return fail(make_error(what + ": HTTP 200 with neither a certificate body nor an id"));
    logger()->info("event=lemur_pending broker={} cert={} pending_id={}", broker_name_, request.cert_name, *id);
    out = co_await wait_pending(*id, token, deadline);
  }
  if (!out) co_return fail(out.error());
  out->state["lemur_url"] = base_url_;
  ++stats_.issued;
  logger()->info("event=lemur_issued broker={} cert={} lemur_id={} replaces={}", broker_name_, request.cert_name,
                 out->state.count("lemur_id") ? out->state.at("lemur_id") : std::string("-"),
                 previous ? std::to_string(*previous) : std::string("-"));
  co_return out;
}

awaitable<Result<IssueResult>> LemurRenewer::wait_pending(std::int64_t pending_id, const Secret& token,
                                                          SteadyTime deadline) {
  const std::string path = std::string(kPending) + std::to_string(pending_id);
  const std::string what = "GET " + path;
  milliseconds interval = tuning_.first_poll;
  milliseconds delay = interval;
  std::string last = "pending";
  for (;;) {
    {
      asio::steady_timer timer(context_.executor);
      timer.expires_after(bounded_delay(std::nullopt, delay, deadline));
      co_await timer.async_wait(kTuple);
    }
    ++stats_.polls;
    std::optional<std::chrono::seconds> retry_after;
    auto res = co_await call("GET", path, "", token);
    if (!res) {
      last = res.error().message;  // transient: keep polling until the deadline
    } else if (res->status == 200) {
      boost::system::error_code ec;
      json::value v = json::parse(res->body, ec);
      if (ec || !v.is_object()) co_return make_error(what + ": the answer is not a JSON object: " + log::excerpt(res->body, 120));
      const auto& p = v.as_object();
      bool resolved = false;
      if (const auto* r = p.if_contains("resolved"); r && r->is_bool()) resolved = r->get_bool();
      auto cert_id = json_id(p.if_contains("resolvedCertId"));
      std::string status = json_string(p, "status");
      if (resolved && cert_id) {
        const std::string get_what = "GET " + std::string(kCertificates) + "/" + std::to_string(*cert_id);
        auto cert = co_await call("GET", std::string(kCertificates) + "/" + std::to_string(*cert_id), "", token);
        if (!cert) co_return with_context(get_what, cert.error());
        if (cert->status != 200) co_return answer_error(get_what, *cert);
        json::value cv = json::parse(cert->body, ec);
        if (ec || !cv.is_object())
          co_return make_error(get_what + ": the answer is not a JSON object: " + log::excerpt(cert->body, 120));
        logger()->info("event=lemur_pending_resolved broker={} pending_id={} lemur_id={}", broker_name_, pending_id,
                       *cert_id);
        auto out = certificate_from(cv.as_object(), cert_id, get_what, broker_name_);
        if (out) out->broker_time = cert->date();
        co_return out;
      }
      if (status == "Cancelled")
        co_return make_error("pending certificate " + std::to_string(pending_id) + " was cancelled in Lemur");
      last = "status " + (status.empty() ? std::string("pending") : log::excerpt(status, 200));
      if (const auto* n = p.if_contains("numberAttempts"); n && n->is_number())
        last += ", " + json::serialize(*n) + " attempts";
    } else if (res->status == 404) {
      co_return make_error(what + ": pending certificate " + std::to_string(pending_id) +
                           " no longer exists in Lemur (cancelled or deleted)");
    } else if (res->status == 400 || res->status == 401 || res->status == 403) {
      co_return answer_error(what, *res);
    } else {
      last = "HTTP " + std::to_string(res->status) + ": " + lemur_message(*res);
      retry_after = res->retry_after(now());
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    delay = bounded_delay(retry_after, interval, deadline);
    interval = std::min(interval * 2, tuning_.max_poll);
  }

  // Its key dies with this attempt (the next one generates a fresh key and CSR), so the order
  // is of no use any more: cancel it, best effort, rather than leave Lemur working on it.
  json::object note{{"note", "certagent: not issued within " + format_ms(timeout_) +
                                 "; the next attempt sends a new CSR"}};
  auto cancelled = co_await call("DELETE", path, json::serialize(note), token);
  const bool ok = cancelled && (cancelled->status == 204 || cancelled->status == 200);
  logger()->warn("event=lemur_pending_gave_up broker={} pending_id={} last={} cancelled={}", broker_name_, pending_id,
                 log::quote(last), ok);
  Error e = make_error("certificate still pending in Lemur after " + format_ms(timeout_) + " (pending certificate " +
                       std::to_string(pending_id) + ": " + last + (ok ? "; cancelled it" : "") +
                       "): if the authority takes longer to sign, raise the broker's timeout");
  e.retry_after = tuning_.pending_retry_after;
  co_return e;
}

awaitable<Result<>> LemurRenewer::probe() {
  auto res = co_await client_->get(base_url_ + "/api/1/healthcheck");
  if (!res) co_return res.error();
  if (res->status == 200 && trim(res->body) == "ok") co_return Result<>{};
  if (res->status == 404)
    co_return config_error(Cause::local_config, "url",
                           "GET /api/1/healthcheck: HTTP 404: check the broker's url: it must point at the Lemur "
                           "server itself, without /api/1");
  Error e = make_error("GET /api/1/healthcheck: HTTP " + std::to_string(res->status) + ": " +
                       log::excerpt(trim(res->body), 120) +
                       (contains(res->body, "db check failed") ? " (Lemur's database does not answer)" : ""));
  e.cause = Cause::unreachable;
  co_return e;
}

// Lemur answers 500 for causes no status tells apart (a Lemur bug each time): an unknown
// authority, an API key whose row or user was deleted, its database down. Two cheap questions
// do: the healthcheck, and the authority by name with our key (whose authentication alone
// fails with a 500 for a deleted key or user).
awaitable<Error> LemurRenewer::diagnose_server_error(Error original, const Secret& token) {
  if (auto health = co_await probe(); !health) {
    Error e = original;
    e.message += "; and " + health.error().message;
    e.cause = Cause::unreachable;
    co_return e;
  }
  std::string path = "/api/1/authorities";
  path += all_digits(config_.authority) ? "/" + config_.authority
                                        : "?filter=name;" + percent_encode(config_.authority) + "&count=100";
  auto res = co_await call("GET", path, "", token);
  if (!res) co_return original;
  if (res->status == 500)
    co_return config_error(
        Cause::refused, "credentials",
        original.message + "; GET " + path + " answers 500 too, while Lemur is healthy: Lemur no longer knows the "
                                             "API key (the key or its user was deleted): create a new API key in "
                                             "Lemur and seal it with `certagent enroll`");
  if (res->status == 401 || res->status == 403) co_return answer_error("GET " + path, *res);
  if (res->status != 200 && res->status != 404) co_return original;
  bool found = false;
  boost::system::error_code ec;
  json::value v = json::parse(res->body, ec);
  if (!ec && v.is_object()) {
    const auto& o = v.as_object();
    if (all_digits(config_.authority)) {
      found = res->status == 200 && json_id(o.if_contains("id")) == to_int(config_.authority);
    } else if (const auto* items = o.if_contains("items"); items && items->is_array()) {
      for (const auto& item : items->get_array())
        if (const auto* a = item.if_object(); a && json_string(*a, "name") == config_.authority) found = true;
    }
  }
  if (found || (ec && res->status == 200)) co_return original;
  logger()->warn("event=lemur_unknown_authority broker={} authority={}", broker_name_, log::quote(config_.authority));
  co_return config_error(Cause::refused, "authority",
                         original.message + "; Lemur has no authority " + log::quote(config_.authority) +
                             ": set the broker's authority to the name (or id) of one of Lemur's authorities");
}

}  // namespace certagent::renewers
