#include "core/crypto/errors.h"
#include "core/crypto/keys.h"

#include <gtest/gtest.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

namespace certagent::crypto {
namespace {

TEST(KeyTypes, NamesRoundTrip) {
  for (auto k : {KeyType::ecdsa_p256, KeyType::ecdsa_p384, KeyType::rsa_2048, KeyType::rsa_3072,
                 KeyType::rsa_4096, KeyType::ed25519}) {
    EXPECT_EQ(parse_key_type(to_string(k)), k) << to_string(k);
  }
  EXPECT_EQ(to_string(KeyType::ecdsa_p256), "ecdsa-p256");
  EXPECT_FALSE(parse_key_type("rsa-1024").has_value());
  EXPECT_FALSE(parse_key_type("ECDSA-P256").has_value());
}

struct KeyCase {
  KeyType type;
  const char* algorithm;
  int bits;
};

class KeyTypeTest : public ::testing::TestWithParam<KeyCase> {};

// One key per type (RSA-4096 generation alone takes seconds on a busy 2-core machine).
TEST_P(KeyTypeTest, GeneratesTheTypeAndRoundTripsThroughPkcs8Pem) {
  auto key = generate_key(GetParam().type);
  ASSERT_TRUE(key) << key.error().message;
  EXPECT_TRUE(EVP_PKEY_is_a(key->get(), GetParam().algorithm));
  EXPECT_EQ(EVP_PKEY_get_bits(key->get()), GetParam().bits);

  auto pem = private_key_pem(key->get());
  ASSERT_TRUE(pem) << pem.error().message;
  EXPECT_EQ(pem->view().substr(0, 28), "-----BEGIN PRIVATE KEY-----\n");  // PKCS#8, unencrypted
  EXPECT_NE(pem->view().find("-----END PRIVATE KEY-----"), std::string_view::npos);

  auto back = parse_private_key(pem->view());
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_TRUE(same_public_key(back->get(), key->get()));
  auto again = private_key_pem(back->get());
  ASSERT_TRUE(again);
  EXPECT_EQ(again->view(), pem->view());
  EXPECT_EQ(public_key_pem(back->get()), public_key_pem(key->get()));
  EXPECT_EQ(ERR_peek_error(), 0u) << "no stale OpenSSL errors left behind";
}

INSTANTIATE_TEST_SUITE_P(AllKeyTypes, KeyTypeTest,
                         ::testing::Values(KeyCase{KeyType::ecdsa_p256, "EC", 256},
                                           KeyCase{KeyType::ecdsa_p384, "EC", 384},
                                           KeyCase{KeyType::rsa_2048, "RSA", 2048},
                                           KeyCase{KeyType::rsa_3072, "RSA", 3072},
                                           KeyCase{KeyType::rsa_4096, "RSA", 4096},
                                           KeyCase{KeyType::ed25519, "ED25519", 256}));

TEST(Keys, EveryKeyIsFresh) {
  auto a = generate_key(KeyType::ecdsa_p256);
  auto b = generate_key(KeyType::ecdsa_p256);
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(same_public_key(a->get(), b->get()));
  EXPECT_TRUE(same_public_key(a->get(), a->get()));
}

TEST(Keys, SamePublicKeyAcrossTypesIsFalseAndLeavesNoError) {
  auto ec = generate_key(KeyType::ecdsa_p256);
  auto ed = generate_key(KeyType::ed25519);
  ASSERT_TRUE(ec && ed);
  EXPECT_FALSE(same_public_key(ec->get(), ed->get()));
  EXPECT_FALSE(same_public_key(ec->get(), nullptr));
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST(Keys, PublicKeyPemIsSubjectPublicKeyInfo) {
  auto key = generate_key(KeyType::ed25519);
  ASSERT_TRUE(key);
  const std::string pem = public_key_pem(key->get());
  EXPECT_EQ(pem.rfind("-----BEGIN PUBLIC KEY-----", 0), 0u);
  EXPECT_EQ(pem.find("PRIVATE"), std::string::npos);
}

TEST(Keys, ParsePrivateKeyRejectsBadInput) {
  auto empty = parse_private_key("");
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("empty"), std::string::npos);

  auto garbage = parse_private_key("not a key at all\n");
  ASSERT_FALSE(garbage);
  EXPECT_NE(garbage.error().message.find("not a readable"), std::string::npos);

  auto huge = parse_private_key(std::string(100 * 1024, 'A'));
  ASSERT_FALSE(huge);
  EXPECT_NE(huge.error().message.find("more than"), std::string::npos);
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST(Keys, EncryptedKeyIsRefusedWithoutPrompting) {
  auto key = generate_key(KeyType::ecdsa_p256);
  ASSERT_TRUE(key);
  BioPtr bio(BIO_new(BIO_s_mem()));
  static char pass[] = "secret-passphrase";
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(bio.get(), key->get(), EVP_aes_256_cbc(), pass,
                                          sizeof pass - 1, nullptr, nullptr),
            1);
  const std::string pem = bio_to_string(bio.get());
  ASSERT_NE(pem.find("ENCRYPTED PRIVATE KEY"), std::string::npos);
  auto parsed = parse_private_key(pem);
  ASSERT_FALSE(parsed);
  EXPECT_NE(parsed.error().message.find("private key"), std::string::npos);
}

TEST(Keys, OpensslErrorDrainsTheQueueIntoTheMessage) {
  ERR_clear_error();
  BioPtr bio(BIO_new_mem_buf("garbage", 7));
  EXPECT_EQ(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), nullptr);
  ASSERT_NE(ERR_peek_error(), 0u);
  const Error e = openssl_error("reading a certificate");
  EXPECT_EQ(e.message.rfind("reading a certificate: ", 0), 0u);
  EXPECT_NE(e.message.find("no start line"), std::string::npos) << e.message;
  EXPECT_EQ(ERR_peek_error(), 0u);
  EXPECT_EQ(openssl_error("nothing queued").message, "nothing queued: unknown OpenSSL error");
}

// The secure heap is process-wide and set once: this test initialises it for every test of this
// binary that runs after it (they then run with keys in it, as the daemon does).
TEST(SecureHeap, PrivatePartsOfEveryKeyTypeGoThereAndSizingFollowsTheInFlightKeys) {
  const SecureHeapState heap = init_secure_heap(64 * 1024);
  ASSERT_EQ(heap.bytes, 64u * 1024);
  EXPECT_TRUE(heap.locked);  // root, or RLIMIT_MEMLOCK >= 64 KiB
  EXPECT_EQ(init_secure_heap(1 << 20).bytes, heap.bytes);  // once only
  for (auto type : {KeyType::ecdsa_p256, KeyType::ecdsa_p384, KeyType::ed25519,
                    KeyType::rsa_2048}) {
    auto warm = generate_key(type);  // the generators' state is made on first use
    ASSERT_TRUE(warm);
    const std::size_t before = CRYPTO_secure_used();
    auto key = generate_key(type);
    ASSERT_TRUE(key);
    const std::size_t used = CRYPTO_secure_used() - before;
    EXPECT_GE(used, secure_heap_bytes_per_key(type)) << static_cast<int>(type);
    // Read back from PEM (the file sink checks keys on disk): there too.
    auto pem = private_key_pem(key->get());
    ASSERT_TRUE(pem);
    const std::size_t before_parse = CRYPTO_secure_used();
    auto parsed = parse_private_key(pem->view());
    ASSERT_TRUE(parsed);
    EXPECT_GT(CRYPTO_secure_used(), before_parse) << static_cast<int>(type);
    key->reset();
    parsed->reset();
    EXPECT_EQ(CRYPTO_secure_used(), before) << static_cast<int>(type);
  }

  // 1,000 ecdsa-p256 certificates on one broker, 8 in flight: the minimum.
  EXPECT_EQ(secure_heap_size({{KeyType::ecdsa_p256, 8}}), 64u * 1024);
  // All 1,000 in flight at once as rsa-4096.
  EXPECT_EQ(secure_heap_size({{KeyType::rsa_4096, 1000}}), 8u * 1024 * 1024);
}

}  // namespace
}  // namespace certagent::crypto
