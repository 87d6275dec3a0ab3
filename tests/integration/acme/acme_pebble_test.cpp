// The ACME renewer against a real pebble: fault injection on (5 % badNonce, 50 % authz reuse),
// real http-01 validation against the built-in responder (no PEBBLE_VA_ALWAYS_VALID), dns-01
// through a hook and pebble-challtestsrv, EAB, pebble restarts, alternate chains. Every chain
// goes through the core's validate_issued against pebble's issuing root. The account key is
// the TPM identity on swtpm (and the file identity in one test).
//
// How pebble's VA reaches our responder: pebble runs with -dnsserver pointing at
// pebble-challtestsrv, which answers every A query with 127.0.0.1 (AAAA disabled), so any
// name (web.certagent.test) validates against 127.0.0.1:<httpPort>. Without -dnsserver pebble
// uses the system resolver, where "localhost" resolves through /etc/hosts (tested too). IP
// identifiers (RFC 8738) are fetched from the address itself.

#include "renewers/acme_renewer.h"
#include "tests/support/broker_test_util.h"
#include "tests/support/pebble.h"
#include "tests/support/test_identity.h"

#include <gtest/gtest.h>

namespace certagent::test {
namespace {

using namespace std::chrono_literals;
using renewers::AcmeRenewer;

std::unique_ptr<AcmeRenewer> make_renewer(boost::asio::io_context& ioc, const config::BrokerConfig& broker,
                                          tpm::Identity* identity, const fs::path& state_dir) {
  renewers::RenewerContext context{ioc.get_executor(), identity, state_dir, nullptr};
  auto r = AcmeRenewer::create(broker, context);
  if (!r) throw std::runtime_error(r.error().message);
  return std::move(*r);
}

std::string subject_cn(const std::string& pem) {
  auto certs = parse_pem_chain(pem);
  if (certs.empty()) return {};
  return crypto::describe(certs.front().get()).subject_cn;
}

// One pebble (with challtestsrv as its DNS) and one TPM identity for the whole suite.
class AcmePebble : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("acme-pebble");
    dns_ = new ChallTestSrv(dir_->path());
    pebble_ = new Pebble(dir_->path(), PebbleOptions{.dns_server = dns_->dns_address()});
    identity_ = new TestIdentity(IdentityKind::tpm, *dir_ / "tpm-identity");
  }
  static void TearDownTestSuite() {
    delete identity_;
    delete pebble_;
    delete dns_;
    delete dir_;
  }
  std::string listen() const { return "127.0.0.1:" + std::to_string(pebble_->http_port()); }

  boost::asio::io_context ioc;
  static TempDir* dir_;
  static ChallTestSrv* dns_;
  static Pebble* pebble_;
  static TestIdentity* identity_;
};
TempDir* AcmePebble::dir_ = nullptr;
ChallTestSrv* AcmePebble::dns_ = nullptr;
Pebble* AcmePebble::pebble_ = nullptr;
TestIdentity* AcmePebble::identity_ = nullptr;

TEST_F(AcmePebble, IssuesWithRealHttp01Validation) {
  auto renewer = make_renewer(ioc, pebble_->broker_config(listen()), identity_->get(), dir_->path());
  crypto::SubjectNames names{.common_name = "web.certagent.test",
                             .dns_names = {"web.certagent.test", "localhost"},
                             .ip_addresses = {"127.0.0.1"}};
  auto issued = issue_once(ioc, *renewer, names, 10min);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  auto material = validate(issued, pebble_->root_pem());
  ASSERT_TRUE(material) << material.error().message;
  // notBefore/notAfter from newOrder are honoured: exactly the lifetime we asked for.
  EXPECT_EQ(material->not_after - material->not_before, 10min);
  EXPECT_LE(material->not_before, std::chrono::system_clock::now());
  EXPECT_FALSE(material->chain_pem.empty());  // pebble's intermediate
  EXPECT_FALSE(issued.result->state.at("acme_certificate_url").empty());
  EXPECT_FALSE(issued.result->renew_hint);  // pebble 2.4 has no ARI
  // pebble's Date header, for the loop's clock-skew measure: pebble shares our clock.
  ASSERT_TRUE(issued.result->broker_time);
  EXPECT_LE(*issued.result->broker_time, std::chrono::system_clock::now() + 2s);
  EXPECT_GE(*issued.result->broker_time, std::chrono::system_clock::now() - 30s);
  EXPECT_EQ(renewer->stats().accounts_registered, 1u);
  // Not the root of another pebble: the chain is really anchored.
  TestCert stranger = make_cert(CertSpec{.common_name = "Pebble Root CA 000000", .is_ca = true});
  EXPECT_FALSE(validate(issued, stranger.cert_pem()));
}

TEST_F(AcmePebble, RepeatedIssuancesShareOneConnectionAndAccount) {
  auto renewer = make_renewer(ioc, pebble_->broker_config(listen()), identity_->get(), dir_->path());
  crypto::SubjectNames names{.dns_names = {"api.certagent.test"}};
  std::string previous;
  for (int i = 0; i < 4; ++i) {
    auto issued = issue_once(ioc, *renewer, names, 5min, previous);
    ASSERT_TRUE(issued.result) << "issuance " << i << ": " << issued.result.error().message;
    auto material = validate(issued, pebble_->root_pem());
    ASSERT_TRUE(material) << material.error().message;
    previous = material->cert_pem;
  }
  EXPECT_EQ(renewer->client().stats().connections, 1u);
  EXPECT_EQ(renewer->stats().accounts_registered, 1u);
  EXPECT_EQ(renewer->stats().issued, 4u);
}

TEST_F(AcmePebble, Dns01ThroughTheHook) {
  auto script = *dir_ / "dns-hook.sh";
  auto hook_log = *dir_ / "dns-hook.log";
  write_file(script,
             "#!/bin/sh\n"
             "# $1 present|cleanup, $2 fqdn, $3 TXT value\n"
             "echo \"$1 $2\" >> " + hook_log.string() + "\n"
             "case \"$1\" in\n"
             "  present) exec curl -sf -d \"{\\\"host\\\":\\\"$2.\\\",\\\"value\\\":\\\"$3\\\"}\" " +
                 dns_->management_url() + "/set-txt ;;\n"
             "  cleanup) exec curl -sf -d \"{\\\"host\\\":\\\"$2.\\\"}\" " + dns_->management_url() + "/clear-txt ;;\n"
             "esac\nexit 2\n",
             fs::perms(0755));
  auto broker = pebble_->broker_config(listen());
  auto acme = broker.settings.as<renewers::AcmeRenewerConfig>();
  acme.challenge.type = "dns-01";
  acme.challenge.hook = {"/bin/sh", script.string()};
  broker.settings = acme;
  auto renewer = make_renewer(ioc, broker, identity_->get(), dir_->path());
  crypto::SubjectNames names{.dns_names = {"dns01.certagent.test"}};
  auto issued = issue_once(ioc, *renewer, names, 5min);
  ASSERT_TRUE(issued.result) << issued.result.error().message;
  ASSERT_TRUE(validate(issued, pebble_->root_pem()));
  std::string log = read_file(hook_log);
  // Authorization reuse may have skipped the challenge; when it ran, it was cleaned up.
  if (log.find("present") != std::string::npos) {
    EXPECT_NE(log.find("present _acme-challenge.dns01.certagent.test"), std::string::npos) << log;
    EXPECT_NE(log.find("cleanup _acme-challenge.dns01.certagent.test"), std::string::npos) << log;
  }
  // IP addresses cannot be validated by dns-01: refused before any request.
  auto ip = issue_once(ioc, *renewer, crypto::SubjectNames{.ip_addresses = {"127.0.0.1"}}, 5min);
  ASSERT_FALSE(ip.result);
  EXPECT_TRUE(ip.result.error().configuration);
}

TEST_F(AcmePebble, FailedValidationSurfacesTheProblem) {
  // Our responder listens where pebble's VA does not look: validation fails with pebble's
  // problem document in the message.
  auto renewer = make_renewer(ioc, pebble_->broker_config("127.0.0.1:0"), identity_->get(), dir_->path());
  // A fresh name each run, so no valid authorization can be reused.
  std::string name = "unreachable-" + std::to_string(::getpid()) + ".certagent.test";
  auto issued = issue_once(ioc, *renewer, crypto::SubjectNames{.dns_names = {name}}, 5min);
  ASSERT_FALSE(issued.result);
  const auto& message = issued.result.error().message;
  EXPECT_NE(message.find("http-01 validation of " + name + " failed (invalid)"), std::string::npos) << message;
  EXPECT_NE(message.find("connection"), std::string::npos) << message;
  EXPECT_FALSE(issued.result.error().configuration);
}

TEST_F(AcmePebble, RefusesUriNames) {
  auto renewer = make_renewer(ioc, pebble_->broker_config(listen()), identity_->get(), dir_->path());
  auto issued = issue_once(ioc, *renewer,
                           crypto::SubjectNames{.dns_names = {"a.certagent.test"}, .uris = {"spiffe://x/y"}}, 5min);
  ASSERT_FALSE(issued.result);
  EXPECT_TRUE(issued.result.error().configuration);
}

TEST(AcmePebbleFaults, SurvivesHeavyNonceRejection) {
  TempDir dir("acme-nonce");
  Pebble pebble(dir.path(), PebbleOptions{.always_valid = true, .env = {{"PEBBLE_WFE_NONCEREJECT", "30"}}});
  TestIdentity identity(IdentityKind::file, dir / "file-identity");
  boost::asio::io_context ioc;
  auto renewer = make_renewer(ioc, pebble.broker_config("127.0.0.1:0"), identity.get(), dir.path());
  for (int i = 0; i < 3; ++i) {
    auto issued = issue_once(ioc, *renewer, crypto::SubjectNames{.dns_names = {"nonce.certagent.test"}}, 5min);
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    ASSERT_TRUE(validate(issued, pebble.root_pem()));
  }
  EXPECT_GT(renewer->stats().bad_nonce_retries, 0u);
}

TEST(AcmePebbleEab, ExternalAccountBinding) {
  TempDir dir("acme-eab");
  const std::string key_b64 = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
  // No -dnsserver: pebble uses the system resolver, where localhost is 127.0.0.1.
  Pebble pebble(dir.path(), PebbleOptions{.eab_keys = {{"kid-1", key_b64}}});
  TestIdentity identity(IdentityKind::tpm, dir / "tpm-identity");
  boost::asio::io_context ioc;
  std::string listen = "127.0.0.1:" + std::to_string(pebble.http_port());
  crypto::SubjectNames names{.dns_names = {"localhost"}, .ip_addresses = {"127.0.0.1"}};

  {  // EAB required but not configured: a configuration error, without a request to newAccount.
    auto renewer = make_renewer(ioc, pebble.broker_config(listen), identity.get(), dir.path());
    auto issued = issue_once(ioc, *renewer, names, 5min);
    ASSERT_FALSE(issued.result);
    EXPECT_TRUE(issued.result.error().configuration);
    EXPECT_NE(issued.result.error().message.find("External Account Binding"), std::string::npos);
  }
  {  // A wrong MAC key: pebble refuses the account; retrying cannot help.
    write_file(dir / "wrong.key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", fs::perms(0600));
    auto broker = pebble.broker_config(listen);
    broker.name = "wrong";
    auto acme = broker.settings.as<renewers::AcmeRenewerConfig>();
    acme.eab_kid = "kid-1";
    acme.eab_hmac_key_file = dir / "wrong.key";
    broker.settings = acme;
    auto renewer = make_renewer(ioc, broker, identity.get(), dir.path());
    auto issued = issue_once(ioc, *renewer, names, 5min);
    ASSERT_FALSE(issued.result);
    EXPECT_TRUE(issued.result.error().configuration) << issued.result.error().message;
    EXPECT_NE(issued.result.error().message.find("newAccount"), std::string::npos) << issued.result.error().message;
  }
  {  // The right key, sealed into the TPM the way enroll does it (import_hmac_key).
    auto key = renewers::parse_eab_key_file_text(key_b64);
    ASSERT_TRUE(key);
    ASSERT_TRUE(identity->import_hmac_key(renewers::acme_eab_key_name("pebble"), *key));
    auto broker = pebble.broker_config(listen);
    auto acme = broker.settings.as<renewers::AcmeRenewerConfig>();
    acme.eab_kid = "kid-1";
    acme.eab_hmac_key_file = dir / "deleted-after-enroll.key";  // not there: the TPM has it
    broker.settings = acme;
    auto renewer = make_renewer(ioc, broker, identity.get(), dir.path());
    auto issued = issue_once(ioc, *renewer, names, 5min);
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    auto material = validate(issued, pebble.root_pem());
    ASSERT_TRUE(material) << material.error().message;
  }
}

TEST(AcmePebbleRestart, RecreatesTheAccountAndTrustsTheNewRoot) {
  TempDir dir("acme-restart");
  Pebble pebble(dir.path(), PebbleOptions{.always_valid = true});
  TestIdentity identity(IdentityKind::tpm, dir / "tpm-identity");
  boost::asio::io_context ioc;
  auto renewer = make_renewer(ioc, pebble.broker_config("127.0.0.1:0"), identity.get(), dir.path());
  crypto::SubjectNames names{.dns_names = {"restart.certagent.test"}};
  auto first = issue_once(ioc, *renewer, names, 5min);
  ASSERT_TRUE(first.result) << first.result.error().message;
  std::string old_root = pebble.root_pem();
  ASSERT_TRUE(validate(first, old_root));

  pebble.stop();
  auto down = issue_once(ioc, *renewer, names, 5min);
  ASSERT_FALSE(down.result);
  EXPECT_FALSE(down.result.error().configuration);

  pebble.start();  // all state lost: accounts, nonces, orders, and a new issuing root
  auto second = issue_once(ioc, *renewer, names, 5min);
  ASSERT_TRUE(second.result) << second.result.error().message;
  EXPECT_EQ(renewer->stats().accounts_registered, 2u);
  std::string new_root = pebble.root_pem();
  EXPECT_NE(new_root, old_root);
  EXPECT_TRUE(validate(second, new_root));
  EXPECT_FALSE(validate(second, old_root));
  EXPECT_TRUE(validate(second, old_root + new_root));  // the appended trust bundle
}

TEST(AcmePebbleChains, PreferredChainPicksTheAlternate) {
  TempDir dir("acme-chains");
  Pebble pebble(dir.path(), PebbleOptions{.always_valid = true, .alternate_roots = 1});
  TestIdentity identity(IdentityKind::file, dir / "file-identity");
  boost::asio::io_context ioc;
  std::string root0 = pebble.root_pem(0), root1 = pebble.root_pem(1);
  crypto::SubjectNames names{.dns_names = {"chain.certagent.test"}};
  for (const auto& [root, other] : {std::pair{root0, root1}, std::pair{root1, root0}}) {
    auto broker = pebble.broker_config("127.0.0.1:0");
    edit_settings<renewers::AcmeRenewerConfig>(broker, [&root = root](auto& s) { s.preferred_chain = subject_cn(root); });
    auto renewer = make_renewer(ioc, broker, identity.get(), dir.path());
    auto issued = issue_once(ioc, *renewer, names, 5min);
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    EXPECT_TRUE(validate(issued, root)) << subject_cn(root);
    EXPECT_FALSE(validate(issued, other));
  }
}

}  // namespace
}  // namespace certagent::test
