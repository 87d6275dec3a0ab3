// The delegated EVP key (in-process provider) with a software signer: exactly one signer call
// per signature, in TLS 1.2/1.3 client auth, X509_REQ_sign and EVP_DigestSign.

#include "tpm/tpm_evp_key.h"

#include "tests/support/tls_test_util.h"

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>

#include <atomic>

namespace certagent::tpm {
namespace {

class SoftwareSigner final : public DigestSigner {
 public:
  explicit SoftwareSigner(EVP_PKEY* key) : key_(key) {}
  Result<std::vector<std::uint8_t>> sign_digest(std::span<const std::uint8_t> digest) override {
    ++calls;
    crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key_, nullptr));
    std::vector<std::uint8_t> sig(kMaxEcdsaP256DerSize);
    std::size_t len = sig.size();
    if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 ||
        EVP_PKEY_sign(ctx.get(), sig.data(), &len, digest.data(), digest.size()) != 1)
      return make_error("software sign failed");
    sig.resize(len);
    return sig;
  }
  std::atomic<int> calls{0};

 private:
  EVP_PKEY* key_;
};

struct Fixture : ::testing::Test {
  crypto::EvpPkeyPtr soft = test::make_p256_key();
  std::shared_ptr<SoftwareSigner> signer = std::make_shared<SoftwareSigner>(soft.get());
  crypto::EvpPkeyPtr key = make_delegated_ec_key(soft.get(), signer).value();
};

TEST_F(Fixture, DigestSignMakesOneSignerCallAndVerifies) {
  const std::string msg = "hello identity";
  crypto::EvpMdCtxPtr md(EVP_MD_CTX_new());
  ASSERT_EQ(EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key.get()), 1)
      << test::openssl_errors();
  std::size_t len = 0;
  ASSERT_EQ(EVP_DigestSign(md.get(), nullptr, &len, nullptr, 0), 1);
  EXPECT_EQ(signer->calls, 0);
  std::vector<unsigned char> sig(len);
  ASSERT_EQ(EVP_DigestSign(md.get(), sig.data(), &len,
                           reinterpret_cast<const unsigned char*>(msg.data()), msg.size()),
            1)
      << test::openssl_errors();
  sig.resize(len);
  EXPECT_EQ(signer->calls, 1);

  crypto::EvpMdCtxPtr v(EVP_MD_CTX_new());
  ASSERT_EQ(EVP_DigestVerifyInit(v.get(), nullptr, EVP_sha256(), nullptr, soft.get()), 1);
  EXPECT_EQ(EVP_DigestVerify(v.get(), sig.data(), sig.size(),
                             reinterpret_cast<const unsigned char*>(msg.data()), msg.size()),
            1);
}

TEST_F(Fixture, StreamingDigestSignAlsoOneCall) {
  crypto::EvpMdCtxPtr md(EVP_MD_CTX_new());
  ASSERT_EQ(EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key.get()), 1);
  ASSERT_EQ(EVP_DigestSignUpdate(md.get(), "abc", 3), 1);
  std::size_t len = 0;
  ASSERT_EQ(EVP_DigestSignFinal(md.get(), nullptr, &len), 1);
  std::vector<unsigned char> sig(len);
  ASSERT_EQ(EVP_DigestSignFinal(md.get(), sig.data(), &len), 1) << test::openssl_errors();
  EXPECT_EQ(signer->calls, 1);
}

TEST_F(Fixture, GeneralEcFetchesStayWithTheDefaultProvider) {
  // The provider lives in its own library context: "EC" elsewhere in the daemon is untouched.
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  ASSERT_TRUE(ctx);
  ASSERT_EQ(EVP_PKEY_keygen_init(ctx.get()), 1);
  EXPECT_STREQ(OSSL_PROVIDER_get0_name(EVP_PKEY_CTX_get0_provider(ctx.get())), "default");
  crypto::EvpPkeyPtr fresh = test::make_p256_key();
  EXPECT_STREQ(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(fresh.get())), "default");
  EXPECT_STREQ(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key.get())), "certagent-identity");
}

TEST_F(Fixture, RefusesOtherDigests) {
  crypto::EvpMdCtxPtr md(EVP_MD_CTX_new());
  EXPECT_NE(EVP_DigestSignInit(md.get(), nullptr, EVP_sha384(), nullptr, key.get()), 1);
  ERR_clear_error();
  EXPECT_EQ(signer->calls, 0);
}

TEST_F(Fixture, PublicKeyExportsButPrivateDoesNot) {
  EXPECT_EQ(test::public_key_pem(key.get()), test::public_key_pem(soft.get()));
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  EXPECT_NE(PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr), 1);
  ERR_clear_error();
  EXPECT_EQ(EVP_PKEY_get_bits(key.get()), 256);
  EXPECT_EQ(EVP_PKEY_eq(key.get(), soft.get()), 1);
  crypto::EvpPkeyPtr other = test::make_p256_key();
  EXPECT_NE(EVP_PKEY_eq(key.get(), other.get()), 1);
  ERR_clear_error();
}

TEST_F(Fixture, CsrSignedByDelegatedKey) {
  crypto::X509ReqPtr req(X509_REQ_new());
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("h"), -1, -1, 0);
  ASSERT_EQ(X509_REQ_set_pubkey(req.get(), key.get()), 1) << test::openssl_errors();
  ASSERT_GT(X509_REQ_sign(req.get(), key.get(), EVP_sha256()), 0) << test::openssl_errors();
  EXPECT_EQ(signer->calls, 1);
  EXPECT_EQ(X509_REQ_verify(req.get(), soft.get()), 1);
  // Verification with the delegated key itself needs no signer call.
  EXPECT_EQ(X509_REQ_verify(req.get(), key.get()), 1) << test::openssl_errors();
  EXPECT_EQ(signer->calls, 1);
}

TEST_F(Fixture, TlsClientAuthOneSignPerHandshake) {
  test::TestCa ca = test::make_ca("test ca");
  crypto::X509Ptr cert = test::issue(ca, soft.get(), "delegated-client");
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    crypto::SslCtxPtr server = test::make_server_ctx(ca, version);
    crypto::SslCtxPtr client = test::make_client_ctx(ca, cert.get(), key.get(), version);
    int before = signer->calls;
    test::HandshakeResult r = test::handshake(client.get(), server.get());
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.peer_cn, "delegated-client");
    EXPECT_EQ(signer->calls - before, 1) << r.version;
    EXPECT_EQ(ERR_peek_error(), 0u) << test::openssl_errors();
  }
}

}  // namespace
}  // namespace certagent::tpm
