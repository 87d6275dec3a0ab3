// The file backend (development, and the TPM's fake in other modules' tests).

#include "tpm/file_identity.h"

#include "core/logging.h"
#include "tests/support/test_support.h"
#include "tests/support/tls_test_util.h"

#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <spdlog/sinks/ostream_sink.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <sstream>

namespace certagent::tpm {
namespace {

using certagent::test::TempDir;

unsigned mode_of(const fs::path& p) {
  struct stat st {};
  ::stat(p.c_str(), &st);
  return st.st_mode & 0777;
}

Bytes sha256(std::string_view data) {
  Bytes out(32);
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

class FileIdentityTest : public ::testing::Test {
 protected:
  TempDir dir{"certagent-fileid"};
  FileIdentityOptions options{dir / "state" / "identity", "run `certagent enroll --config c.yaml`"};
};

TEST_F(FileIdentityTest, OpenWithoutKeyFailsAndCreatesNothing) {
  auto id = FileIdentity::open(options, OpenMode::existing);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message,
            "no identity in " + options.dir.string() + ": run `certagent enroll --config c.yaml`");
  EXPECT_FALSE(fs::exists(options.dir));
}

TEST_F(FileIdentityTest, CreatesKey0600AndReopensSameKeyWithWarning) {
  std::ostringstream captured;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured);
  auto logger = log::get("tpm");
  logger->sinks().push_back(sink);
  std::string pem;
  {
    auto id = FileIdentity::open(options, OpenMode::create_if_missing);
    ASSERT_TRUE(id) << id.error().message;
    EXPECT_TRUE((*id)->created());
    EXPECT_EQ((*id)->backend(), "file");
    pem = (*id)->public_key_pem();
  }
  EXPECT_EQ(mode_of(options.dir), 0700u);
  EXPECT_EQ(mode_of(options.dir / "file-identity.key"), 0600u);
  auto id = FileIdentity::open(options, OpenMode::existing);
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_FALSE((*id)->created());
  EXPECT_EQ((*id)->public_key_pem(), pem);
  logger->sinks().pop_back();
  const std::string log = captured.str();
  std::size_t warnings = 0;
  for (std::size_t pos = 0; (pos = log.find("event=insecure_identity", pos)) != std::string::npos; ++pos) ++warnings;
  EXPECT_EQ(warnings, 2u) << log;
  EXPECT_NE(log.find("not for production"), std::string::npos) << log;
  EXPECT_EQ(log.find("PRIVATE KEY"), std::string::npos);
}

TEST_F(FileIdentityTest, SignHmacSealLikeTheTpm) {
  auto id = FileIdentity::open(options, OpenMode::create_if_missing);
  ASSERT_TRUE(id);
  const Bytes digest = sha256("m");
  auto sig = (*id)->sign_digest(digest);
  ASSERT_TRUE(sig);
  auto key = (*id)->private_key();
  ASSERT_TRUE(key);
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key->get(), nullptr));
  ASSERT_EQ(EVP_PKEY_verify_init(ctx.get()), 1);
  EXPECT_EQ(EVP_PKEY_verify(ctx.get(), sig->data(), sig->size(), digest.data(), digest.size()), 1);
  EXPECT_FALSE((*id)->sign_digest(Bytes(31)));

  ASSERT_TRUE((*id)->import_hmac_key("ca.eab_hmac", as_bytes("Jefe")));
  auto mac = (*id)->hmac("ca.eab_hmac", as_bytes("what do ya want for nothing?"));
  ASSERT_TRUE(mac);
  const Bytes expected = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
                          0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
  EXPECT_EQ(*mac, expected);
  EXPECT_EQ(mode_of(options.dir / "hmac-ca.eab_hmac.key"), 0600u);

  ASSERT_TRUE((*id)->seal("l.lemur_token", as_bytes(std::string(600, 't'))));
  EXPECT_EQ((*id)->unseal("l.lemur_token")->view(), std::string(600, 't'));
  EXPECT_TRUE((*id)->has_secret("l.lemur_token"));
  EXPECT_TRUE((*id)->has_secret("ca.eab_hmac"));
  EXPECT_FALSE((*id)->has_secret("nope"));
  EXPECT_FALSE((*id)->unseal("nope"));
  EXPECT_FALSE((*id)->hmac("nope", as_bytes("x")));
  EXPECT_FALSE((*id)->seal("../escape", as_bytes("x")));
  EXPECT_FALSE(fs::exists(options.dir.parent_path() / "escape"));
  EXPECT_FALSE((*id)->seal("big", Bytes(kMaxSealedSecretSize + 1)));
}

TEST_F(FileIdentityTest, TlsClientAuthAndCsr) {
  auto id = FileIdentity::open(options, OpenMode::create_if_missing);
  ASSERT_TRUE(id);
  auto key = (*id)->private_key();
  ASSERT_TRUE(key);
  test::TestCa ca = test::make_ca("dev ca");
  crypto::X509Ptr cert = test::issue(ca, key->get(), "dev-host");
  auto server = test::make_server_ctx(ca);
  auto client = test::make_client_ctx(ca, cert.get(), key->get());
  auto r = test::handshake(client.get(), server.get());
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.peer_cn, "dev-host");
}

TEST_F(FileIdentityTest, CorruptKeyIsReported) {
  ASSERT_TRUE(FileIdentity::open(options, OpenMode::create_if_missing));
  certagent::test::write_file(options.dir / "file-identity.key", "-----BEGIN PRIVATE KEY-----\ngarbage\n",
                              fs::perms(0600));
  auto id = FileIdentity::open(options, OpenMode::existing);
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("is corrupt"), std::string::npos) << id.error().message;
  // An enrolment does not silently replace it either.
  EXPECT_FALSE(FileIdentity::open(options, OpenMode::create_if_missing));
}

}  // namespace
}  // namespace certagent::tpm
