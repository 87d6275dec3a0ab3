#include "renewers/acme_renewer.h"

#include "core/crypto/ossl_ptr.h"
#include "core/logging.h"
#include "renewers/acme_http01_responder.h"
#include "renewers/acme_jws.h"
#include "renewers/broker_keys.h"
#include "renewers/identity_calls.h"
#include "tpm/identity.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <openssl/err.h>
#include <openssl/pem.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>

extern char** environ;

namespace certagent::renewers {

namespace asio = boost::asio;
namespace json = boost::json;
using asio::awaitable;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);
constexpr std::string_view kErrorPrefix = "urn:ietf:params:acme:error:";

std::shared_ptr<spdlog::logger> logger() { return log::get("renewer.acme"); }

struct Problem {
  std::string type;    // without the urn prefix when it is an ACME error
  std::string detail;
  std::vector<std::string> subproblems;

  std::string describe() const {
    std::string s = type.empty() ? "error" : type;
    if (!detail.empty()) s += ": " + detail;
    if (!subproblems.empty()) {
      s += " (";
      for (std::size_t i = 0; i < subproblems.size(); ++i) s += (i ? "; " : "") + subproblems[i];
      s += ")";
    }
    return s;
  }
};

std::string short_type(std::string_view type) {
  if (type.substr(0, kErrorPrefix.size()) == kErrorPrefix) type.remove_prefix(kErrorPrefix.size());
  return std::string(type);
}

std::string json_string(const json::value& v, std::string_view key) {
  if (const auto* o = v.if_object())
    if (const auto* s = o->if_contains(key))
      if (const auto* str = s->if_string()) return std::string(*str);
  return {};
}

std::optional<Problem> problem_from_json(const json::value& v) {
  const auto* o = v.if_object();
  if (!o || !o->contains("type")) return std::nullopt;
  Problem p;
  p.type = short_type(json_string(v, "type"));
  p.detail = json_string(v, "detail");
  if (const auto* subs = o->if_contains("subproblems"); subs && subs->is_array()) {
    for (const auto& sub : subs->get_array()) {
      std::string id;
      if (const auto* so = sub.if_object())
        if (const auto* ident = so->if_contains("identifier")) id = json_string(*ident, "value") + ": ";
      p.subproblems.push_back(id + short_type(json_string(sub, "type")) + ": " + json_string(sub, "detail"));
    }
  }
  return p;
}

bool icontains(std::string_view haystack, std::string_view needle) {
  auto it = std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end(), [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  });
  return it != haystack.end();
}

bool is_ip(const std::string& s) {
  boost::system::error_code ec;
  asio::ip::make_address(s, ec);
  return !ec;
}

// Problem types no retry can fix: the message tells the operator what to change.
bool configuration_problem(const std::string& type) {
  static constexpr std::string_view kTypes[] = {
      "externalAccountRequired", "rejectedIdentifier", "unsupportedIdentifier", "caa",
      "invalidContact", "unsupportedContact", "userActionRequired", "badSignatureAlgorithm",
      "badPublicKey"};
  return std::find(std::begin(kTypes), std::end(kTypes), type) != std::end(kTypes);
}

std::vector<crypto::X509Ptr> read_pem_chain(std::string_view pem, std::string& error) {
  std::vector<crypto::X509Ptr> out;
  // Every BEGIN must have its END and parse: a truncated download is not a shorter chain.
  std::size_t begins = 0, pos = 0;
  while ((pos = pem.find("-----BEGIN CERTIFICATE-----", pos)) != std::string_view::npos) {
    ++begins;
    pos += 27;
  }
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(c);
  ERR_clear_error();
  if (begins == 0 || out.size() != begins) {
    error = begins == 0 ? "no PEM certificate in the response"
                        : "malformed PEM (" + std::to_string(out.size()) + " of " + std::to_string(begins) +
                              " certificates parse)";
    out.clear();
  }
  return out;
}

std::string issuer_cn(X509* cert) {
  X509_NAME* name = X509_get_issuer_name(cert);
  int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) return {};
  ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, s);
  if (len < 0) return {};
  std::string out(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

// Link: <url>;rel="alternate", <url2>;rel=up  ->  the alternate URLs.
std::vector<std::string> alternate_links(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const auto& value : values) {
    std::size_t pos = 0;
    while ((pos = value.find('<', pos)) != std::string::npos) {
      auto close = value.find('>', pos);
      if (close == std::string::npos) break;
      std::string url = value.substr(pos + 1, close - pos - 1);
      auto next = value.find('<', close);
      std::string params = value.substr(close + 1, next == std::string::npos ? std::string::npos : next - close - 1);
      if (icontains(params, "rel=\"alternate\"") || icontains(params, "rel=alternate")) out.push_back(url);
      pos = close + 1;
    }
  }
  return out;
}

std::string format_ms(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

// The wait before the next poll: the server's Retry-After when it gave one, but never shorter
// than our own interval (first_poll doubling to max_poll: a "Retry-After: 0" makes no tight
// loop), and never past the deadline. None when the server asks us back only after the deadline
// (a poll before then would be answered "not yet" again, one signature for nothing) or the
// deadline has passed.
std::optional<std::chrono::milliseconds> poll_wait(std::optional<std::chrono::seconds> retry_after,
                                                   std::chrono::milliseconds interval,
                                                   std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  if (left <= std::chrono::milliseconds(0)) return std::nullopt;
  if (retry_after && *retry_after > left) return std::nullopt;
  auto d = std::max(interval, retry_after ? std::chrono::milliseconds(*retry_after) : std::chrono::milliseconds(0));
  return std::max(std::chrono::milliseconds(1), std::min(d, left));
}

// Why polling stops (poll_wait gave none): "still pending after 20s" / "still pending; the CA
// asks to come back in 1m, past the broker's timeout (20s)".
std::string not_done_text(std::optional<std::chrono::seconds> retry_after, std::chrono::milliseconds timeout,
                          std::chrono::steady_clock::time_point deadline) {
  if (retry_after && std::chrono::steady_clock::now() < deadline)
    return "; the CA asks to come back in " + format_ms(std::chrono::milliseconds(*retry_after)) +
           ", past the broker's timeout (" + format_ms(timeout) + ")";
  return " after " + format_ms(timeout);
}

bool not_yet(const std::string& status) { return status == "pending" || status == "processing"; }

std::string origin_of(const std::string& url) {
  auto u = http::parse_url(url);
  return u ? u->origin() : std::string();
}

std::string absolute(const std::string& url, const std::string& base) {
  if (!url.empty() && url.front() == '/') return origin_of(base) + url;
  return url;
}

}  // namespace

// ---- helpers with a public face ------------------------------------------------------------

bool valid_replay_nonce(std::string_view nonce) {
  // Servers send 16-32 bytes (22-43 characters); 256 leaves room without taking a whole header.
  return !nonce.empty() && nonce.size() <= 256 &&
         nonce.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
             std::string_view::npos;
}

std::string acme_eab_key_name(std::string_view broker) { return std::string(broker) + ".eab_hmac"; }

Result<std::vector<std::uint8_t>> parse_eab_key_file_text(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  auto key = acme::base64url_decode(text);
  if (!key || key->empty()) return make_error("expected the EAB HMAC key in base64url");
  return std::move(*key);
}

Result<std::string> ari_cert_id(std::string_view cert_pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
  crypto::X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    return make_error("ARI: not a PEM certificate");
  }
  const ASN1_OCTET_STRING* akid = X509_get0_authority_key_id(cert.get());
  if (!akid) return make_error("ARI: the certificate has no authority key identifier");
  // The serial's DER content octets: i2d gives tag, length, content; serials fit a short length.
  unsigned char* der = nullptr;
  int len = i2d_ASN1_INTEGER(X509_get0_serialNumber(cert.get()), &der);
  if (len < 3) return make_error("ARI: cannot encode the serial number");
  std::span<const std::uint8_t> content(der + 2, static_cast<std::size_t>(len - 2));
  std::string id = acme::base64url(std::span(ASN1_STRING_get0_data(akid), static_cast<std::size_t>(ASN1_STRING_length(akid)))) +
                   "." + acme::base64url(content);
  OPENSSL_free(der);
  return Result<std::string>(boost::system::in_place_value, std::move(id));
}

// ---- AcmeRenewer ---------------------------------------------------------------------------

struct AcmeRenewer::Posted {
  http::Response response;
  json::value body;                 // null unless the body is JSON
  std::optional<Problem> problem;   // for 4xx/5xx with a problem document
  bool failed() const { return response.status >= 400; }
};

AcmeRenewer::AcmeRenewer(const config::BrokerConfig& broker, const RenewerContext& context, AcmeTuning tuning)
    : broker_name_(broker.name), config_(broker.settings.as<AcmeRenewerConfig>()),
      timeout_(broker.timeout), context_(context), tuning_(tuning), rng_(std::random_device{}()) {
  static const SystemClock kSystemClock;
  clock_ = context.clock ? context.clock : &kSystemClock;
}

AcmeRenewer::~AcmeRenewer() = default;

Result<std::unique_ptr<AcmeRenewer>> AcmeRenewer::create(const config::BrokerConfig& broker,
                                                         const RenewerContext& context, AcmeTuning tuning) {
  const auto* settings = broker.settings.get_if<AcmeRenewerConfig>();
  if (!settings) return Error{"broker " + broker.name + ": not an acme broker", {}, true};
  if (!context.identity) return Error{"broker " + broker.name + ": acme needs the host identity", {}, true};
  auto url = http::parse_url(settings->directory);
  if (!url) return Error{"broker " + broker.name + ": directory: " + url.error().message, {}, true};
  const auto& ch = settings->challenge;
  if (ch.type != "http-01" && ch.type != "dns-01")
    return Error{"broker " + broker.name + ": challenge.type must be http-01 or dns-01", {}, true};
  if (ch.type == "dns-01" && ch.hook.empty())
    return Error{"broker " + broker.name + ": dns-01 needs challenge.hook (argv)", {}, true};

  std::unique_ptr<AcmeRenewer> renewer(new AcmeRenewer(broker, context, tuning));
  auto jwk = acme::jwk_from_public_key_pem(context.identity->public_key_pem());
  if (!jwk) return with_context("broker " + broker.name, jwk.error());
  renewer->jwk_ = std::make_unique<acme::Jwk>(std::move(*jwk));
  auto client = http::Client::create(context.executor,
                                     http::ClientOptions{.ca_bundle = settings->ca_bundle,
                                                         .timeout = broker.timeout,
                                                         .user_agent = "certagent-acme"});
  if (!client) return Error{"broker " + broker.name + ": " + client.error().message, {}, true};
  renewer->client_ = std::move(*client);
  return renewer;
}

std::uint16_t AcmeRenewer::http01_port() const { return responder_ ? responder_->port() : 0; }

awaitable<void> AcmeRenewer::sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer timer(context_.executor);
  timer.expires_after(d);
  co_await timer.async_wait(kTuple);
}

awaitable<Result<>> AcmeRenewer::ensure_directory() {
  if (directory_) co_return Result<>{};
  auto res = co_await client_->get(config_.directory);
  if (!res) co_return with_context("directory", res.error());
  if (res->status != 200) {
    Error e = make_error("directory: HTTP " + std::to_string(res->status) + ": " + log::excerpt(res->body));
    e.retry_after = res->retry_after(clock_->now());
    co_return e;
  }
  boost::system::error_code ec;
  json::value v = json::parse(res->body, ec);
  if (ec || !v.is_object()) co_return make_error("directory: not JSON: " + log::excerpt(res->body));
  Directory d;
  d.new_nonce = json_string(v, "newNonce");
  d.new_account = json_string(v, "newAccount");
  d.new_order = json_string(v, "newOrder");
  d.renewal_info = json_string(v, "renewalInfo");
  if (const auto* meta = v.get_object().if_contains("meta"); meta && meta->is_object()) {
    d.terms_of_service = json_string(*meta, "termsOfService");
    if (const auto* ear = meta->get_object().if_contains("externalAccountRequired"); ear && ear->is_bool())
      d.external_account_required = ear->get_bool();
  }
  if (d.new_nonce.empty() || d.new_account.empty() || d.new_order.empty())
    co_return make_error("directory " + config_.directory + " is not an ACME directory (no newNonce/newAccount/newOrder)");
  directory_ = std::move(d);
  co_return Result<>{};
}

awaitable<Result<std::string>> AcmeRenewer::take_nonce() {
  if (!nonces_.empty()) {
    std::string n = std::move(nonces_.back());
    nonces_.pop_back();
    co_return Result<std::string>(boost::system::in_place_value, std::move(n));
  }
  http::Request head{.method = "HEAD", .url = directory_->new_nonce};
  ++stats_.nonce_fetches;
  auto res = co_await client_->send(std::move(head));
  if (!res) co_return with_context("newNonce", res.error());
  std::string nonce = res->header("Replay-Nonce");
  if (!valid_replay_nonce(nonce)) {
    Error e = make_error("newNonce: HTTP " + std::to_string(res->status) +
                         (nonce.empty() ? " without Replay-Nonce" : " with a Replay-Nonce that is not base64url"));
    e.retry_after = res->retry_after(clock_->now());
    co_return e;
  }
  co_return Result<std::string>(boost::system::in_place_value, std::move(nonce));
}

Error AcmeRenewer::step_error(const char* what, const Posted& posted) {
  Error e;
  e.retry_after = posted.response.retry_after(clock_->now());
  std::string status = "HTTP " + std::to_string(posted.response.status);
  if (posted.problem) {
    e.message = std::string(what) + ": " + status + ": " + posted.problem->describe();
    e.configuration = configuration_problem(posted.problem->type);
    if (e.configuration) {
      // The CA answered and refuses this request: say which part of ours it refuses.
      const std::string& t = posted.problem->type;
      e.cause = Cause::refused;
      e.reason = t == "externalAccountRequired" || t == "invalidContact" || t == "unsupportedContact" ||
                         t == "userActionRequired"
                     ? "account"
                     : t == "badSignatureAlgorithm" || t == "badPublicKey" ? "key" : "identifier";
      e.message += e.reason == "account"   ? " (fix the broker's account settings: eab, contact, or accept the CA's terms)"
                   : e.reason == "key"     ? " (set the certificate's key to a type this CA accepts)"
                                           : " (the CA will not certify these names: fix the certificate's names or "
                                             "the CA's policy)";
    }
    if (posted.problem->type == "rateLimited" && !e.retry_after) e.retry_after = std::chrono::seconds(60);
  } else {
    std::string ct = posted.response.header("Content-Type");
    e.message = std::string(what) + ": unexpected " + status + (ct.empty() ? "" : " (" + ct + ")") +
                (posted.response.body.empty() ? "" : ": " + log::excerpt(posted.response.body));
  }
  if (!e.configuration && posted.response.status >= 500) e.cause = Cause::unreachable;
  logger()->warn("event=acme_problem broker={} step={} status={} error={}", broker_name_, what,
                 posted.response.status, log::quote(e.message));
  return e;
}

awaitable<Result<AcmeRenewer::Posted>> AcmeRenewer::post(const std::string& url, std::string payload, bool use_jwk,
                                                         const char* what, Due due, std::string accept,
                                                         std::chrono::milliseconds after) {
  // A poll is signed while it waits (a TPM signature takes tens of milliseconds, as long as a
  // first poll interval), unless the wait is long enough for the server to forget the nonce.
  constexpr std::chrono::milliseconds kSignAheadAtMost{2000};
  const auto send_at = std::chrono::steady_clock::now() + after;
  if (after > kSignAheadAtMost) co_await sleep_for(after);
  for (int attempt = 0;; ++attempt) {
    auto nonce = co_await take_nonce();
    if (!nonce) co_return with_context(what, nonce.error());
    // One TPM2_Sign per JWS, queued on the identity's thread; the loop runs on meanwhile.
    auto to_sign = acme::jws_es256_input(*jwk_, use_jwk ? std::string_view{} : std::string_view(kid_), *nonce, url,
                                         payload);
    acme::Bytes digest = to_sign.digest;
    auto der = co_await identity_sign(*context_.identity, context_.executor, std::move(digest), due);
    if (!der) co_return with_context(what, with_context("signing the ACME request with the identity", der.error()));
    auto jws = acme::jws_es256_finish(to_sign, *der);
    if (!jws) co_return with_context(what, jws.error());
    http::Request request{.method = "POST", .url = url, .headers = {{"Content-Type", "application/jose+json"}},
                          .body = std::move(*jws)};
    if (!accept.empty()) request.headers.emplace_back("Accept", accept);
    const auto left = send_at - std::chrono::steady_clock::now();
    if (left > std::chrono::steady_clock::duration::zero())
      co_await sleep_for(std::chrono::ceil<std::chrono::milliseconds>(left));
    ++stats_.signed_requests;
    ++stats_.signed_by_step[what];
    auto res = co_await client_->send(std::move(request));
    if (!res) {
      directory_.reset();  // the server may be a new instance: fetch the directory again next time
      nonces_.clear();
      co_return with_context(what, res.error());
    }
    if (std::string n = res->header("Replay-Nonce"); valid_replay_nonce(n)) {
      if (nonces_.size() >= 8) nonces_.erase(nonces_.begin());
      nonces_.push_back(std::move(n));
    }
    Posted posted;
    posted.response = std::move(*res);
    std::string ct = posted.response.header("Content-Type");
    if (icontains(ct, "json")) {
      boost::system::error_code ec;
      posted.body = json::parse(posted.response.body, ec);
      if (ec) posted.body = nullptr;
    }
    if (posted.failed()) posted.problem = problem_from_json(posted.body);
    if (posted.failed() && posted.problem && posted.problem->type == "badNonce" &&
        attempt < tuning_.max_bad_nonce_retries) {
      ++stats_.bad_nonce_retries;
      logger()->debug("event=bad_nonce broker={} step={} attempt={}", broker_name_, what, attempt + 1);
      continue;
    }
    co_return posted;
  }
}

Result<std::string> AcmeRenewer::eab_member() {
  const auto& d = *directory_;
  auto binding = [&]() -> Result<std::string> {
    // eab_binding asks the identity for the MAC; make sure the key is there (imported from the
    // file when enroll did not run) by computing one MAC through broker_hmac first.
    std::string name = acme_eab_key_name(broker_name_);
    static constexpr std::uint8_t kProbe[] = {0};
    auto probe = broker_hmac(*context_.identity, name, config_.eab_hmac_key_file, parse_eab_key_file_text, kProbe);
    if (!probe) return probe.error();
    return acme::eab_binding(*context_.identity, name, *config_.eab_kid, d.new_account, *jwk_);
  };
  auto b = binding();
  if (!b) return config_error(Cause::local_config, "secret", "external account binding: " + b.error().message);
  return b;
}

awaitable<Result<>> AcmeRenewer::ensure_account(Due due) {
  if (!kid_.empty()) co_return Result<>{};
  json::object payload;
  payload["termsOfServiceAgreed"] = true;
  if (!config_.contact.empty()) payload["contact"] = json::array{json::value(config_.contact)};
  if (config_.eab_kid) {
    auto eab = eab_member();
    if (!eab) co_return eab.error();
    payload["externalAccountBinding"] = json::parse(*eab);
  } else if (directory_->external_account_required) {
    co_return config_error(Cause::refused, "account",
                           "the ACME server requires External Account Binding: set eab.kid and eab.hmac_key_file");
  }
  auto posted = co_await post(directory_->new_account, json::serialize(payload), true, "newAccount", due);
  if (!posted) co_return posted.error();
  if (posted->failed()) {
    Error e = step_error("newAccount", *posted);
    // A server that refuses our account (bad EAB, malformed contact) will refuse it again.
    if (posted->problem && (posted->problem->type == "unauthorized" || posted->problem->type == "malformed")) {
      e.configuration = true;
      e.cause = Cause::refused;
      e.reason = "account";
      e.message += " (the CA refuses our account: check eab.kid and the EAB key sealed by `certagent enroll`, "
                   "and contact)";
    }
    co_return e;
  }
  std::string location = posted->response.header("Location");
  if (location.empty()) co_return make_error("newAccount: no Location header in the answer");
  // The account URL goes into every later request's JWS (kid): only a URL we could ask.
  if (auto u = http::parse_url(location); !u)
    co_return make_error("newAccount: the Location header is not an account URL: " + u.error().message);
  std::string status = json_string(posted->body, "status");
  if (!status.empty() && status != "valid")
    co_return config_error(Cause::refused, "account",
                           "newAccount: the account is " + status +
                               " (deactivated or revoked by the CA; its key is this host's identity): ask the "
                               "CA's operator to reinstate it");
  kid_ = location;
  ++stats_.accounts_registered;
  logger()->info("event=acme_account broker={} account={} created={}", broker_name_, log::quote(kid_),
                 posted->response.status == 201);
  co_return Result<>{};
}

awaitable<Result<>> AcmeRenewer::run_hook(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) co_return Error{"dns-01 hook " + log::quote(argv[0]) + ": " + std::strerror(rc), {}, true};

  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) {
    asio::posix::stream_descriptor fd(context_.executor, pidfd);
    asio::steady_timer timer(context_.executor);
    bool killed = false;
    timer.expires_after(std::max<std::chrono::milliseconds>(timeout_, std::chrono::minutes(2)));
    timer.async_wait([pid, &killed](boost::system::error_code ec) {
      if (!ec) {
        killed = true;
        ::kill(pid, SIGKILL);
      }
    });
    co_await fd.async_wait(asio::posix::stream_descriptor::wait_read, kTuple);
    timer.cancel();
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (killed) co_return make_error("dns-01 hook " + log::quote(argv[0]) + " timed out");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      co_return make_error("dns-01 hook " + log::quote(argv[0]) + " " + argv[1] + " failed with status " +
                           std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)));
    co_return Result<>{};
  }
  // No pidfd (old kernel): wait off the event loop is not available here, so block briefly.
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    co_return make_error("dns-01 hook " + log::quote(argv[0]) + " failed");
  co_return Result<>{};
}

awaitable<Result<>> AcmeRenewer::authorize(const std::vector<std::string>& authorization_urls, Due due) {
  struct Pending {
    std::string authz_url;
    std::string name;
    std::string token;
    std::vector<std::string> cleanup;  // dns-01 hook argv
    bool valid{false};                 // the challenge's answer already said so: no poll
    std::optional<std::chrono::seconds> retry_after;  // of the last answer about it
  };
  std::vector<Pending> pending;
  const std::string& want = config_.challenge.type;

  auto cleanup = [&]() -> awaitable<void> {
    for (auto& p : pending) {
      if (responder_ && !p.token.empty()) responder_->remove(p.token);
      if (!p.cleanup.empty()) {
        auto r = co_await run_hook(p.cleanup);
        if (!r) logger()->warn("event=dns01_cleanup_failed broker={} error={}", broker_name_, log::quote(r.error().message));
      }
    }
  };

  auto start_all = [&]() -> awaitable<Result<>> {
    for (const auto& url : authorization_urls) {
      auto posted = co_await post(url, std::string(), false, "authorization", due);
      if (!posted) co_return posted.error();
      if (posted->failed()) co_return step_error("authorization", *posted);
      const json::value& authz = posted->body;
      std::string status = json_string(authz, "status");
      std::string name;
      if (const auto* o = authz.if_object())
        if (const auto* ident = o->if_contains("identifier")) name = json_string(*ident, "value");
      if (status == "valid") continue;  // reused authorization
      if (status != "pending")
        co_return make_error("authorization for " + name + " is " + (status.empty() ? "missing a status" : status));
      const json::value* chosen = nullptr;
      std::string offered;
      if (const auto* o = authz.if_object())
        if (const auto* chs = o->if_contains("challenges"); chs && chs->is_array())
          for (const auto& ch : chs->get_array()) {
            std::string t = json_string(ch, "type");
            offered += (offered.empty() ? "" : ",") + t;
            if (t == want) chosen = &ch;
          }
      if (!chosen)
        co_return Error{"the CA offers no " + want + " challenge for " + name + " (offers: " + offered + ")", {}, true};
      std::string token = json_string(*chosen, "token");
      std::string challenge_url = json_string(*chosen, "url");
      if (token.empty() || challenge_url.empty() ||
          token.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != std::string::npos)
        co_return make_error("authorization for " + name + ": malformed " + want + " challenge");
      std::string key_auth = acme::key_authorization(token, *jwk_);
      Pending p{url, name, {}, {}};
      if (want == "http-01") {
        if (!responder_) {
          auto r = acme::Http01Responder::start(context_.executor, config_.challenge.listen);
          if (!r) co_return r.error();
          responder_ = std::move(*r);
        }
        responder_->add(token, key_auth);
        p.token = token;
        pending.push_back(p);
      } else {
        std::string base = name.rfind("*.", 0) == 0 ? name.substr(2) : name;
        std::string fqdn = "_acme-challenge." + base;
        std::string txt = acme::dns01_txt_value(key_auth);
        auto argv = config_.challenge.hook;
        argv.insert(argv.end(), {"present", fqdn, txt});
        auto cleanup_argv = config_.challenge.hook;
        cleanup_argv.insert(cleanup_argv.end(), {"cleanup", fqdn, txt});
        auto r = co_await run_hook(argv);
        p.cleanup = cleanup_argv;  // also after a failed present: it may have half-published
        pending.push_back(p);
        if (!r) co_return r.error();
      }
      Pending& started = pending.back();
      json::value challenge = *chosen;
      if (json_string(challenge, "status") == "pending") {
        auto answered = co_await post(challenge_url, std::string("{}"), false, "challenge", due);
        if (!answered) co_return answered.error();
        if (answered->failed()) co_return step_error("challenge", *answered);
        challenge = std::move(answered->body);
        started.retry_after = answered->response.retry_after(clock_->now());
      }
      // The challenge's answer says how its validation stands: valid needs no poll, invalid
      // no further question.
      const std::string challenge_status = json_string(challenge, "status");
      if (challenge_status == "valid") started.valid = true;
      if (challenge_status == "invalid") {
        std::string why;
        if (const auto* o = challenge.if_object(); o && o->contains("error"))
          if (auto prob = problem_from_json(o->at("error"))) why = ": " + prob->describe();
        co_return make_error(want + " validation of " + name + " failed (invalid)" + why);
      }
      if (not_yet(challenge_status)) ++stats_.not_yet_answers;
    }
    co_return Result<>{};
  };

  auto wait_all = [&]() -> awaitable<Result<>> {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (auto& p : pending) {
      if (p.valid) continue;
      auto interval = tuning_.first_poll;
      for (;;) {
        auto wait = poll_wait(p.retry_after, interval, deadline);
        if (!wait) {
          Error e = make_error(want + " validation of " + p.name + " still pending" +
                               not_done_text(p.retry_after, timeout_, deadline));
          e.retry_after = p.retry_after;
          co_return e;
        }
        interval = std::min(interval * 2, tuning_.max_poll);
        auto posted = co_await post(p.authz_url, std::string(), false, "authorization poll", due, {}, *wait);
        if (!posted) co_return posted.error();
        if (posted->failed()) co_return step_error("authorization poll", *posted);
        std::string status = json_string(posted->body, "status");
        if (status == "valid") break;
        if (status != "pending") {
          std::string why;
          if (const auto* o = posted->body.if_object())
            if (const auto* chs = o->if_contains("challenges"); chs && chs->is_array())
              for (const auto& ch : chs->get_array())
                if (const auto* co = ch.if_object(); co && co->contains("error"))
                  if (auto prob = problem_from_json(co->at("error"))) why = ": " + prob->describe();
          co_return make_error(want + " validation of " + p.name + " failed (" + status + ")" + why);
        }
        ++stats_.not_yet_answers;
        p.retry_after = posted->response.retry_after(clock_->now());
      }
    }
    co_return Result<>{};
  };

  auto started = co_await start_all();
  Result<> result = started;
  if (started) result = co_await wait_all();
  co_await cleanup();
  co_return result;
}

awaitable<Result<AcmeRenewer::Downloaded>> AcmeRenewer::download_chain(const std::string& certificate_url, Due due) {
  auto fetch = [&](const std::string& url) -> awaitable<Result<Posted>> {
    auto posted = co_await post(url, std::string(), false, "certificate download", due,
                                std::string("application/pem-certificate-chain"));
    if (!posted) co_return posted.error();
    if (posted->failed() || posted->response.status != 200) co_return step_error("certificate download", *posted);
    std::string error;
    auto certs = read_pem_chain(posted->response.body, error);
    if (certs.empty()) co_return make_error("certificate download: " + error);
    co_return posted;
  };
  auto first = co_await fetch(certificate_url);
  if (!first) co_return first.error();
  const auto chosen = [](Posted& posted) {
    return Result<Downloaded>(boost::system::in_place_value,
                              Downloaded{std::move(posted.response.body), posted.response.date()});
  };
  if (config_.preferred_chain.empty()) co_return chosen(*first);

  auto top_issuer = [](const std::string& pem) {
    std::string error;
    auto certs = read_pem_chain(pem, error);
    return certs.empty() ? std::string() : issuer_cn(certs.back().get());
  };
  if (top_issuer(first->response.body) == config_.preferred_chain) co_return chosen(*first);
  for (const auto& link : alternate_links(first->response.header_values("Link"))) {
    auto alt = co_await fetch(absolute(link, certificate_url));
    if (!alt) {
      logger()->warn("event=alternate_chain_failed broker={} error={}", broker_name_, log::quote(alt.error().message));
      continue;
    }
    if (top_issuer(alt->response.body) == config_.preferred_chain) {
      logger()->debug("event=alternate_chain broker={} issuer={}", broker_name_, log::quote(config_.preferred_chain));
      co_return chosen(*alt);
    }
  }
  logger()->info("event=preferred_chain_missing broker={} preferred={} using={}", broker_name_,
                 log::quote(config_.preferred_chain), log::quote(top_issuer(first->response.body)));
  co_return chosen(*first);
}

awaitable<std::optional<SystemTime>> AcmeRenewer::renewal_hint(const std::string& leaf_pem) {
  if (!directory_ || directory_->renewal_info.empty()) co_return std::nullopt;
  auto id = ari_cert_id(leaf_pem);
  if (!id) co_return std::nullopt;
  std::string url = directory_->renewal_info;
  if (url.back() != '/') url += '/';
  auto res = co_await client_->get(url + *id);
  if (!res || res->status != 200) {
    logger()->debug("event=ari_unavailable broker={} status={}", broker_name_, res ? res->status : 0);
    co_return std::nullopt;
  }
  boost::system::error_code ec;
  json::value v = json::parse(res->body, ec);
  const json::value* window = nullptr;
  if (!ec && v.is_object()) window = v.get_object().if_contains("suggestedWindow");
  if (!window) co_return std::nullopt;
  auto start = parse_rfc3339(json_string(*window, "start"));
  auto end = parse_rfc3339(json_string(*window, "end"));
  if (!start || !end || *end < *start) co_return std::nullopt;
  // RFC 9773 §4.2: a uniformly random point in the window spreads the fleet's renewals.
  auto span = std::chrono::duration_cast<std::chrono::milliseconds>(*end - *start).count();
  std::uniform_int_distribution<std::int64_t> pick(0, std::max<std::int64_t>(span, 0));
  co_return *start + std::chrono::milliseconds(pick(rng_));
}

awaitable<Result<IssueResult>> AcmeRenewer::issue_once(const IssueRequest& request, bool& stale_account) {
  stale_account = false;
  if (auto r = co_await ensure_directory(); !r) co_return r.error();
  bool fresh_account = kid_.empty();
  const Due due = tpm_deadline(request, clock_->now());
  if (auto r = co_await ensure_account(due); !r) co_return r.error();

  // Identifiers: every DNS name and IP (and the CN, which must be one of them for ACME).
  json::array identifiers;
  std::vector<std::string> seen;
  auto add = [&](const std::string& value) {
    if (value.empty() || std::find(seen.begin(), seen.end(), value) != seen.end()) return;
    seen.push_back(value);
    identifiers.push_back(json::object{{"type", is_ip(value) ? "ip" : "dns"}, {"value", value}});
  };
  add(request.common_name);
  for (const auto& d : request.dns_names) add(d);
  for (const auto& ip : request.ip_addresses) add(ip);

  std::string replaces;
  if (!directory_->renewal_info.empty() && !request.previous_cert_pem.empty())
    if (auto id = ari_cert_id(request.previous_cert_pem)) replaces = *id;

  Posted order;
  for (int attempt = 0;; ++attempt) {
    json::object payload;
    payload["identifiers"] = identifiers;
    if (dates_supported_ && request.lifetime.count() > 0) {
      SystemTime now = clock_->now();
      payload["notBefore"] = format_rfc3339(now);
      payload["notAfter"] = format_rfc3339(std::chrono::floor<std::chrono::seconds>(now) +
                                           std::chrono::duration_cast<std::chrono::seconds>(request.lifetime));
    }
    if (!replaces.empty()) payload["replaces"] = replaces;
    auto posted = co_await post(directory_->new_order, json::serialize(payload), false, "newOrder", due);
    if (!posted) co_return posted.error();
    if (!posted->failed()) {
      order = std::move(*posted);
      break;
    }
    const auto& prob = posted->problem;
    if (prob && attempt < 2) {
      if (dates_supported_ && prob->type == "malformed" &&
          (icontains(prob->detail, "notbefore") || icontains(prob->detail, "notafter") ||
           icontains(prob->detail, "not before") || icontains(prob->detail, "not after"))) {
        logger()->info("event=acme_no_validity_dates broker={} detail={}", broker_name_, log::quote(prob->detail));
        dates_supported_ = false;
        continue;
      }
      if (!replaces.empty() && (prob->type == "alreadyReplaced" || icontains(prob->detail, "replaces"))) {
        replaces.clear();
        continue;
      }
    }
    if (prob && !fresh_account &&
        (prob->type == "accountDoesNotExist" || prob->type == "unauthorized" || prob->type == "malformed")) {
      stale_account = true;
    }
    co_return step_error("newOrder", *posted);
  }

  std::string order_url = order.response.header("Location");
  if (order_url.empty()) co_return make_error("newOrder: no Location header in the answer");
  if (auto u = http::parse_url(order_url); !u)
    co_return make_error("newOrder: the Location header is not an order URL: " + u.error().message);
  std::string finalize_url = json_string(order.body, "finalize");
  std::vector<std::string> authz_urls;
  if (const auto* o = order.body.if_object())
    if (const auto* a = o->if_contains("authorizations"); a && a->is_array())
      for (const auto& u : a->get_array())
        if (u.is_string()) authz_urls.emplace_back(u.get_string());
  std::string status = json_string(order.body, "status");
  if (finalize_url.empty() || status.empty()) co_return make_error("newOrder: the answer is not an order");
  if (status == "invalid") co_return make_error("newOrder: the new order is invalid");

  if (status == "pending") {
    if (auto r = co_await authorize(authz_urls, due); !r) co_return r.error();
  }

  // CSR as base64url DER.
  crypto::BioPtr bio(BIO_new_mem_buf(request.csr_pem.data(), static_cast<int>(request.csr_pem.size())));
  crypto::X509ReqPtr csr(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (!csr) {
    ERR_clear_error();
    co_return make_error("finalize: the CSR is not PEM");
  }
  unsigned char* der = nullptr;
  int der_len = i2d_X509_REQ(csr.get(), &der);
  if (der_len <= 0) co_return make_error("finalize: cannot encode the CSR");
  std::string csr_b64 = acme::base64url(std::span<const std::uint8_t>(der, static_cast<std::size_t>(der_len)));
  OPENSSL_free(der);

  json::value current = order.body;
  // The Retry-After of the last answer about the order: when to ask about it again.
  std::optional<std::chrono::seconds> retry_after = order.response.retry_after(clock_->now());
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  auto interval = tuning_.first_poll;
  // Right after our authorizations the order is ready (or about to be): finalize at once and
  // fall back to polling on orderNotReady, instead of spending a poll to see "ready".
  bool try_finalize = status == "pending" || status == "ready";
  for (;;) {
    status = json_string(current, "status");
    if (status == "valid") break;
    if (status == "invalid") {
      std::string why;
      if (const auto* o = current.if_object(); o && o->contains("error"))
        if (auto prob = problem_from_json(o->at("error"))) why = ": " + prob->describe();
      co_return make_error("order is invalid" + why);
    }
    if (status == "ready" || try_finalize) {
      try_finalize = false;
      json::object finalize_payload;
      finalize_payload["csr"] = csr_b64;
      auto posted = co_await post(finalize_url, json::serialize(finalize_payload), false, "finalize", due);
      if (!posted) co_return posted.error();
      retry_after = posted->response.retry_after(clock_->now());
      if (posted->failed()) {
        // orderNotReady: an authorization is not valid yet; poll the order.
        if (!(posted->problem && posted->problem->type == "orderNotReady")) co_return step_error("finalize", *posted);
      } else {
        current = std::move(posted->body);
        status = json_string(current, "status");
        if (status == "valid" || status == "invalid") continue;  // no poll needed
        if (not_yet(status)) ++stats_.not_yet_answers;
      }
    } else if (!not_yet(status)) {
      co_return make_error("order has unexpected status " + log::quote(status));
    }
    auto wait = poll_wait(retry_after, interval, deadline);
    if (!wait) {
      Error e = make_error("order still " + status + not_done_text(retry_after, timeout_, deadline));
      e.retry_after = retry_after;
      co_return e;
    }
    interval = std::min(interval * 2, tuning_.max_poll);
    auto posted = co_await post(order_url, std::string(), false, "order poll", due, {}, *wait);
    if (!posted) co_return posted.error();
    if (posted->failed()) co_return step_error("order poll", *posted);
    current = std::move(posted->body);
    retry_after = posted->response.retry_after(clock_->now());
    if (not_yet(json_string(current, "status"))) ++stats_.not_yet_answers;
  }

  std::string certificate_url = json_string(current, "certificate");
  if (certificate_url.empty()) co_return make_error("order is valid but names no certificate URL");
  auto chain = co_await download_chain(certificate_url, due);
  if (!chain) co_return chain.error();

  IssueResult result;
  result.chain_pem = std::move(chain->chain_pem);
  // The CA's clock as it sent the certificate: the loop measures clock skew from it.
  result.broker_time = chain->broker_time;
  result.renew_hint = co_await renewal_hint(result.chain_pem);
  result.state["acme_order_url"] = order_url;
  result.state["acme_certificate_url"] = certificate_url;
  co_return result;
}

awaitable<Result<IssueResult>> AcmeRenewer::issue(IssueRequest request) {
  auto fail = [&](Error e) { return with_context("acme broker " + broker_name_, std::move(e)); };
  if (!request.uris.empty()) co_return fail(Error{"ACME cannot certify URI names; use another broker", {}, true});
  if (config_.challenge.type == "dns-01" && !request.ip_addresses.empty())
    co_return fail(Error{"dns-01 cannot validate IP addresses; use http-01", {}, true});
  if (request.dns_names.empty() && request.ip_addresses.empty() && request.common_name.empty())
    co_return fail(Error{"nothing to certify: no names", {}, true});

  bool stale_account = false;
  auto result = co_await issue_once(request, stale_account);
  if (!result && stale_account) {
    // The CA lost or refused our account (e.g. a test CA restarted): create it again, once.
    logger()->warn("event=acme_account_recreate broker={} account={} error={}", broker_name_, log::quote(kid_),
                   log::quote(result.error().message));
    kid_.clear();
    result = co_await issue_once(request, stale_account);
  }
  if (!result) co_return fail(result.error());
  ++stats_.issued;
  co_return result;
}

awaitable<Result<>> AcmeRenewer::probe() {
  auto res = co_await client_->get(config_.directory);
  if (res && res->status == 200) co_return Result<>{};
  directory_.reset();
  if (!res) co_return res.error();
  Error e = make_error("GET " + config_.directory + ": HTTP " + std::to_string(res->status));
  // A directory URL the server does not know is ours to fix; anything else is the server's.
  if (res->status == 404)
    co_return config_error(Cause::local_config, "url",
                           e.message + ": the broker's directory must be the ACME server's directory URL");
  e.cause = Cause::unreachable;
  co_return e;
}

}  // namespace certagent::renewers
