#include "core/crypto/csr.h"
#include "core/crypto/keys.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>

namespace certagent::crypto {
namespace {

using crypto::KeyType;

SubjectNames full_names() {
  return SubjectNames{"web.internal",
                      {"web.internal", "localhost"},
                      {"127.0.0.1", "::1", "2001:db8::7"},
                      {"spiffe://example.org/web"}};
}

X509ReqPtr built(EVP_PKEY* key, const SubjectNames& names) {
  auto pem = build_csr(key, names);
  EXPECT_TRUE(pem) << pem.error().message;
  if (!pem) return nullptr;
  EXPECT_EQ(pem->rfind("-----BEGIN CERTIFICATE REQUEST-----", 0), 0u);
  auto req = parse_csr(*pem);
  EXPECT_TRUE(req) << req.error().message;
  return req ? std::move(*req) : nullptr;
}

std::string der_of_key(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key, &der);
  std::string out(reinterpret_cast<char*>(der), len > 0 ? static_cast<std::size_t>(len) : 0);
  OPENSSL_free(der);
  return out;
}

std::string der_of_spki(X509_PUBKEY* spki) {
  unsigned char* der = nullptr;
  const int len = i2d_X509_PUBKEY(spki, &der);
  std::string out(reinterpret_cast<char*>(der), len > 0 ? static_cast<std::size_t>(len) : 0);
  OPENSSL_free(der);
  return out;
}

struct SigCase {
  KeyType type;
  int signature_nid;
};

class CsrKeyTypeTest : public ::testing::TestWithParam<SigCase> {};

TEST_P(CsrKeyTypeTest, CarriesNamesKeyAndSignature) {
  auto key = generate_key(GetParam().type);
  ASSERT_TRUE(key);
  auto req = built(key->get(), full_names());
  ASSERT_TRUE(req);
  EXPECT_TRUE(verify_csr_signature(req.get()));
  EXPECT_EQ(X509_REQ_get_signature_nid(req.get()), GetParam().signature_nid);
  EXPECT_TRUE(same_public_key(X509_REQ_get0_pubkey(req.get()), key->get()));
  // The SPKI written without the encoder round trip is byte-identical to OpenSSL's own.
  EXPECT_EQ(der_of_key(key->get()), der_of_spki(X509_REQ_get_X509_PUBKEY(req.get())));
  X509Ptr cert(X509_new());
  ASSERT_TRUE(copy_public_key(req.get(), cert.get()));
  EXPECT_EQ(der_of_key(key->get()), der_of_spki(X509_get_X509_PUBKEY(cert.get())));
  auto names = csr_names(req.get());
  ASSERT_TRUE(names) << names.error().message;
  EXPECT_EQ(names->common_name, "web.internal");
  EXPECT_EQ(names->dns_names, (std::vector<std::string>{"web.internal", "localhost"}));
  EXPECT_EQ(names->ip_addresses, (std::vector<std::string>{"127.0.0.1", "::1", "2001:db8::7"}));
  EXPECT_EQ(names->uris, (std::vector<std::string>{"spiffe://example.org/web"}));
  EXPECT_TRUE(name_differences(full_names(), *names).empty());
}

INSTANTIATE_TEST_SUITE_P(SignatureAlgorithms, CsrKeyTypeTest,
                         ::testing::Values(SigCase{KeyType::ecdsa_p256, NID_ecdsa_with_SHA256},
                                           SigCase{KeyType::ecdsa_p384, NID_ecdsa_with_SHA256},
                                           SigCase{KeyType::rsa_2048, NID_sha256WithRSAEncryption},
                                           SigCase{KeyType::ed25519, NID_ED25519}));

TEST(Csr, SanIsNonCriticalWithACommonNameAndCriticalWithout) {
  auto key = generate_key(KeyType::ecdsa_p256);
  ASSERT_TRUE(key);
  for (bool with_cn : {true, false}) {
    SubjectNames names{with_cn ? "a.example" : "", {"a.example"}, {}, {}};
    auto req = built(key->get(), names);
    ASSERT_TRUE(req);
    STACK_OF(X509_EXTENSION)* exts = X509_REQ_get_extensions(req.get());
    ASSERT_NE(exts, nullptr);
    ASSERT_EQ(sk_X509_EXTENSION_num(exts), 1);
    X509_EXTENSION* ext = sk_X509_EXTENSION_value(exts, 0);
    EXPECT_EQ(OBJ_obj2nid(X509_EXTENSION_get_object(ext)), NID_subject_alt_name);
    EXPECT_EQ(X509_EXTENSION_get_critical(ext), with_cn ? 0 : 1);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_NAME* subject = X509_REQ_get_subject_name(req.get());
    EXPECT_EQ(X509_NAME_entry_count(subject), with_cn ? 1 : 0);
  }
}

TEST(Csr, CommonNameOnlyHasNoExtensionRequest) {
  auto key = generate_key(KeyType::ecdsa_p256);
  ASSERT_TRUE(key);
  auto req = built(key->get(), SubjectNames{"client-7", {}, {}, {}});
  ASSERT_TRUE(req);
  auto names = csr_names(req.get());
  ASSERT_TRUE(names) << names.error().message;
  EXPECT_EQ(names->common_name, "client-7");
  EXPECT_FALSE(names->has_alt_names());
}

TEST(Csr, RejectsBadNamesWithClearMessages) {
  auto key = generate_key(KeyType::ecdsa_p256);
  ASSERT_TRUE(key);
  struct Bad {
    SubjectNames names;
    const char* expected;
  };
  const std::vector<Bad> cases = {
      {SubjectNames{}, "needs a common name or at least one"},
      {SubjectNames{"", {}, {"300.1.1.1"}, {}}, "\"300.1.1.1\" is not an IPv4 or IPv6 address"},
      {SubjectNames{"", {}, {"web.internal"}, {}}, "is not an IPv4 or IPv6 address"},
      {SubjectNames{"", {"bad name"}, {}, {}}, "is not printable ASCII"},
      {SubjectNames{"", {"b\xc3\xbcro.example"}, {}, {}}, "xn--"},
      {SubjectNames{"", {""}, {}, {}}, "DNS name"},
      {SubjectNames{"", {}, {}, {"no-scheme"}}, "not an absolute URI"},
      {SubjectNames{std::string(65, 'c'), {}, {}, {}}, "at most 64 characters"},
  };
  for (const auto& c : cases) {
    auto r = build_csr(key->get(), c.names);
    ASSERT_FALSE(r) << c.expected;
    EXPECT_NE(r.error().message.find(c.expected), std::string::npos) << r.error().message;
  }
}

TEST(Csr, SignatureByAnotherKeyDoesNotVerify) {
  auto a = generate_key(KeyType::ecdsa_p256);
  auto b = generate_key(KeyType::ecdsa_p256);
  ASSERT_TRUE(a && b);
  X509ReqPtr req(X509_REQ_new());
  X509_REQ_set_pubkey(req.get(), a->get());
  ASSERT_GT(X509_REQ_sign(req.get(), b->get(), EVP_sha256()), 0);
  auto ok = verify_csr_signature(req.get());
  ASSERT_FALSE(ok);
  EXPECT_NE(ok.error().message.find("CSR signature does not verify"), std::string::npos);
}

TEST(Csr, ParseRejectsGarbageAndOversizedInput) {
  EXPECT_FALSE(parse_csr(""));
  EXPECT_FALSE(parse_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"));
  auto big = parse_csr(std::string(70 * 1024, 'x'));
  ASSERT_FALSE(big);
  EXPECT_NE(big.error().message.find("more than"), std::string::npos);
}

TEST(Csr, NamesRejectUnsupportedSanKinds) {
  auto key = generate_key(KeyType::ecdsa_p256);
  ASSERT_TRUE(key);
  X509ReqPtr req(X509_REQ_new());
  X509_REQ_set_pubkey(req.get(), key->get());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, nullptr, nullptr, req.get(), nullptr, 0);
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  sk_X509_EXTENSION_push(exts, X509V3_EXT_nconf_nid(nullptr, &ctx, NID_subject_alt_name,
                                                    "DNS:a.example,email:ops@example.org"));
  X509_REQ_add_extensions(req.get(), exts);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  ASSERT_GT(X509_REQ_sign(req.get(), key->get(), EVP_sha256()), 0);
  auto names = csr_names(req.get());
  ASSERT_FALSE(names);
  EXPECT_NE(names.error().message.find("email:ops@example.org"), std::string::npos);
}

// Found by fuzz_csr: an iPAddress name of 5 bytes was read as the text "invalid-ip:<hex>" among
// the CSR's IP addresses; it is no address, so the CSR is refused like other unreadable names.
TEST(Csr, AnIpAddressNameOfNeitherFourNorSixteenBytesIsRefused) {
  auto key = generate_key(KeyType::ecdsa_p256);
  ASSERT_TRUE(key);
  X509ReqPtr req(X509_REQ_new());
  X509_REQ_set_pubkey(req.get(), key->get());
  GENERAL_NAMES* gens = GENERAL_NAMES_new();
  GENERAL_NAME* gn = GENERAL_NAME_new();
  ASN1_OCTET_STRING* five = ASN1_OCTET_STRING_new();
  const unsigned char bytes[] = {127, 0, 0, 1, 9};
  ASSERT_EQ(ASN1_OCTET_STRING_set(five, bytes, sizeof bytes), 1);
  GENERAL_NAME_set0_value(gn, GEN_IPADD, five);
  sk_GENERAL_NAME_push(gens, gn);
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  sk_X509_EXTENSION_push(exts, X509V3_EXT_i2d(NID_subject_alt_name, 0, gens));
  GENERAL_NAMES_free(gens);
  X509_REQ_add_extensions(req.get(), exts);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  ASSERT_GT(X509_REQ_sign(req.get(), key->get(), EVP_sha256()), 0);
  auto names = csr_names(req.get());
  ASSERT_FALSE(names) << (names && !names->ip_addresses.empty() ? names->ip_addresses.front() : "");
  EXPECT_NE(names.error().message.find("an IP address of 5 bytes"), std::string::npos) << names.error().message;
}

TEST(Names, CanonicalIp) {
  EXPECT_EQ(canonical_ip("127.0.0.1"), "127.0.0.1");
  EXPECT_EQ(canonical_ip("0:0:0:0:0:0:0:1"), "::1");
  EXPECT_EQ(canonical_ip("2001:DB8:0:0::1"), "2001:db8::1");
  EXPECT_EQ(canonical_ip("web.internal"), std::nullopt);
  EXPECT_EQ(canonical_ip("1.2.3"), std::nullopt);
  EXPECT_EQ(canonical_ip(""), std::nullopt);
}

TEST(Names, DifferencesAreSetsWithCaseFoldedDnsAndCanonicalIps) {
  const SubjectNames want{"Web.Internal", {"a.example", "B.example"}, {"::1"}, {"spiffe://x/y"}};
  EXPECT_TRUE(name_differences(want, SubjectNames{"web.internal",
                                                  {"b.example", "A.EXAMPLE", "a.example"},
                                                  {"0:0::1"},
                                                  {"spiffe://x/y"}})
                  .empty());
  const auto diff = name_differences(
      want, SubjectNames{"other", {"a.example", "c.example"}, {"::2"}, {"spiffe://X/y"}});
  const std::vector<std::string> expected = {
      "common name is \"other\", requested \"Web.Internal\"",
      "missing DNS name B.example",
      "unexpected DNS name c.example",
      "missing IP address ::1",
      "unexpected IP address ::2",
      "missing URI spiffe://x/y",
      "unexpected URI spiffe://X/y",
  };
  EXPECT_EQ(diff, expected);
  EXPECT_EQ(name_differences(SubjectNames{"", {"a"}, {}, {}}, SubjectNames{"a", {"a"}, {}, {}}),
            std::vector<std::string>{"unexpected common name \"a\""});
  EXPECT_EQ(name_differences(SubjectNames{"a", {}, {}, {}}, SubjectNames{}),
            std::vector<std::string>{"missing common name \"a\""});
}

}  // namespace
}  // namespace certagent::crypto
