// The ACME renewer against a broker that answers garbage: a small ACME server of our own
// (tests/fakes/test_https_server) that speaks just enough RFC 8555 to reach each failure.
// Protocol garbage (HTML, truncated PEM, huge bodies, 5xx, 429) must be an error from the
// renewer; content garbage (wrong key, wrong names, expired, too long, too many certificates)
// comes back as a chain and must be rejected by the core's validate_issued. Also covers ARI
// (pebble 2.4 has none): the renewal hint, and "replaces" in newOrder.

#include "renewers/acme_jws.h"
#include "renewers/acme_renewer.h"
#include "tests/support/software_identity.h"
#include "tests/support/test_https_server.h"
#include "tests/support/test_pki.h"
#include "tests/support/broker_test_util.h"
#include "tests/support/test_support.h"

#include <boost/json.hpp>

#include <openssl/pem.h>

#include <gtest/gtest.h>

#include <mutex>

namespace certagent::test {
namespace {

using namespace std::chrono_literals;
using Reply = TestHttpsServer::Reply;
using Request = TestHttpsServer::Request;

std::string payload_of(const Request& r) {
  boost::system::error_code ec;
  auto v = boost::json::parse(r.body, ec);
  if (ec || !v.is_object()) return {};
  auto p = renewers::acme::base64url_decode(v.as_object()["payload"].as_string());
  return p ? std::string(p->begin(), p->end()) : std::string();
}

crypto::EvpPkeyPtr csr_key(const std::string& finalize_payload) {
  auto v = boost::json::parse(finalize_payload).as_object();
  auto der = *renewers::acme::base64url_decode(v["csr"].as_string());
  const unsigned char* p = der.data();
  crypto::X509ReqPtr req(d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())));
  return crypto::EvpPkeyPtr(X509_REQ_get_pubkey(req.get()));
}

// What the fake CA does at each step; tests change one thing.
struct FakeAcme {
  std::mutex mutex;
  TestCert root = make_cert(CertSpec{.common_name = "Garbage Root", .is_ca = true, .lifetime = 24h});
  TestCert intermediate = make_cert(CertSpec{.common_name = "Garbage Intermediate", .is_ca = true, .lifetime = 24h}, &root);
  std::string base;  // https://127.0.0.1:PORT
  bool with_ari{false};
  std::function<Reply(const Request&)> directory_override;
  std::function<Reply(const Request&)> new_account_override;
  std::function<Reply(const Request&)> new_order_override;
  std::function<std::string(EVP_PKEY* csr_key)> chain;  // the certificate download body
  std::string cert_content_type{"application/pem-certificate-chain"};
  std::optional<Reply> cert_override;
  int processing_polls{0};          // order stays "processing" this many polls
  std::string order_retry_after;    // Retry-After on processing answers
  std::string last_new_order;       // payload
  int bad_nonce_always{0};          // answer badNonce to every POST
  std::string nonce_text;           // set: every Replay-Nonce is this (+ a number)
  int nonce_counter{0};
  int ari_requests{0};
  std::optional<std::chrono::seconds> clock_ahead;  // set: a Date header on every answer
  // Set: the order starts "pending" with one authorization whose http-01 challenge answers
  // with this status (and challenge_retry_after); the authorization is valid from its first
  // poll on (a real CA validates meanwhile).
  std::string challenge_answer;
  std::string challenge_retry_after;
  bool challenge_answered{false};
  // When each authorization, challenge, finalize and order request arrived, in order (its
  // target and the time).
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> order_requests;

  Reply json(unsigned status, const std::string& body, std::vector<std::pair<std::string, std::string>> headers = {}) {
    headers.emplace_back("Content-Type", status >= 400 ? "application/problem+json" : "application/json");
    headers.emplace_back("Replay-Nonce", next_nonce());
    return Reply{.status = status, .headers = std::move(headers), .body = body};
  }

  std::string next_nonce() {
    return (nonce_text.empty() ? std::string("nonce-") : nonce_text) + std::to_string(++nonce_counter);
  }

  Reply handle(const Request& r) {
    Reply reply = answer(r);
    if (clock_ahead) reply.headers.emplace_back("Date", http_date(std::chrono::system_clock::now() + *clock_ahead));
    return reply;
  }

  // The gaps between one of those requests and the next, as the server saw them.
  std::vector<std::chrono::milliseconds> order_request_gaps() {
    std::lock_guard lock(mutex);
    std::vector<std::chrono::milliseconds> gaps;
    for (std::size_t i = 1; i < order_requests.size(); ++i)
      gaps.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(order_requests[i].second -
                                                                           order_requests[i - 1].second));
    return gaps;
  }

  std::string order_json(const std::string& status) {
    std::string s = R"({"status":")" + status + R"(","identifiers":[],"authorizations":[],"finalize":")" + base +
                    R"(/finalize/1")";
    if (status == "valid") s += R"(,"certificate":")" + base + R"(/cert/1")";
    return s + "}";
  }

  EVP_PKEY* last_key{nullptr};
  crypto::EvpPkeyPtr key_holder;

  Reply answer(const Request& r) {
    std::lock_guard lock(mutex);
    if (r.target == "/finalize/1" || r.target == "/order/1" || r.target == "/authz/1" || r.target == "/chall/1")
      order_requests.emplace_back(r.target, std::chrono::steady_clock::now());
    if (r.target == "/dir") {
      if (directory_override) return directory_override(r);
      std::string ari = with_ari ? R"(,"renewalInfo":")" + base + R"(/ari")" : "";
      return json(200, R"({"newNonce":")" + base + R"(/nonce","newAccount":")" + base + R"(/acct","newOrder":")" +
                           base + R"(/order")" + ari + "}");
    }
    if (r.target == "/nonce") return Reply{.headers = {{"Replay-Nonce", next_nonce()}}};
    if (r.target.rfind("/ari/", 0) == 0) {
      ++ari_requests;
      auto now = std::chrono::system_clock::now();
      return json(200, R"({"suggestedWindow":{"start":")" + renewers::format_rfc3339(now + 60s) + R"(","end":")" +
                           renewers::format_rfc3339(now + 120s) + R"("}})");
    }
    if (r.method != "POST") return Reply{.status = 404};
    if (bad_nonce_always)
      return json(400, R"({"type":"urn:ietf:params:acme:error:badNonce","detail":"JWS has an invalid anti-replay nonce"})");
    if (r.target == "/acct") {
      if (new_account_override) return new_account_override(r);
      return json(201, R"({"status":"valid"})", {{"Location", base + "/acct/1"}});
    }
    if (r.target == "/order") {
      last_new_order = payload_of(r);
      if (new_order_override) return new_order_override(r);
      if (!challenge_answer.empty()) {
        challenge_answered = false;
        return json(201,
                    R"({"status":"pending","identifiers":[],"authorizations":[")" + base + R"(/authz/1"],"finalize":")" +
                        base + R"(/finalize/1"})",
                    {{"Location", base + "/order/1"}});
      }
      return json(201, order_json("ready"), {{"Location", base + "/order/1"}});
    }
    if (r.target == "/authz/1") {
      const std::string status = challenge_answered ? "valid" : "pending";
      return json(200, R"({"status":")" + status + R"(","identifier":{"type":"dns","value":"web.garbage.test"},)" +
                           R"("challenges":[{"type":"http-01","url":")" + base + R"(/chall/1","token":"tok_1","status":")" +
                           status + R"("}]})");
    }
    if (r.target == "/chall/1") {
      challenge_answered = true;
      std::vector<std::pair<std::string, std::string>> headers;
      if (!challenge_retry_after.empty()) headers.emplace_back("Retry-After", challenge_retry_after);
      return json(200, R"({"type":"http-01","url":")" + base + R"(/chall/1","token":"tok_1","status":")" +
                           challenge_answer + R"("})",
                  std::move(headers));
    }
    if (r.target == "/finalize/1") {
      key_holder = csr_key(payload_of(r));
      return json(200, order_json(processing_polls > 0 ? "processing" : "valid"),
                  order_retry_after.empty() ? std::vector<std::pair<std::string, std::string>>{}
                                            : std::vector<std::pair<std::string, std::string>>{{"Retry-After", order_retry_after}});
    }
    if (r.target == "/order/1") {
      if (processing_polls > 0) {
        --processing_polls;
        return json(200, order_json("processing"),
                    order_retry_after.empty() ? std::vector<std::pair<std::string, std::string>>{}
                                              : std::vector<std::pair<std::string, std::string>>{{"Retry-After", order_retry_after}});
      }
      return json(200, order_json("valid"));
    }
    if (r.target == "/cert/1") {
      if (cert_override) return *cert_override;
      return Reply{.status = 200,
                   .headers = {{"Content-Type", cert_content_type},
                               {"Replay-Nonce", "nonce-" + std::to_string(++nonce_counter)}},
                   .body = chain(key_holder.get())};
    }
    return Reply{.status = 404};
  }

  // A correct leaf for `key` and `names`, then the intermediate.
  std::string good_chain(EVP_PKEY* key, const crypto::SubjectNames& names, std::chrono::seconds lifetime = 300s,
                         std::chrono::seconds offset = -1s) {
    EVP_PKEY_up_ref(key);
    TestCert leaf = make_cert(CertSpec{.common_name = names.dns_names.empty() ? "" : names.dns_names.front(),
                                       .dns_names = names.dns_names,
                                       .ip_addresses = names.ip_addresses,
                                       .not_before_offset = offset,
                                       .lifetime = lifetime},
                              &intermediate, crypto::EvpPkeyPtr(key));
    return leaf.cert_pem() + intermediate.cert_pem();
  }
};

class AcmeGarbage : public ::testing::Test {
 protected:
  void SetUp() override {
    server = std::make_unique<TestHttpsServer>(tls_leaf.cert_pem(), tls_leaf.key_pem(),
                                               [this](const Request& r) { return fake.handle(r); });
    fake.base = server->url();
    write_file(dir / "broker-ca.pem", tls_ca.cert_pem());
    fake.chain = [this](EVP_PKEY* key) { return fake.good_chain(key, names); };
  }

  std::unique_ptr<renewers::AcmeRenewer> renewer(std::chrono::milliseconds timeout = 5s) {
    config::BrokerConfig b;
    b.name = "garbage";
    b.type = "acme";
    b.timeout = timeout;
    renewers::AcmeRenewerConfig a;
    a.directory = fake.base + "/dir";
    a.ca_bundle = dir / "broker-ca.pem";
    a.challenge.listen = "127.0.0.1:0";
    b.settings = a;
    auto r = renewers::AcmeRenewer::create(b, renewers::RenewerContext{ioc.get_executor(), &identity, dir.path(), nullptr});
    if (!r) throw std::runtime_error(r.error().message);
    return std::move(*r);
  }

  Issued issue(renewers::AcmeRenewer& r, std::string previous = {}) {
    return issue_once(ioc, r, names, 5min, std::move(previous));
  }

  TempDir dir{"acme-garbage"};
  TestCert tls_ca = make_cert(CertSpec{.common_name = "Broker TLS CA", .is_ca = true});
  TestCert tls_leaf = make_cert(CertSpec{.common_name = "127.0.0.1", .ip_addresses = {"127.0.0.1"}}, &tls_ca);
  FakeAcme fake;
  std::unique_ptr<TestHttpsServer> server;
  SoftwareIdentity identity;
  boost::asio::io_context ioc;
  crypto::SubjectNames names{.common_name = "web.garbage.test", .dns_names = {"web.garbage.test"}};
};

TEST_F(AcmeGarbage, GoodChainPassesValidation) {
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  auto material = validate(issued, fake.root.cert_pem());
  EXPECT_TRUE(material) << material.error().message;
  // notBefore/notAfter asked for the lifetime.
  auto order = boost::json::parse(fake.last_new_order).as_object();
  auto nb = renewers::parse_rfc3339(order["notBefore"].as_string());
  auto na = renewers::parse_rfc3339(order["notAfter"].as_string());
  ASSERT_TRUE(nb && na);
  EXPECT_EQ(*na - *nb, 5min);
  EXPECT_FALSE(order.contains("replaces"));  // no renewalInfo in the directory
}

TEST_F(AcmeGarbage, ContentErrorsAreRejectedByValidation) {
  struct Case {
    const char* name;
    std::function<std::string(EVP_PKEY*)> chain;
    const char* expect;  // in validate_issued's message
  };
  std::vector<Case> cases = {
      {"wrong key", [&](EVP_PKEY*) { auto other = generate_p256_key(); return fake.good_chain(other.get(), names); },
       "key"},
      {"wrong name",
       [&](EVP_PKEY* k) { return fake.good_chain(k, crypto::SubjectNames{.dns_names = {"evil.garbage.test"}}); },
       "name"},
      {"expired", [&](EVP_PKEY* k) { return fake.good_chain(k, names, 60s, -3600s); }, "expired"},
      {"lives too long", [&](EVP_PKEY* k) { return fake.good_chain(k, names, 48h); }, "lifetime"},
      {"too many certificates",
       [&](EVP_PKEY* k) {
         std::string s = fake.good_chain(k, names);
         for (int i = 0; i < 20; ++i) s += fake.intermediate.cert_pem();
         return s;
       },
       "certificates"},
      {"untrusted issuer",
       [&](EVP_PKEY* k) {
         TestCert rogue = make_cert(CertSpec{.common_name = "Garbage Intermediate", .is_ca = true});
         EVP_PKEY_up_ref(k);
         TestCert leaf = make_cert(CertSpec{.common_name = "web.garbage.test", .dns_names = {"web.garbage.test"}},
                                   &rogue, crypto::EvpPkeyPtr(k));
         return leaf.cert_pem() + rogue.cert_pem();
       },
       "verif"},
  };
  auto r = renewer();
  for (auto& c : cases) {
    fake.chain = c.chain;
    auto issued = issue(*r);
    ASSERT_TRUE(issued.result) << c.name << ": " << issued.result.error().message;
    auto material = validate(issued, fake.root.cert_pem());
    ASSERT_FALSE(material) << c.name << " was accepted";
    std::string lower = material.error().message;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    EXPECT_NE(lower.find(c.expect), std::string::npos) << c.name << ": " << material.error().message;
  }
}

TEST_F(AcmeGarbage, ProtocolGarbageIsAnError) {
  struct Case {
    const char* name;
    std::function<void()> setup;
    const char* expect;
  };
  std::vector<Case> cases = {
      {"truncated PEM",
       [&] { fake.chain = [&](EVP_PKEY* k) { auto s = fake.good_chain(k, names); return s.substr(0, s.size() / 2); }; },
       "malformed PEM"},
      {"no PEM at all", [&] { fake.chain = [](EVP_PKEY*) { return std::string("hello"); }; }, "no PEM certificate"},
      {"huge body",
       [&] { fake.chain = [](EVP_PKEY*) { return std::string(3 * 1024 * 1024, 'A'); }; }, "larger than 1048576"},
      {"HTML error page for the certificate",
       [&] {
         fake.cert_override = Reply{.status = 502, .headers = {{"Content-Type", "text/html"}},
                                    .body = "<html><body><h1>502 Bad Gateway</h1></body></html>"};
       },
       "502 (text/html): <html><body><h1>502 Bad Gateway"},
      {"HTML directory",
       [&] {
         fake.directory_override = [](const Request&) {
           return Reply{.status = 200, .headers = {{"Content-Type", "text/html"}}, .body = "<html>maintenance</html>"};
         };
       },
       "directory: not JSON"},
      {"directory without newOrder",
       [&] {
         fake.directory_override = [](const Request&) {
           return Reply{.status = 200, .headers = {{"Content-Type", "application/json"}}, .body = R"({"a":1})"};
         };
       },
       "is not an ACME directory"},
      {"500 on newOrder",
       [&] { fake.new_order_override = [&](const Request&) { return fake.json(500, R"({"type":"urn:ietf:params:acme:error:serverInternal","detail":"db down"})"); }; },
       "newOrder: HTTP 500: serverInternal: db down"},
      {"garbage order",
       [&] { fake.new_order_override = [&](const Request&) { return fake.json(201, R"([1,2,3])", {{"Location", fake.base + "/order/1"}}); }; },
       "not an order"},
      {"raw bytes", [&] { fake.directory_override = [](const Request&) { return Reply{.raw = std::string("\x16\x03garbage")}; }; },
       "directory"},
  };
  for (auto& c : cases) {
    fake.chain = [&](EVP_PKEY* k) { return fake.good_chain(k, names); };
    fake.cert_override.reset();
    fake.directory_override = nullptr;
    fake.new_order_override = nullptr;
    c.setup();
    auto r = renewer();
    auto issued = issue(*r);
    ASSERT_FALSE(issued.result) << c.name << " was accepted";
    EXPECT_NE(issued.result.error().message.find(c.expect), std::string::npos)
        << c.name << ": " << issued.result.error().message;
    EXPECT_FALSE(issued.result.error().configuration) << c.name;
  }
}

TEST_F(AcmeGarbage, RateLimitsCarryRetryAfter) {
  fake.new_order_override = [&](const Request&) {
    return fake.json(429, R"({"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates"})",
                     {{"Retry-After", "120"}});
  };
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_FALSE(issued.result);
  EXPECT_EQ(issued.result.error().retry_after, 120s);
  EXPECT_NE(issued.result.error().message.find("rateLimited: too many certificates"), std::string::npos)
      << issued.result.error().message;

  // 503 with an HTTP-date on the directory.
  fake.new_order_override = nullptr;
  fake.directory_override = [](const Request&) {
    auto when = std::chrono::system_clock::now() + 300s;
    std::time_t t = std::chrono::system_clock::to_time_t(when);
    char buf[64];
    std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", std::gmtime(&t));
    return Reply{.status = 503, .headers = {{"Retry-After", buf}}, .body = "maintenance"};
  };
  auto r2 = renewer();
  auto down = issue(*r2);
  ASSERT_FALSE(down.result);
  ASSERT_TRUE(down.result.error().retry_after);
  EXPECT_GE(*down.result.error().retry_after, 298s);
  EXPECT_LE(*down.result.error().retry_after, 301s);
}

TEST_F(AcmeGarbage, ProblemDocumentsWithSubproblemsAreSurfaced) {
  fake.new_order_override = [&](const Request&) {
    return fake.json(400, R"({"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"Some identifiers were rejected",
      "subproblems":[{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"not on the allow list",
      "identifier":{"type":"dns","value":"web.garbage.test"}}]})");
  };
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_FALSE(issued.result);
  const auto& e = issued.result.error();
  EXPECT_TRUE(e.configuration);
  EXPECT_NE(e.message.find("rejectedIdentifier: Some identifiers were rejected (web.garbage.test: "
                           "rejectedIdentifier: not on the allow list)"),
            std::string::npos)
      << e.message;
}

TEST_F(AcmeGarbage, AccountRefusalIsAConfigurationError) {
  fake.new_account_override = [&](const Request&) {
    return fake.json(401, R"({"type":"urn:ietf:params:acme:error:unauthorized","detail":"account key not allowed"})");
  };
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_FALSE(issued.result);
  EXPECT_TRUE(issued.result.error().configuration);
  EXPECT_NE(issued.result.error().message.find("newAccount: HTTP 401: unauthorized"), std::string::npos);
}

TEST_F(AcmeGarbage, EndlessBadNonceIsBounded) {
  fake.bad_nonce_always = 1;
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_FALSE(issued.result);
  EXPECT_NE(issued.result.error().message.find("badNonce"), std::string::npos);
  EXPECT_EQ(r->stats().bad_nonce_retries, static_cast<std::uint64_t>(renewers::AcmeTuning{}.max_bad_nonce_retries));
}

// Found by fuzz_acme: a Replay-Nonce that is not base64url was signed into the next request.
TEST_F(AcmeGarbage, ANonceThatIsNotBase64UrlIsNeverSent) {
  fake.nonce_text = "bad nonce \"";
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_FALSE(issued.result);
  EXPECT_NE(issued.result.error().message.find("newNonce: HTTP 200 with a Replay-Nonce that is not base64url"),
            std::string::npos)
      << issued.result.error().message;
  EXPECT_EQ(r->stats().signed_requests, 0u);
}

// Found by fuzz_acme: an account Location that is no URL (here a byte that is not ASCII) was
// kept as the account and signed into every later request as its kid.
TEST_F(AcmeGarbage, AnAccountLocationThatIsNoUrlIsNotKept) {
  fake.new_account_override = [this](const Request&) {
    return fake.json(201, R"({"status":"valid"})", {{"Location", "\xfe" + fake.base + "/acct/1"}});
  };
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_FALSE(issued.result);
  EXPECT_NE(issued.result.error().message.find("newAccount: the Location header is not an account URL"),
            std::string::npos)
      << issued.result.error().message;
  EXPECT_TRUE(r->account_url().empty());
  EXPECT_EQ(r->stats().signed_by_step["newOrder"], 0u);
}

TEST_F(AcmeGarbage, PollingHonoursRetryAfter) {
  fake.processing_polls = 1;
  fake.order_retry_after = "1";
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  EXPECT_GE(issued.wall, 950ms);  // waited as told, instead of our 10 ms first interval

  // Without Retry-After the first polls come quickly.
  fake.processing_polls = 3;
  fake.order_retry_after.clear();
  auto quick = issue(*r);
  ASSERT_TRUE(quick.result) << quick.result.error().message;
  EXPECT_LT(quick.wall, 500ms);
}

// Every answer's Retry-After counts, not only the finalize's: the server sees no poll sooner
// than it asked for, and a "Retry-After: 0" still gets our backing-off interval, never a tight
// loop.
TEST_F(AcmeGarbage, EachPollWaitsForTheRetryAfterOfTheLastAnswer) {
  fake.processing_polls = 1;  // finalize: processing; poll: processing; poll: valid
  fake.order_retry_after = "1";
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  auto gaps = fake.order_request_gaps();  // finalize -> poll -> poll
  ASSERT_EQ(gaps.size(), 2u);
  EXPECT_GE(gaps[0], 1000ms) << "polled before the finalize answer's Retry-After";
  EXPECT_GE(gaps[1], 1000ms) << "polled before the order poll answer's Retry-After";
  EXPECT_EQ(r->stats().signed_by_step["order poll"], 2u);
  EXPECT_EQ(r->stats().not_yet_answers, 2u);

  fake.order_requests.clear();
  fake.processing_polls = 4;
  fake.order_retry_after = "0";
  auto zero = issue(*r);
  ASSERT_TRUE(zero.result) << zero.result.error().message;
  gaps = fake.order_request_gaps();
  ASSERT_EQ(gaps.size(), 5u);
  const auto first = renewers::AcmeTuning{}.first_poll;
  for (std::size_t i = 0; i < gaps.size(); ++i)  // 10, 20, 40, 80, 160 ms at least
    EXPECT_GE(gaps[i], first * (1 << i)) << "poll " << i + 1 << " came too soon after a Retry-After: 0";
}

// A challenge answered "valid" needs no authorization poll; one answered "processing" is polled
// after its answer's Retry-After.
TEST_F(AcmeGarbage, TheChallengesAnswerDecidesTheAuthorizationPoll) {
  fake.challenge_answer = "valid";
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  auto stats = r->stats();
  EXPECT_EQ(stats.signed_by_step["authorization"], 1u);
  EXPECT_EQ(stats.signed_by_step["challenge"], 1u);
  EXPECT_EQ(stats.signed_by_step["authorization poll"], 0u) << "polled an authorization its challenge said was valid";

  fake.order_requests.clear();
  fake.challenge_answer = "processing";
  fake.challenge_retry_after = "1";
  auto polled = issue(*r);
  ASSERT_TRUE(polled.result) << polled.result.error().message;
  stats = r->stats();
  EXPECT_EQ(stats.signed_by_step["authorization poll"], 1u);
  // authorization, challenge, authorization poll, finalize: the poll no sooner than asked.
  ASSERT_GE(fake.order_requests.size(), 3u);
  EXPECT_EQ(fake.order_requests[1].first, "/chall/1");
  EXPECT_EQ(fake.order_requests[2].first, "/authz/1");
  EXPECT_GE(fake.order_requests[2].second - fake.order_requests[1].second, 1000ms);
}

// A Retry-After past the broker's timeout: give up at once and pass the wait on to the loop,
// rather than poll at the deadline against the CA's wish (a signature for a "not yet").
TEST_F(AcmeGarbage, ARetryAfterPastTheTimeoutEndsTheAttemptAndIsPassedOn) {
  fake.processing_polls = 1;
  fake.order_retry_after = "30";
  auto r = renewer(5s);
  auto issued = issue(*r);
  ASSERT_FALSE(issued.result);
  EXPECT_EQ(issued.result.error().retry_after, 30s);
  EXPECT_NE(issued.result.error().message.find("order still processing; the CA asks to come back in 30s"),
            std::string::npos)
      << issued.result.error().message;
  EXPECT_EQ(fake.order_requests.size(), 1u) << "polled although the CA asked to wait past the timeout";
}

// The CA's Date header (of the certificate download) is handed to the loop, which measures
// clock skew from it (certagent_clock_skew_seconds), as for cfssl and Lemur.
TEST_F(AcmeGarbage, TheDateHeaderIsTheBrokersClock) {
  fake.clock_ahead = 1h;
  auto r = renewer();
  auto issued = issue(*r);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  ASSERT_TRUE(issued.result->broker_time) << "no Date read";
  const auto want = std::chrono::system_clock::now() + 1h;
  EXPECT_GE(*issued.result->broker_time, want - 3s);
  EXPECT_LE(*issued.result->broker_time, want + 3s);

  fake.clock_ahead.reset();  // no Date header: nothing to measure
  auto without = issue(*r);
  ASSERT_TRUE(without.result) << without.result.error().message;
  EXPECT_FALSE(without.result->broker_time);
}

TEST_F(AcmeGarbage, StuckOrderTimesOut) {
  fake.processing_polls = 1000000;
  auto r = renewer(600ms);
  auto issued = issue(*r);
  ASSERT_FALSE(issued.result);
  EXPECT_NE(issued.result.error().message.find("order still processing after 600ms"), std::string::npos)
      << issued.result.error().message;
}

TEST_F(AcmeGarbage, AriHintAndReplaces) {
  fake.with_ari = true;
  auto r = renewer();
  auto first = issue(*r);
  ASSERT_TRUE(first.result) << first.result.error().message;
  ASSERT_TRUE(first.result->renew_hint);
  auto now = std::chrono::system_clock::now();
  EXPECT_GE(*first.result->renew_hint, now + 55s);
  EXPECT_LE(*first.result->renew_hint, now + 121s);
  EXPECT_EQ(fake.ari_requests, 1);

  auto leaf = first.result->chain_pem.substr(0, first.result->chain_pem.find("-----END CERTIFICATE-----") + 26);
  auto second = issue(*r, leaf);
  ASSERT_TRUE(second.result) << second.result.error().message;
  auto order = boost::json::parse(fake.last_new_order).as_object();
  ASSERT_TRUE(order.contains("replaces"));
  EXPECT_EQ(order["replaces"].as_string(), *renewers::ari_cert_id(leaf));
}

TEST_F(AcmeGarbage, FallsBackWhenValidityDatesAreRefused) {
  // Let's Encrypt answers malformed to notBefore/notAfter: retry without them, and remember.
  fake.new_order_override = [&](const Request& req) {
    if (payload_of(req).find("notAfter") != std::string::npos)
      return fake.json(400, R"({"type":"urn:ietf:params:acme:error:malformed","detail":"NotBefore and NotAfter are not supported"})");
    return fake.json(201, fake.order_json("ready"), {{"Location", fake.base + "/order/1"}});
  };
  auto r = renewer();
  for (int i = 0; i < 2; ++i) {
    auto issued = issue(*r);
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    EXPECT_EQ(fake.last_new_order.find("notAfter"), std::string::npos);
  }
}

}  // namespace
}  // namespace certagent::test
