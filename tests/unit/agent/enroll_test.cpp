// `certagent enroll` (tpm::enroll) on both backends: idempotent creation, fingerprint, CSR,
// broker secrets sealed and their plaintext deleted; open_identity afterwards.

#include "agent/enroll.h"

#include "core/config/config.h"
#include "renewers/acme_config.h"
#include "renewers/cfssl_config.h"
#include "renewers/lemur_config.h"
#include "renewers/local_config.h"
#include "tests/support/test_support.h"
#include "tests/support/swtpm.h"
#include "tpm/identity.h"
#include "tpm/identity_store.h"

#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <gtest/gtest.h>

#include <optional>

namespace certagent::tpm {
namespace {

using certagent::test::read_file;
using certagent::test::TempDir;
using certagent::test::write_file;

Bytes openssl_hmac(std::string_view key, std::string_view data) {
  Bytes out(32);
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), out.data(), &len);
  return out;
}

// Independent of the code under test: `openssl pkey -pubin -outform DER | sha256sum`.
std::string openssl_fingerprint(const std::string& pem) {
  const fs::path openssl = certagent::test::require_program("openssl");
  TempDir tmp("certagent-fp");
  write_file(tmp / "k.pem", pem);
  auto r = certagent::test::run({"/bin/sh", "-c", openssl.string() + " pkey -pubin -in " + (tmp / "k.pem").string() +
                                                      " -outform DER | sha256sum"});
  return r.out.substr(0, 64);
}

class EnrollTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    config.source = "/etc/certagent/certagent.yaml";
    config.state_dir = dir / "state";
    config.identity.backend = GetParam();
    if (GetParam() == "tpm") {
      tpm.emplace(dir / "swtpm");
      config.identity.tcti = tpm->tcti();
    }
    renewers::AcmeRenewerConfig acme;
    acme.directory = "https://acme.example/dir";
    acme.eab_kid = "kid-1";
    acme.eab_hmac_key_file = dir / "secrets" / "eab.key";
    renewers::CfsslRenewerConfig cfssl;
    cfssl.url = "https://pki.example";
    cfssl.auth_key_file = dir / "secrets" / "cfssl.hex";
    renewers::LemurRenewerConfig lemur;
    lemur.url = "https://lemur.example";
    lemur.token_file = dir / "secrets" / "lemur.jwt";
    config.brokers["ca"] = config::BrokerConfig{"ca", "acme", 4, std::chrono::seconds(30), acme};
    config.brokers["pki"] = config::BrokerConfig{"pki", "cfssl", 4, std::chrono::seconds(30), cfssl};
    config.brokers["lemur"] = config::BrokerConfig{"lemur", "lemur", 4, std::chrono::seconds(30), lemur};
    config.brokers["dev"] = config::BrokerConfig{"dev", "local", 4, std::chrono::seconds(30), renewers::LocalRenewerConfig{}};
    fs::create_directories(dir / "secrets");
    write_secrets();
  }

  void write_secrets() {
    // "a secret EAB key!" in base64url without padding, as ACME CAs hand it out.
    write_file(dir / "secrets" / "eab.key", "YSBzZWNyZXQgRUFCIGtleSE\n", fs::perms(0600));
    write_file(dir / "secrets" / "cfssl.hex", "00112233445566778899aabbccddeeff\n", fs::perms(0600));
    write_file(dir / "secrets" / "lemur.jwt", jwt + "\n", fs::perms(0600));
  }

  TempDir dir{"certagent-enroll"};
  std::optional<test::Swtpm> tpm;
  config::Config config;
  const std::string jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + std::string(150, 'p') + ".sig";
  const std::string cfssl_key = std::string("\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff", 16);
};

TEST_P(EnrollTest, OpenBeforeEnrolSaysWhatToRun) {
  auto id = open_identity(config);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message, "no identity in " + (dir / "state" / "identity").string() +
                                    ": run `certagent enroll --config /etc/certagent/certagent.yaml`");
}

TEST_P(EnrollTest, EnrolIsIdempotentAndSealsBrokerSecrets) {
  EnrollOptions options;
  options.csr_out = dir / "identity.csr";
  options.csr_subject = "/CN=host-42/O=Example";
  auto first = enroll(config, options);
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(first->backend, GetParam());
  EXPECT_TRUE(first->created);
  EXPECT_EQ(first->fingerprint_sha256, openssl_fingerprint(first->public_key_pem));
  EXPECT_EQ(first->sealed, (std::vector<std::string>{"ca.eab_hmac", "lemur.lemur_token", "pki.cfssl_auth"}));
  EXPECT_TRUE(first->already_sealed.empty());
  // Plaintext gone.
  EXPECT_FALSE(fs::exists(dir / "secrets" / "eab.key"));
  EXPECT_FALSE(fs::exists(dir / "secrets" / "cfssl.hex"));
  EXPECT_FALSE(fs::exists(dir / "secrets" / "lemur.jwt"));
  const std::string text = format_report(*first);
  EXPECT_EQ(text.rfind(first->public_key_pem, 0), 0u);
  EXPECT_NE(text.find("\nsha256:" + first->fingerprint_sha256 + "\n"), std::string::npos);

  // The CSR is signed by the identity and carries its key and the subject.
  const std::string csr_pem = read_file(dir / "identity.csr");
  crypto::BioPtr bio(BIO_new_mem_buf(csr_pem.data(), static_cast<int>(csr_pem.size())));
  crypto::X509ReqPtr req(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  ASSERT_TRUE(req);
  crypto::BioPtr pub_bio(BIO_new_mem_buf(first->public_key_pem.data(), static_cast<int>(first->public_key_pem.size())));
  crypto::EvpPkeyPtr pub(PEM_read_bio_PUBKEY(pub_bio.get(), nullptr, nullptr, nullptr));
  EXPECT_EQ(X509_REQ_verify(req.get(), pub.get()), 1);
  char cn[64] = {0};
  X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(req.get()), NID_commonName, cn, sizeof cn);
  EXPECT_STREQ(cn, "host-42");

  // The daemon's view: open_identity finds the identity and the secrets.
  {
    auto id = open_identity(config);
    ASSERT_TRUE(id) << id.error().message;
    EXPECT_EQ((*id)->public_key_pem(), first->public_key_pem);
    auto mac = (*id)->hmac("ca.eab_hmac", as_bytes("payload"));
    ASSERT_TRUE(mac) << mac.error().message;
    EXPECT_EQ(*mac, openssl_hmac("a secret EAB key!", "payload"));
    mac = (*id)->hmac("pki.cfssl_auth", as_bytes("request"));
    ASSERT_TRUE(mac);
    EXPECT_EQ(*mac, openssl_hmac(cfssl_key, "request"));
    auto token = (*id)->unseal("lemur.lemur_token");
    ASSERT_TRUE(token) << token.error().message;
    EXPECT_EQ(token->view(), jwt);
  }

  // Second run: same key, nothing to seal, nothing created.
  auto second = enroll(config, {});
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_FALSE(second->created);
  EXPECT_EQ(second->public_key_pem, first->public_key_pem);
  EXPECT_EQ(second->fingerprint_sha256, first->fingerprint_sha256);
  EXPECT_TRUE(second->sealed.empty());
  EXPECT_EQ(second->already_sealed, (std::vector<std::string>{"ca.eab_hmac", "lemur.lemur_token", "pki.cfssl_auth"}));

  // A new key file (rotation) is sealed again and replaces the old one.
  write_file(dir / "secrets" / "eab.key", "bmV3IGtleQ==", fs::perms(0600));  // "new key", padded base64
  auto third = enroll(config, {});
  ASSERT_TRUE(third) << third.error().message;
  EXPECT_EQ(third->sealed, (std::vector<std::string>{"ca.eab_hmac"}));
  auto id = open_identity(config);
  ASSERT_TRUE(id);
  EXPECT_EQ(*(*id)->hmac("ca.eab_hmac", as_bytes("payload")), openssl_hmac("new key", "payload"));
}

TEST_P(EnrollTest, BadOrMissingSecretFilesAreErrorsAndKeepThePlaintext) {
  // Brokers are processed in name order: ca, lemur, pki.
  fs::remove(dir / "secrets" / "lemur.jwt");
  auto r = enroll(config, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("brokers.lemur.token_file " + (dir / "secrets" / "lemur.jwt").string() +
                                   " does not exist and no sealed copy of \"lemur.lemur_token\""),
            std::string::npos)
      << r.error().message;

  write_file(dir / "secrets" / "real.jwt", jwt, fs::perms(0600));
  fs::create_symlink(dir / "secrets" / "real.jwt", dir / "secrets" / "lemur.jwt");
  r = enroll(config, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("is a symbolic link"), std::string::npos) << r.error().message;
  EXPECT_TRUE(fs::exists(dir / "secrets" / "real.jwt"));

  fs::remove(dir / "secrets" / "lemur.jwt");
  write_file(dir / "secrets" / "lemur.jwt", jwt, fs::perms(0600));
  write_file(dir / "secrets" / "cfssl.hex", "not hex at all", fs::perms(0600));
  r = enroll(config, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("brokers.pki.auth_key_file " + (dir / "secrets" / "cfssl.hex").string() +
                                   " is not a hex key"),
            std::string::npos)
      << r.error().message;
  EXPECT_TRUE(fs::exists(dir / "secrets" / "cfssl.hex"));

  write_file(dir / "secrets" / "cfssl.hex", "00ff", fs::perms(0600));
  r = enroll(config, {});
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->sealed, (std::vector<std::string>{"pki.cfssl_auth"}));
  EXPECT_EQ(r->already_sealed, (std::vector<std::string>{"ca.eab_hmac", "lemur.lemur_token"}));
}

TEST_P(EnrollTest, UnknownBackendIsAConfigurationError) {
  config.identity.backend = "hsm";
  auto id = open_identity(config);
  ASSERT_FALSE(id);
  EXPECT_TRUE(id.error().configuration);
  EXPECT_NE(id.error().message.find("identity.backend \"hsm\" is unknown"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Backends, EnrollTest, ::testing::Values("file", "tpm"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace certagent::tpm
