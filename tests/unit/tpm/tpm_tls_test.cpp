// TLS client authentication with the TPM identity against an in-process OpenSSL server that
// requires client certificates: exactly one TPM command (TPM2_Sign) per handshake.

#include "tpm/tpm_identity.h"

#include "tests/support/test_support.h"
#include "tests/support/swtpm.h"
#include "tests/support/tls_test_util.h"

#include <openssl/err.h>
#include <openssl/pem.h>

#include <gtest/gtest.h>

namespace certagent::tpm {
namespace {

crypto::EvpPkeyPtr read_public(const std::string& pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return crypto::EvpPkeyPtr(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
}

class TpmTlsTest : public ::testing::TestWithParam<int> {
 protected:
  certagent::test::TempDir dir{"certagent-tpmtls"};
  test::Swtpm tpm{dir / "swtpm"};
};

TEST_P(TpmTlsTest, ClientAuthWithOneTpmCommandPerHandshake) {
  auto id = TpmIdentity::open({dir / "identity", tpm.tcti(), "enroll"}, OpenMode::create_if_missing);
  ASSERT_TRUE(id) << id.error().message;
  auto key = (*id)->private_key();
  ASSERT_TRUE(key);
  test::TestCa ca = test::make_ca("identity ca");
  crypto::EvpPkeyPtr pub = read_public((*id)->public_key_pem());
  crypto::X509Ptr cert = test::issue(ca, pub.get(), "host-identity");
  auto server = test::make_server_ctx(ca, GetParam());
  auto client = test::make_client_ctx(ca, cert.get(), key->get(), GetParam());
  ERR_clear_error();
  for (int i = 0; i < 5; ++i) {
    const auto commands = (*id)->command_count();
    const auto signs = (*id)->sign_count();
    test::HandshakeResult r = test::handshake(client.get(), server.get());
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.version, GetParam() == TLS1_3_VERSION ? "TLSv1.3" : "TLSv1.2");
    EXPECT_EQ(r.peer_cn, "host-identity");
    EXPECT_EQ((*id)->sign_count() - signs, 1u);
    EXPECT_EQ((*id)->command_count() - commands, 1u);
    EXPECT_EQ(ERR_peek_error(), 0u) << test::openssl_errors();
  }

  // Negative control: a certificate for another key does not pair with the TPM key.
  crypto::EvpPkeyPtr other = test::make_p256_key();
  crypto::X509Ptr wrong = test::issue(ca, other.get(), "impostor");
  crypto::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  ASSERT_EQ(SSL_CTX_use_certificate(ctx.get(), wrong.get()), 1);
  EXPECT_NE(SSL_CTX_use_PrivateKey(ctx.get(), key->get()), 1);
  ERR_clear_error();
}

INSTANTIATE_TEST_SUITE_P(Versions, TpmTlsTest, ::testing::Values(TLS1_3_VERSION, TLS1_2_VERSION),
                         [](const auto& info) { return info.param == TLS1_3_VERSION ? "tls13" : "tls12"; });

}  // namespace
}  // namespace certagent::tpm
