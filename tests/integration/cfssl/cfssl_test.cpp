// The cfssl renewer against real multirootca and `cfssl serve` (golang-cfssl), with the auth
// key held by the TPM identity on swtpm (and imported from the key file by the file
// identity). Every chain goes through validate_issued against the cfssl CA.

#include "renewers/broker_keys.h"
#include "renewers/cfssl_renewer.h"
#include "tests/support/broker_test_util.h"
#include "tests/support/pebble.h"
#include "tests/support/test_identity.h"
#include "tests/support/multirootca.h"

#include <gtest/gtest.h>

namespace certagent::test {
namespace {

using namespace std::chrono_literals;
using renewers::CfsslRenewer;

config::BrokerConfig cfssl_broker(const Multirootca& ca, const std::string& profile, const std::string& label) {
  config::BrokerConfig b;
  b.name = "pki";
  b.type = "cfssl";
  b.timeout = 10s;
  renewers::CfsslRenewerConfig c;
  c.url = ca.url();
  c.ca_bundle = ca.tls_ca_file();
  c.auth_key_file = ca.auth_key_file();
  c.profile = profile;
  c.label = label;
  b.settings = c;
  return b;
}

std::unique_ptr<CfsslRenewer> make_renewer(boost::asio::io_context& ioc, const config::BrokerConfig& broker,
                                           tpm::Identity* identity) {
  auto r = CfsslRenewer::create(broker, renewers::RenewerContext{ioc.get_executor(), identity, {}, nullptr});
  if (!r) throw std::runtime_error(r.error().message);
  return std::move(*r);
}

class CfsslMultirootca : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("cfssl");
    ca_ = new Multirootca(dir_->path() / "ca");
    identity_ = new TestIdentity(IdentityKind::tpm, *dir_ / "tpm-identity");
    // What `certagent enroll` does with auth_key_file: seal the key into the TPM.
    auto key = renewers::parse_hex_key_text(ca_->auth_key_hex());
    if (!key || !(**identity_).import_hmac_key(renewers::cfssl_auth_key_name("pki"), *key))
      throw std::runtime_error("import_hmac_key failed");
  }
  static void TearDownTestSuite() {
    delete identity_;
    delete ca_;
    delete dir_;
  }
  std::string ca_pem() const { return read_file(ca_->ca_file()); }

  boost::asio::io_context ioc;
  static TempDir* dir_;
  static Multirootca* ca_;
  static TestIdentity* identity_;
};
TempDir* CfsslMultirootca::dir_ = nullptr;
Multirootca* CfsslMultirootca::ca_ = nullptr;
TestIdentity* CfsslMultirootca::identity_ = nullptr;

TEST_F(CfsslMultirootca, IssuesExactlyTheWantedNames) {
  auto renewer = make_renewer(ioc, cfssl_broker(*ca_, "short", "primary"), identity_->get());
  crypto::SubjectNames names{.common_name = "db.certagent.test",
                             .dns_names = {"db.certagent.test", "localhost"},
                             .ip_addresses = {"127.0.0.1", "::1"}};
  auto issued = issue_once(ioc, *renewer, names, 2min);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  auto material = validate(issued, ca_pem(), 5min);
  ASSERT_TRUE(material) << material.error().message;
  // "short": expiry 3m, backdate 1m -> 3 minutes from round(now) - 1 min.
  EXPECT_EQ(material->not_after - material->not_before, 3min);
  EXPECT_GT(material->not_after, std::chrono::system_clock::now() + 90s);
  EXPECT_TRUE(material->chain_pem.empty());  // multirootca returns only the leaf
}

TEST_F(CfsslMultirootca, DefaultProfileAndOneConnection) {
  auto renewer = make_renewer(ioc, cfssl_broker(*ca_, "", ""), identity_->get());
  crypto::SubjectNames names{.dns_names = {"svc.certagent.test"}};
  for (int i = 0; i < 3; ++i) {
    auto issued = issue_once(ioc, *renewer, names, 5min);
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    auto material = validate(issued, ca_pem(), 10min);
    ASSERT_TRUE(material) << material.error().message;
    EXPECT_EQ(material->not_after - material->not_before, 6min);
  }
  EXPECT_EQ(renewer->client().stats().connections, 1u);
  EXPECT_TRUE(test::run_sync(ioc, renewer->probe()));
}

TEST_F(CfsslMultirootca, WrongKeyOrProfileIsAConfigurationError) {
  {
    TempDir d("cfssl-wrong");
    TestIdentity other(IdentityKind::file, d / "id");
    auto broker = cfssl_broker(*ca_, "short", "primary");
    write_file(d / "wrong.key", "00112233445566778899aabbccddeeff\n", fs::perms(0600));
    edit_settings<renewers::CfsslRenewerConfig>(broker, [&](auto& s) { s.auth_key_file = d / "wrong.key"; });
    auto renewer = make_renewer(ioc, broker, other.get());
    auto issued = issue_once(ioc, *renewer, crypto::SubjectNames{.dns_names = {"x.certagent.test"}}, 2min);
    ASSERT_FALSE(issued.result);
    EXPECT_TRUE(issued.result.error().configuration);
    EXPECT_NE(issued.result.error().message.find("invalid token"), std::string::npos) << issued.result.error().message;
  }
  auto renewer = make_renewer(ioc, cfssl_broker(*ca_, "no-such-profile", "primary"), identity_->get());
  auto issued = issue_once(ioc, *renewer, crypto::SubjectNames{.dns_names = {"x.certagent.test"}}, 2min);
  ASSERT_FALSE(issued.result);
  EXPECT_TRUE(issued.result.error().configuration);
  EXPECT_NE(issued.result.error().message.find("invalid profile"), std::string::npos) << issued.result.error().message;
}

TEST_F(CfsslMultirootca, FileIdentityImportsTheKeyFileOnFirstUse) {
  TempDir d("cfssl-file");
  TestIdentity file(IdentityKind::file, d / "id");
  auto renewer = make_renewer(ioc, cfssl_broker(*ca_, "short", "primary"), file.get());
  auto issued = issue_once(ioc, *renewer, crypto::SubjectNames{.dns_names = {"file.certagent.test"}}, 2min);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  EXPECT_TRUE(validate(issued, ca_pem(), 5min));
  const std::uint8_t probe[] = {1};
  EXPECT_TRUE(file->hmac(renewers::cfssl_auth_key_name("pki"), probe));
}

TEST(CfsslServe, AuthsignWorksAndNewcertIsOpenToAnyone) {
  TempDir dir("cfssl-serve");
  Multirootca serve(dir.path() / "ca", Multirootca::Kind::cfssl_serve);
  TestIdentity identity(IdentityKind::file, dir / "id");
  boost::asio::io_context ioc;
  auto renewer = make_renewer(ioc, cfssl_broker(serve, "short", ""), identity.get());
  auto issued = issue_once(ioc, *renewer, crypto::SubjectNames{.dns_names = {"serve.certagent.test"}}, 2min);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  EXPECT_TRUE(validate(issued, read_file(serve.ca_file()), 5min));

  // Why the docs recommend multirootca: `cfssl serve` signs through /newcert without any token
  // (it even generates the key), while multirootca has no such endpoint.
  int status = 0;
  std::string body = http_get(serve.url() + "/api/v1/cfssl/newcert", serve.tls_ca_file(), &status);
  EXPECT_NE(status, 404) << body;  // the endpoint exists (GET is refused, a POST signs)
  auto newcert = run({"curl", "-s", "--cacert", serve.tls_ca_file().string(), "-d",
                      R"({"request":{"CN":"anyone.example","hosts":["anyone.example"],"key":{"algo":"ecdsa","size":256}}})",
                      serve.url() + "/api/v1/cfssl/newcert"});
  EXPECT_NE(newcert.out.find("\"success\":true"), std::string::npos) << newcert.out;
}

TEST(CfsslMultirootcaOutage, DownIsARetryableError) {
  TempDir dir("cfssl-down");
  Multirootca ca(dir.path() / "ca");
  TestIdentity identity(IdentityKind::file, dir / "id");
  boost::asio::io_context ioc;
  auto renewer = make_renewer(ioc, cfssl_broker(ca, "short", "primary"), identity.get());
  crypto::SubjectNames names{.dns_names = {"down.certagent.test"}};
  ASSERT_TRUE(issue_once(ioc, *renewer, names, 2min).result);
  ca.stop();
  auto down = issue_once(ioc, *renewer, names, 2min);
  ASSERT_FALSE(down.result);
  EXPECT_FALSE(down.result.error().configuration);
  EXPECT_FALSE(test::run_sync(ioc, renewer->probe()));
  ca.start();
  auto back = issue_once(ioc, *renewer, names, 2min);
  ASSERT_TRUE(back.result) << back.result.error().message;
}

}  // namespace
}  // namespace certagent::test
