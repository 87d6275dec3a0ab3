// The cfssl renewer against a broker that answers garbage (our own HTTPS server speaking the
// authsign API). It checks the request exactly (token = HMAC over the exact request bytes,
// hosts = exactly the wanted names), then misbehaves in one way per case.

#include "renewers/acme_jws.h"
#include "renewers/broker_keys.h"
#include "renewers/cfssl_renewer.h"
#include "tests/support/software_identity.h"
#include "tests/support/test_https_server.h"
#include "tests/support/test_pki.h"
#include "tests/support/broker_test_util.h"
#include "tests/support/test_support.h"

#include <boost/json.hpp>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <gtest/gtest.h>

#include <mutex>

namespace certagent::test {
namespace {

using namespace std::chrono_literals;
using Reply = TestHttpsServer::Reply;
using Request = TestHttpsServer::Request;

std::string b64decode(std::string_view s) {
  auto d = renewers::acme::base64url_decode(s);
  return d ? std::string(d->begin(), d->end()) : std::string();
}

std::string b64(std::string_view s) {
  std::string out(4 * ((s.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(s.data()),
                          static_cast<int>(s.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

class CfsslGarbage : public ::testing::Test {
 protected:
  void SetUp() override {
    auto k = renewers::parse_hex_key_text(key_hex);
    ASSERT_TRUE(identity.import_hmac_key(renewers::cfssl_auth_key_name("pki"), *k));
    server = std::make_unique<TestHttpsServer>(tls_leaf.cert_pem(), tls_leaf.key_pem(),
                                               [this](const Request& r) { return handle(r); });
    write_file(dir / "broker-ca.pem", tls_ca.cert_pem());
  }

  Reply handle(const Request& r) {
    std::lock_guard lock(mutex);
    if (r.method != "POST" || r.target != "/api/v1/cfssl/authsign") return Reply{.status = 404};
    auto body = boost::json::parse(r.body).as_object();
    std::string request = b64decode(body["request"].as_string());
    auto key = *renewers::parse_hex_key_text(key_hex);
    unsigned char mac[32];
    unsigned len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(request.data()),
         request.size(), mac, &len);
    if (b64(std::string_view(reinterpret_cast<char*>(mac), len)) != body["token"].as_string())
      return Reply{.status = 400, .body = R"({"success":false,"result":null,"errors":[{"code":1,"message":"invalid token"}],"messages":[]})"};
    last_request = request;
    auto req = boost::json::parse(request).as_object();
    // Sign the CSR's key for the names in `hosts`, as cfssl does.
    std::string csr_pem(req["certificate_request"].as_string());
    crypto::BioPtr bio(BIO_new_mem_buf(csr_pem.data(), static_cast<int>(csr_pem.size())));
    crypto::X509ReqPtr csr(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
    crypto::EvpPkeyPtr csr_key(X509_REQ_get_pubkey(csr.get()));
    if (reply) return *reply;
    std::string chain = make_chain(csr_key.get());
    return Reply{.headers = {{"Content-Type", "application/json"}},
                 .body = boost::json::serialize(boost::json::object{
                     {"success", true}, {"result", {{"certificate", chain}}}, {"errors", boost::json::array{}}})};
  }

  std::string good_leaf(EVP_PKEY* key, std::vector<std::string> dns, std::chrono::seconds lifetime = 180s,
                        std::chrono::seconds offset = -60s) {
    EVP_PKEY_up_ref(key);
    return make_cert(CertSpec{.common_name = dns.front(), .dns_names = dns, .not_before_offset = offset,
                              .lifetime = lifetime},
                     &ca, crypto::EvpPkeyPtr(key))
        .cert_pem();
  }

  std::unique_ptr<renewers::CfsslRenewer> renewer() {
    config::BrokerConfig b;
    b.name = "pki";
    b.type = "cfssl";
    b.timeout = 5s;
    renewers::CfsslRenewerConfig c;
    c.url = server->url() + "/";
    c.ca_bundle = dir / "broker-ca.pem";
    c.profile = "server";
    c.label = "primary";
    b.settings = c;
    auto r = renewers::CfsslRenewer::create(b, renewers::RenewerContext{ioc.get_executor(), &identity, {}, nullptr});
    if (!r) throw std::runtime_error(r.error().message);
    return std::move(*r);
  }

  TempDir dir{"cfssl-garbage"};
  std::string key_hex = "000102030405060708090a0b0c0d0e0f";
  TestCert tls_ca = make_cert(CertSpec{.common_name = "Broker TLS CA", .is_ca = true});
  TestCert tls_leaf = make_cert(CertSpec{.common_name = "127.0.0.1", .ip_addresses = {"127.0.0.1"}}, &tls_ca);
  TestCert ca = make_cert(CertSpec{.common_name = "cfssl garbage CA", .is_ca = true, .lifetime = 24h});
  std::mutex mutex;
  std::string last_request;
  std::optional<Reply> reply;
  std::function<std::string(EVP_PKEY*)> make_chain = [this](EVP_PKEY* k) { return good_leaf(k, names.dns_names); };
  std::unique_ptr<TestHttpsServer> server;
  SoftwareIdentity identity;
  boost::asio::io_context ioc;
  crypto::SubjectNames names{.common_name = "db.garbage.test", .dns_names = {"db.garbage.test", "db2.garbage.test"},
                             .ip_addresses = {"10.0.0.7"}};
};

TEST_F(CfsslGarbage, SendsExactlyTheWantedNamesWithAValidToken) {
  names.ip_addresses.clear();
  auto r = renewer();
  auto issued = issue_once(ioc, *r, names, 2min);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  EXPECT_TRUE(validate(issued, ca.cert_pem(), 5min));
  auto req = boost::json::parse(last_request).as_object();
  EXPECT_EQ(boost::json::serialize(req["hosts"]), R"(["db.garbage.test","db2.garbage.test"])");
  EXPECT_EQ(req["profile"].as_string(), "server");
  EXPECT_EQ(req["label"].as_string(), "primary");
  EXPECT_NE(std::string(req["certificate_request"].as_string()).find("BEGIN CERTIFICATE REQUEST"), std::string::npos);
}

TEST_F(CfsslGarbage, ContentErrorsAreRejectedByValidation) {
  struct Case {
    const char* name;
    std::function<std::string(EVP_PKEY*)> chain;
    const char* expect;
  };
  std::vector<Case> cases = {
      {"wrong key", [&](EVP_PKEY*) { auto o = generate_p256_key(); return good_leaf(o.get(), names.dns_names); }, "key"},
      {"wrong name", [&](EVP_PKEY* k) { return good_leaf(k, {"other.garbage.test"}); }, "name"},
      {"expired", [&](EVP_PKEY* k) { return good_leaf(k, names.dns_names, 60s, -7200s); }, "expired"},
      {"lives too long", [&](EVP_PKEY* k) { return good_leaf(k, names.dns_names, 72h); }, "lifetime"},
      {"too many certificates",
       [&](EVP_PKEY* k) {
         std::string s = good_leaf(k, names.dns_names);
         for (int i = 0; i < 20; ++i) s += ca.cert_pem();
         return s;
       },
       "certificates"},
  };
  names.ip_addresses.clear();
  auto r = renewer();
  for (auto& c : cases) {
    make_chain = c.chain;
    auto issued = issue_once(ioc, *r, names, 2min);
    ASSERT_TRUE(issued.result) << c.name << ": " << issued.result.error().message;
    auto material = validate(issued, ca.cert_pem(), 5min);
    ASSERT_FALSE(material) << c.name << " was accepted";
    std::string lower = material.error().message;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    EXPECT_NE(lower.find(c.expect), std::string::npos) << c.name << ": " << material.error().message;
  }
}

TEST_F(CfsslGarbage, ProtocolGarbageIsAnError) {
  struct Case {
    const char* name;
    Reply reply;
    const char* expect;
    bool configuration{false};
  };
  std::string leaf_pem = good_leaf(generate_p256_key().get(), {"x.test"});
  std::vector<Case> cases = {
      {"HTML error page", Reply{.status = 502, .headers = {{"Content-Type", "text/html"}}, .body = "<html><h1>Bad Gateway</h1></html>"},
       "HTTP 502: the answer is not JSON: <html><h1>Bad Gateway</h1></html>"},
      {"500 with cfssl errors", Reply{.status = 500, .body = R"({"success":false,"errors":[{"code":5000,"message":"signer down"}]})"},
       "HTTP 500: code 5000: signer down"},
      {"success false with 200", Reply{.body = R"({"success":false,"result":null,"errors":[{"code":1,"message":"nope"}]})"},
       "code 1: nope"},
      {"no certificate", Reply{.body = R"({"success":true,"result":{}})"}, "no result.certificate"},
      {"truncated PEM",
       Reply{.body = boost::json::serialize(boost::json::object{
                 {"success", true}, {"result", {{"certificate", leaf_pem.substr(0, leaf_pem.size() - 40)}}}})},
       "malformed PEM"},
      {"not PEM", Reply{.body = R"({"success":true,"result":{"certificate":"hello"}})"}, "no PEM certificate"},
      {"huge body", Reply{.body = std::string(2 * 1024 * 1024, ' ')}, "larger than 1048576"},
      {"JSON array", Reply{.body = "[]"}, "not JSON"},
      {"invalid profile", Reply{.status = 400, .body = R"({"success":false,"errors":[{"code":1,"message":"invalid profile"}]})"},
       "invalid profile", true},
  };
  auto r = renewer();
  for (auto& c : cases) {
    reply = c.reply;
    auto issued = issue_once(ioc, *r, names, 2min);
    ASSERT_FALSE(issued.result) << c.name << " was accepted";
    EXPECT_NE(issued.result.error().message.find(c.expect), std::string::npos)
        << c.name << ": " << issued.result.error().message;
    EXPECT_EQ(issued.result.error().configuration, c.configuration) << c.name;
  }
}

TEST_F(CfsslGarbage, RetryAfterIsCarried) {
  reply = Reply{.status = 429, .headers = {{"Retry-After", "42"}}, .body = R"({"success":false,"errors":[{"code":429,"message":"slow down"}]})"};
  auto r = renewer();
  auto issued = issue_once(ioc, *r, names, 2min);
  ASSERT_FALSE(issued.result);
  EXPECT_EQ(issued.result.error().retry_after, 42s);
}

TEST_F(CfsslGarbage, WrongTokenIsAConfigurationError) {
  key_hex = "ffffffffffffffffffffffffffffffff";  // the server now expects another key
  auto r = renewer();
  auto issued = issue_once(ioc, *r, names, 2min);
  ASSERT_FALSE(issued.result);
  EXPECT_TRUE(issued.result.error().configuration);
  EXPECT_NE(issued.result.error().message.find("invalid token"), std::string::npos);
}

}  // namespace
}  // namespace certagent::test
