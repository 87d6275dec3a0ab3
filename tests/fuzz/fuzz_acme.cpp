// ACME (RFC 8555) through the real renewer: an in-process server answers the AcmeRenewer's
// requests (directory GET, newNonce HEAD, signed POSTs, ARI GET) with the input's segments
// (separated by "\n=====\n"), one per request, each a whole HTTP response; "PPPPP" in a segment
// becomes the server's port, so committed answers can name their own URLs. So the directory,
// account, order, authorization, challenge and problem JSON and the Location, Link,
// Retry-After and Replay-Nonce headers all come from the input.
// The first byte picks the setup: bit 0 External Account Binding, bit 1 a preferred chain
// (alternate Link chains are fetched), bit 2 a previous certificate (ARI "replaces"), bit 3 a
// second issuance with the same renewer (what the first one learnt is reused). With bit 7 set
// the rest feeds the JWS/EAB code directly (see jws_functions below).
//
// Invariants, checked by the server on every request and after every issuance:
// - every signed POST is a flattened ES256 JWS by the identity over its url (the request's own
//   URL), with exactly one of jwk (newAccount only) and kid; the nonce is base64url and one the
//   server handed out (Replay-Nonce), used at most as often as handed out;
// - kid is an account URL from an accepted newAccount answer: a rejected answer leaves no
//   account that a later request would use; with EAB, newAccount carries an HS256 binding by the
//   EAB key over our JWK for that URL;
// - finalize is sent only for an order that is ready, or pending with every authorization
//   last answered valid;
// - no poll of an order or authorization comes sooner than the Retry-After (seconds) of the
//   previous answer about it;
// - neither the account key nor the EAB key is in any request body or error message;
// - an issuance that succeeds returns PEM certificates and names the order it came from; every
//   call ends within its timeout.

#include "core/clock.h"
#include "core/crypto/keys.h"
#include "core/crypto/csr.h"
#include "core/crypto/ossl_ptr.h"
#include "core/http/client.h"
#include "renewers/acme_config.h"
#include "renewers/acme_jws.h"
#include "renewers/acme_renewer.h"
#include "tests/fuzz/fuzz_async.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/support/software_identity.h"
#include "tests/support/test_pki.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json.hpp>

#include <stdlib.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;
namespace json = boost::json;
using asio::ip::tcp;
using namespace std::chrono_literals;
using namespace certagent;
namespace acme = certagent::renewers::acme;

namespace {

constexpr std::string_view kSeparator = "\n=====\n";
constexpr std::string_view kBroker = "acme";
constexpr std::string_view kEabKid = "fuzz-eab-kid";
constexpr std::string_view kEabKeyB64 = "ZnV6ei1lYWItaG1hYy1rZXktMzItYnl0ZXMtbG9uZyE";  // 32 bytes
constexpr std::size_t kMaxInput = 64 * 1024;

// What the server has told the client so far in this input, to judge its requests by.
struct Model {
  std::map<std::string, int> nonces;    // Replay-Nonce values handed out, and how often
  std::set<std::string> accounts;       // Location of each accepted newAccount answer
  // The current order, as the newOrder answer, order polls and finalize answers describe it.
  std::string order_url, finalize_url, order_status;
  std::vector<std::string> authorizations;
  std::map<std::string, bool> authz_valid;                     // by authorization URL
  std::map<std::string, std::vector<std::string>> challenge_of;  // challenge URL -> authorizations
  std::map<std::string, std::chrono::steady_clock::time_point> not_before;  // Retry-After, by URL
  void new_order() {
    order_url.clear();
    finalize_url.clear();
    order_status.clear();
    authorizations.clear();
    authz_valid.clear();
    challenge_of.clear();
    not_before.clear();
  }
};

struct Harness {
  asio::io_context io;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::string port;  // 5 digits: replaces "PPPPP" without changing any length
  std::string base_url;
  test::SoftwareIdentity identity;
  crypto::EvpPkeyPtr public_key;
  acme::Jwk jwk;
  std::vector<std::string> secrets;  // the account key's scalar and the EAB key, in every encoding
  std::vector<std::uint8_t> eab_key;
  SystemClock clock;
  renewers::IssueRequest request;
  std::string previous_cert_pem;
  std::filesystem::path dir, ca_bundle;
  bool eab{false};
  // This input's answers, in order; the next one to hand out.
  std::string_view input;
  std::vector<std::string> segments;
  std::size_t next{0};
  std::size_t sessions{0};
  Model model;
};
Harness* harness = nullptr;

std::string text(const std::vector<std::uint8_t>& b) { return std::string(b.begin(), b.end()); }

std::string hex(std::span<const std::uint8_t> b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (auto c : b) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

// A secret the input itself holds is the server's echo, not a leak (the fuzzer can learn a
// constant EAB key from the comparisons here).
void no_secret_in(std::string_view where, std::string_view text) {
  for (const auto& s : harness->secrets)
    FUZZ_REQUIRE(text.find(s) == std::string_view::npos || harness->input.find(s) != std::string_view::npos,
                 std::string("a key in ") + std::string(where));
}

bool is_base64url(std::string_view s) {
  return !s.empty() && s.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
                           std::string_view::npos;
}

std::string json_string(const json::value& v, std::string_view key) {
  if (const auto* o = v.if_object())
    if (const auto* s = o->if_contains(key))
      if (const auto* str = s->if_string()) return std::string(*str);
  return {};
}

std::optional<json::value> parse_json(std::string_view s) {
  boost::system::error_code ec;
  json::value v = json::parse(s, ec);
  if (ec) return std::nullopt;
  return v;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

bool icontains(std::string_view haystack, std::string_view needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
         }) != haystack.end();
}

// ES256 over `input`: `sig` is r||s.
bool verify_es256(std::string_view input, const std::vector<std::uint8_t>& sig) {
  if (sig.size() != 64) return false;
  crypto::BignumPtr r(BN_bin2bn(sig.data(), 32, nullptr)), s(BN_bin2bn(sig.data() + 32, 32, nullptr));
  ECDSA_SIG* es = ECDSA_SIG_new();
  ECDSA_SIG_set0(es, r.release(), s.release());
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  const bool ok = der_len > 0 &&
                  EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, harness->public_key.get()) == 1 &&
                  EVP_DigestVerify(ctx.get(), der, static_cast<std::size_t>(der_len),
                                   reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
  OPENSSL_free(der);
  return ok;
}

std::vector<std::uint8_t> hs256(std::string_view input) {
  std::vector<std::uint8_t> mac(32);
  unsigned len = 0;
  HMAC(EVP_sha256(), harness->eab_key.data(), static_cast<int>(harness->eab_key.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac.data(), &len);
  mac.resize(len);
  return mac;
}

struct Jws {
  json::object header;
  std::string payload;  // decoded; empty: POST-as-GET
};

// A flattened JWS JSON object: its parts, or an invariant failure.
Jws read_jws(std::string_view body, std::string_view what) {
  auto v = parse_json(body);
  FUZZ_REQUIRE(v && v->is_object(), std::string(what) + ": not a JWS JSON object: " + std::string(body));
  const auto& o = v->get_object();
  for (const char* member : {"protected", "payload", "signature"})
    FUZZ_REQUIRE(o.contains(member) && o.at(member).is_string(), std::string(what) + ": no " + member);
  const std::string protected_b64(o.at("protected").get_string());
  const std::string payload_b64(o.at("payload").get_string());
  auto header = acme::base64url_decode(protected_b64);
  auto payload = acme::base64url_decode(payload_b64);
  auto signature = acme::base64url_decode(std::string_view(o.at("signature").get_string()));
  FUZZ_REQUIRE(header && payload && signature, std::string(what) + ": a part is not base64url");
  auto h = parse_json(text(*header));
  FUZZ_REQUIRE(h && h->is_object(), std::string(what) + ": the protected header is not a JSON object: " + text(*header));
  Jws out{h->get_object(), text(*payload)};
  if (what == std::string_view("eab")) {
    FUZZ_REQUIRE(*signature == hs256(protected_b64 + "." + payload_b64), "the EAB MAC does not verify");
  } else {
    FUZZ_REQUIRE(verify_es256(protected_b64 + "." + payload_b64, *signature), std::string(what) + ": the signature does not verify");
  }
  return out;
}

// What the client will make of an answer, as far as the model needs it: Beast parses it as
// the client does (same limits), the body is JSON when the Content-Type says so.
struct Answer {
  bool parsed{false};
  unsigned status{0};
  std::vector<std::pair<std::string, std::string>> headers;
  std::optional<json::value> body;
  std::string first(std::string_view name) const {
    for (const auto& [k, v] : headers)
      if (iequals(k, name)) return v;
    return {};
  }
  bool ok() const { return parsed && status < 400; }
  std::string status_member() const { return body ? json_string(*body, "status") : std::string(); }
};

Answer read_answer(const std::string& raw, bool head, bool always_json) {
  Answer a;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(1024 * 1024);
  parser.header_limit(64 * 1024);
  if (head) parser.skip(true);
  parser.eager(true);
  boost::system::error_code ec;
  parser.put(asio::buffer(raw), ec);
  if (!ec && !parser.is_done()) parser.put_eof(ec);
  if (ec || !parser.is_done()) return a;
  const auto& msg = parser.get();
  a.parsed = true;
  a.status = msg.result_int();
  for (const auto& f : msg) a.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
  if (always_json || icontains(a.first("Content-Type"), "json")) a.body = parse_json(msg.body());
  return a;
}

// Retry-After in seconds (the date form is left alone: it depends on the clock).
std::optional<std::chrono::seconds> retry_seconds(const Answer& a) {
  const std::string v = a.first("Retry-After");
  if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::chrono::seconds(std::stoll(v));
}

bool is_poll_target(const std::string& url) {
  const auto& m = harness->model;
  if (m.order_status == "valid") return false;  // then it is the certificate download
  if (url == m.order_url) return true;
  return std::count(m.authorizations.begin(), m.authorizations.end(), url) == 1;
}

// Checks one request against the model, before it is answered.
void check_request(const bhttp::request<bhttp::string_body>& req) {
  no_secret_in("a request body", req.body());
  if (req.method() != bhttp::verb::post) return;
  Model& m = harness->model;
  const Jws jws = read_jws(req.body(), "a signed request");
  const std::string url = json_string(jws.header, "url");
  const std::string nonce = json_string(jws.header, "nonce");
  FUZZ_REQUIRE(json_string(jws.header, "alg") == "ES256", "alg is not ES256");
  auto target = http::parse_url(url);
  FUZZ_REQUIRE(target && target->target == std::string(req.target()), "the JWS url is not the request's: " + url);
  FUZZ_REQUIRE(is_base64url(nonce), "a nonce that is not base64url: " + nonce);
  auto handed = m.nonces.find(nonce);
  FUZZ_REQUIRE(handed != m.nonces.end() && handed->second > 0, "a nonce the server did not hand out (or reused): " + nonce);
  --handed->second;
  const bool has_jwk = jws.header.contains("jwk");
  const bool has_kid = jws.header.contains("kid");
  FUZZ_REQUIRE(has_jwk != has_kid, "not exactly one of jwk and kid");
  auto payload = jws.payload.empty() ? std::optional<json::value>() : parse_json(jws.payload);
  FUZZ_REQUIRE(jws.payload.empty() || (payload && payload->is_object()), "a payload that is not a JSON object");
  const bool new_account = payload && payload->get_object().contains("termsOfServiceAgreed");
  if (has_jwk) {
    FUZZ_REQUIRE(new_account, "jwk in a request other than newAccount");
    FUZZ_REQUIRE(jws.header.at("jwk") == json::parse(harness->jwk.json), "a jwk that is not the identity's");
  } else {
    const std::string kid = json_string(jws.header, "kid");
    FUZZ_REQUIRE(m.accounts.count(kid) == 1, "kid is not an account URL the server accepted: " + kid);
  }
  if (new_account && harness->eab) {
    const auto* binding = payload->get_object().if_contains("externalAccountBinding");
    FUZZ_REQUIRE(binding, "newAccount without the EAB binding");
    const Jws eab = read_jws(json::serialize(*binding), "eab");
    FUZZ_REQUIRE(json_string(eab.header, "alg") == "HS256" && json_string(eab.header, "kid") == kEabKid &&
                     json_string(eab.header, "url") == url && eab.header.size() == 3,
                 "EAB protected header: " + json::serialize(eab.header));
    FUZZ_REQUIRE(eab.payload == harness->jwk.json, "the EAB payload is not our JWK");
  }
  if (payload && payload->get_object().contains("identifiers")) m.new_order();
  if (payload && payload->get_object().contains("csr")) {
    FUZZ_REQUIRE(url == m.finalize_url, "finalize to a URL that is not the order's: " + url);
    bool all_valid = true;
    for (const auto& a : m.authorizations) all_valid = all_valid && m.authz_valid[a];
    FUZZ_REQUIRE(m.order_status == "ready" || (m.order_status == "pending" && all_valid),
                 "finalize of an order that is " + m.order_status + " without every authorization valid");
  }
  // (An order URL that is also an authorization's is left alone: its first fetch is no poll.)
  const bool ambiguous = std::count(m.authorizations.begin(), m.authorizations.end(), m.order_url) != 0;
  if (jws.payload.empty() && is_poll_target(url) && !ambiguous) {
    if (auto nb = m.not_before.find(url); nb != m.not_before.end())
      FUZZ_REQUIRE(std::chrono::steady_clock::now() >= nb->second, "a poll sooner than Retry-After: " + url);
  }
}

// Updates the model with the answer a request got.
void learn(const bhttp::request<bhttp::string_body>& req, const std::string& raw) {
  Model& m = harness->model;
  const bool post = req.method() == bhttp::verb::post;
  const Answer a = read_answer(raw, req.method() == bhttp::verb::head, !post);
  if (!a.parsed) return;
  for (const auto& [k, v] : a.headers)
    if (iequals(k, "Replay-Nonce")) ++m.nonces[v];
  if (!post) return;
  const Jws jws = read_jws(req.body(), "a signed request");
  const std::string url = json_string(jws.header, "url");
  const auto payload = jws.payload.empty() ? std::optional<json::value>() : parse_json(jws.payload);
  const auto& object = payload ? payload->get_object() : json::object();
  const auto after = retry_seconds(a);
  auto retry = [&](const std::string& about) {
    if (after) m.not_before[about] = std::chrono::steady_clock::now() + *after;
  };
  if (object.contains("termsOfServiceAgreed")) {
    if (a.ok())
      for (const auto& [k, v] : a.headers)
        if (iequals(k, "Location")) m.accounts.insert(v);
    return;
  }
  if (object.contains("identifiers")) {
    if (!a.ok() || !a.body) return;
    m.order_url = a.first("Location");
    m.finalize_url = json_string(*a.body, "finalize");
    m.order_status = a.status_member();
    if (const auto* o = a.body->if_object())
      if (const auto* list = o->if_contains("authorizations"); list && list->is_array())
        for (const auto& u : list->get_array())
          if (u.is_string()) m.authorizations.emplace_back(u.get_string());
    retry(m.order_url);
    return;
  }
  if (object.contains("csr")) {
    retry(m.order_url);
    if (a.ok() && a.body) m.order_status = a.status_member();
    return;
  }
  if (!jws.payload.empty()) {  // "{}": a challenge
    for (const auto& authz : m.challenge_of[url]) {
      retry(authz);
      if (a.ok() && a.body && a.status_member() == "valid") m.authz_valid[authz] = true;
    }
    return;
  }
  // POST-as-GET: an order poll, an authorization (first fetch or poll) or a download.
  retry(url);
  if (url == m.order_url && a.ok()) m.order_status = a.status_member();
  if (std::find(m.authorizations.begin(), m.authorizations.end(), url) != m.authorizations.end()) {
    bool valid = a.ok() && a.status_member() == "valid";
    if (a.ok() && a.body)
      if (const auto* o = a.body->if_object())
        if (const auto* chs = o->if_contains("challenges"); chs && chs->is_array()) {
          const json::value* chosen = nullptr;  // the client takes the last http-01 one
          for (const auto& ch : chs->get_array())
            if (json_string(ch, "type") == "http-01") chosen = &ch;
          if (chosen) {
            m.challenge_of[json_string(*chosen, "url")].push_back(url);
            valid = valid || json_string(*chosen, "status") == "valid";
          }
        }
    m.authz_valid[url] = valid;
  }
}

asio::awaitable<void> serve(tcp::socket socket) {
  ++harness->sessions;
  boost::beast::flat_buffer buffer;
  bhttp::request<bhttp::string_body> req;
  auto [ec, n] = co_await bhttp::async_read(socket, buffer, req, asio::as_tuple(asio::use_awaitable));
  if (!ec && harness->next < harness->segments.size()) {
    check_request(req);
    const std::string& answer = harness->segments[harness->next++];
    // Learnt before the client can read it (so a Retry-After counts from no later than that).
    learn(req, answer);
    (void)co_await asio::async_write(socket, asio::buffer(answer), asio::as_tuple(asio::use_awaitable));
  }
  boost::system::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
  --harness->sessions;
}

asio::awaitable<void> accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await harness->acceptor->async_accept(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    asio::co_spawn(harness->io, serve(std::move(socket)), asio::detached);
  }
}

void check_issued(const Result<renewers::IssueResult>& r, const renewers::AcmeRenewer& renewer) {
  const Model& m = harness->model;
  if (std::getenv("FUZZ_ACME_VERBOSE"))  // what an input did, when writing seeds
    std::fprintf(stderr, "fuzz_acme: %zu of %zu answers used: %s\n", harness->next, harness->segments.size(),
                 r ? "issued" : r.error().message.c_str());
  if (!renewer.account_url().empty())
    FUZZ_REQUIRE(m.accounts.count(renewer.account_url()) == 1, "the renewer keeps an account the server did not accept");
  if (!r) {
    FUZZ_REQUIRE(!r.error().message.empty(), "an error without a message");
    no_secret_in("an error", r.error().message);
    return;
  }
  FUZZ_REQUIRE(r->chain_pem.find("-----BEGIN CERTIFICATE-----") != std::string::npos,
               "an issuance without a PEM certificate");
  FUZZ_REQUIRE(r->state.count("acme_order_url") && r->state.at("acme_order_url") == m.order_url,
               "an issuance that does not name its order");
}

config::BrokerConfig broker_config(std::uint8_t setup) {
  renewers::AcmeRenewerConfig settings;
  settings.directory = harness->base_url + "/dir";
  settings.ca_bundle = harness->ca_bundle;  // http:// needs none; the system store costs ~0.1 s a renewer
  settings.challenge.type = "http-01";
  settings.challenge.listen = "127.0.0.1:0";
  if (setup & 1) {
    settings.eab_kid = std::string(kEabKid);
    settings.eab_hmac_key_file = "/nonexistent/eab.key";  // the key is in the identity already
  }
  if (setup & 2) settings.preferred_chain = "Pebble Root CA alternate";
  settings.contact = "mailto:ops@example.org";
  config::BrokerConfig b;
  b.name = std::string(kBroker);
  b.timeout = 300ms;
  b.settings = std::move(settings);
  return b;
}

void fuzz_renewer(std::uint8_t setup, std::string_view rest) {
  harness->segments.clear();
  harness->next = 0;
  harness->model = Model{};
  harness->eab = setup & 1;
  for (;;) {
    const std::size_t sep = rest.find(kSeparator);
    std::string segment(rest.substr(0, sep));
    for (std::size_t p = 0; (p = segment.find("PPPPP", p)) != std::string::npos; p += 5)
      segment.replace(p, 5, harness->port);
    harness->segments.push_back(std::move(segment));
    if (sep == std::string_view::npos) break;
    rest.remove_prefix(sep + kSeparator.size());
  }
  renewers::RenewerContext context{harness->io.get_executor(), &harness->identity, "/nonexistent", &harness->clock};
  auto created = renewers::AcmeRenewer::create(broker_config(setup), context,
                                               renewers::AcmeTuning{.first_poll = 1ms, .max_poll = 5ms});
  FUZZ_REQUIRE(created.has_value(), created ? "" : created.error().message);
  auto renewer = std::move(*created);
  renewers::IssueRequest request = harness->request;
  if (setup & 4) request.previous_cert_pem = harness->previous_cert_pem;
  check_issued(certagent::fuzz::run_within(harness->io, renewer->issue(request)), *renewer);
  if (setup & 8) check_issued(certagent::fuzz::run_within(harness->io, renewer->issue(request)), *renewer);
  renewer.reset();
  // The server side of this input's connections ends with them.
  for (int i = 0; i < 1000 && harness->sessions != 0; ++i) harness->io.run_one_for(1ms);
  harness->io.poll();
}

// The JWS and EAB code on its own, with the parts a server controls (kid = an account URL,
// nonce, url) and a payload from the input: sign_es256 and eab_binding must produce JSON that
// reads back to exactly those values and verifies; jwk_from_public_key_pem, ecdsa_der_to_raw
// and ari_cert_id must refuse or give well-formed results.
void jws_functions(std::string_view rest) {
  std::vector<std::string> parts;
  for (;;) {
    const std::size_t sep = rest.find(kSeparator);
    parts.emplace_back(rest.substr(0, sep));
    if (sep == std::string_view::npos || parts.size() == 4) break;
    rest.remove_prefix(sep + kSeparator.size());
  }
  parts.resize(4);
  const std::string& kid = parts[0];
  const std::string& nonce = parts[1];
  const std::string& url = parts[2];
  const std::string& payload = parts[3];

  auto signed_jws = acme::sign_es256(harness->identity, harness->jwk, kid, nonce, url, payload);
  FUZZ_REQUIRE(signed_jws.has_value(), "sign_es256 failed");
  // JSON holds text: header values that are not UTF-8 cannot round-trip, which the client
  // keeps from happening by refusing such nonces and URLs before signing.
  const bool utf8 = parse_json(json::serialize(json::value(kid + nonce + url))).has_value();
  if (utf8) {
    const Jws jws = read_jws(*signed_jws, "sign_es256");
    FUZZ_REQUIRE(json_string(jws.header, "nonce") == nonce && json_string(jws.header, "url") == url,
                 "nonce or url changed in the protected header");
    if (kid.empty()) FUZZ_REQUIRE(jws.header.at("jwk") == json::parse(harness->jwk.json), "jwk changed");
    else FUZZ_REQUIRE(json_string(jws.header, "kid") == kid, "kid changed in the protected header");
    FUZZ_REQUIRE(jws.payload == payload, "the payload changed");
  }
  auto eab = acme::eab_binding(harness->identity, renewers::acme_eab_key_name(kBroker), kid, url, harness->jwk);
  FUZZ_REQUIRE(eab.has_value(), "eab_binding failed");
  if (utf8) {
    const Jws binding = read_jws(*eab, "eab");
    FUZZ_REQUIRE(json_string(binding.header, "kid") == kid && json_string(binding.header, "url") == url,
                 "kid or url changed in the EAB header");
    FUZZ_REQUIRE(binding.payload == harness->jwk.json, "the EAB payload is not the JWK");
  }
  no_secret_in("a JWS", *signed_jws + *eab);

  if (auto jwk = acme::jwk_from_public_key_pem(payload)) {
    auto v = parse_json(jwk->json);
    FUZZ_REQUIRE(v && json::serialize(*v) == jwk->json, "a JWK that is not canonical JSON");
    auto x = acme::base64url_decode(json_string(*v, "x"));
    auto y = acme::base64url_decode(json_string(*v, "y"));
    FUZZ_REQUIRE(x && y && x->size() == 32 && y->size() == 32, "JWK coordinates are not 32 bytes");
    std::vector<std::uint8_t> digest(32);
    SHA256(reinterpret_cast<const unsigned char*>(jwk->json.data()), jwk->json.size(), digest.data());
    FUZZ_REQUIRE(jwk->thumbprint == acme::base64url(std::span<const std::uint8_t>(digest)), "a wrong thumbprint");
  }
  const std::span<const std::uint8_t> der(reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size());
  if (auto raw = acme::ecdsa_der_to_raw(der)) {
    FUZZ_REQUIRE(raw->size() == 64, "a raw signature that is not 64 bytes");
    crypto::BignumPtr r(BN_bin2bn(raw->data(), 32, nullptr)), s(BN_bin2bn(raw->data() + 32, 32, nullptr));
    ECDSA_SIG* sig = ECDSA_SIG_new();
    ECDSA_SIG_set0(sig, r.release(), s.release());
    unsigned char* again = nullptr;
    const int len = i2d_ECDSA_SIG(sig, &again);
    ECDSA_SIG_free(sig);
    auto raw2 = len > 0 ? acme::ecdsa_der_to_raw(std::span<const std::uint8_t>(again, static_cast<std::size_t>(len)))
                        : Result<acme::Bytes>(make_error("i2d"));
    OPENSSL_free(again);
    FUZZ_REQUIRE(raw2 && *raw2 == *raw, "r||s does not survive DER and back");
  }
  if (auto id = renewers::ari_cert_id(payload)) {
    const auto dot = id->find('.');
    FUZZ_REQUIRE(dot != std::string::npos && dot > 0 && dot + 1 < id->size() && is_base64url(id->substr(0, dot)) &&
                     is_base64url(id->substr(dot + 1)),
                 "an ARI CertID that is not base64url.base64url: " + *id);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logging();
  harness = new Harness;
  // A 5-digit port (the ephemeral range is 32768-60999; checked anyway).
  for (;;) {
    harness->acceptor = std::make_unique<tcp::acceptor>(harness->io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    harness->port = std::to_string(harness->acceptor->local_endpoint().port());
    if (harness->port.size() == 5) break;
  }
  harness->base_url = "http://127.0.0.1:" + harness->port;
  asio::co_spawn(harness->io, accept_loop(), asio::detached);

  const std::string public_pem = harness->identity.public_key_pem();
  crypto::BioPtr bio(BIO_new_mem_buf(public_pem.data(), static_cast<int>(public_pem.size())));
  harness->public_key.reset(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  FUZZ_REQUIRE(harness->public_key, "public key");
  auto jwk = acme::jwk_from_public_key_pem(public_pem);
  FUZZ_REQUIRE(jwk.has_value(), "jwk");
  harness->jwk = *jwk;

  // The secrets that must never leave: the account key's private scalar and the EAB key.
  auto key = harness->identity.private_key();
  FUZZ_REQUIRE(key.has_value(), "private key");
  BIGNUM* d_raw = nullptr;
  FUZZ_REQUIRE(EVP_PKEY_get_bn_param(key->get(), OSSL_PKEY_PARAM_PRIV_KEY, &d_raw) == 1, "private scalar");
  crypto::BignumPtr d(d_raw);
  std::vector<std::uint8_t> d_bytes(32);
  BN_bn2binpad(d.get(), d_bytes.data(), 32);
  // The PKCS#8 PEM's second line holds most of the scalar (the first is the same for every key).
  const std::string key_pem = test::private_key_pem(key->get());
  const std::size_t line2 = key_pem.find('\n', key_pem.find('\n') + 1) + 1;
  harness->secrets = {acme::base64url(std::span<const std::uint8_t>(d_bytes)), hex(d_bytes),
                      key_pem.substr(line2, 64)};
  auto eab_key = acme::base64url_decode(kEabKeyB64);
  FUZZ_REQUIRE(eab_key && eab_key->size() == 32, "EAB key");
  harness->eab_key = *eab_key;
  harness->secrets.push_back(std::string(kEabKeyB64));
  harness->secrets.push_back(hex(*eab_key));
  FUZZ_REQUIRE(harness->identity.import_hmac_key(renewers::acme_eab_key_name(kBroker), *eab_key).has_value(),
               "import_hmac_key");

  // One CSR for every issuance, and a previous certificate with an AKI for ARI.
  auto csr_key = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  FUZZ_REQUIRE(csr_key.has_value(), "generate_key");
  crypto::SubjectNames names{"web.internal", {"web.internal", "www.internal"}, {"127.0.0.1"}, {}};
  auto csr = crypto::build_csr(csr_key->get(), names);
  FUZZ_REQUIRE(csr.has_value(), "build_csr");
  harness->request.cert_name = "web";
  harness->request.csr_pem = *csr;
  harness->request.common_name = names.common_name;
  harness->request.dns_names = names.dns_names;
  harness->request.ip_addresses = names.ip_addresses;
  harness->request.lifetime = 1h;
  auto root = test::make_cert(test::CertSpec{.common_name = "Fuzz Root", .is_ca = true, .lifetime = 24h});
  auto leaf = test::make_cert(test::CertSpec{.common_name = "web.internal", .lifetime = 1h}, &root);
  harness->previous_cert_pem = leaf.cert_pem();
  std::string dir = (std::filesystem::temp_directory_path() / "certagent-fuzz-acme-XXXXXX").string();
  FUZZ_REQUIRE(::mkdtemp(dir.data()) != nullptr, "mkdtemp");
  harness->dir = dir;
  harness->ca_bundle = harness->dir / "ca.pem";
  {
    std::ofstream out(harness->ca_bundle);
    out << root.cert_pem();
  }
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(harness->dir, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1 || size > kMaxInput) return 0;
  harness->input = fuzz::text_of(data, size);
  const std::string_view rest = fuzz::text_of(data + 1, size - 1);
  if (data[0] & 0x80) jws_functions(rest);
  else fuzz_renewer(data[0], rest);
  return 0;
}
