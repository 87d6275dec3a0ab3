#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "tests/support/test_support.h"
#include "tests/support/test_pki.h"

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <algorithm>

namespace certagent::crypto {
namespace {

using namespace std::chrono_literals;
using test::fixed_now;
using test::TestCert;

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

class X509Test : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto now = fixed_now();
    root_ = test::make_ca("Test Root", now - 24h, now + 24h * 365);
    inter_ = test::make_ca("Test Intermediate", now - 24h, now + 24h * 90, &root_);
    test::CertSpec spec;
    spec.common_name = "web.internal";
    spec.dns_names = {"web.internal"};
    spec.ip_addresses = {"0:0::1", "10.1.2.3"};
    spec.uris = {"spiffe://e/w"};
    spec.extra_san_conf = {"email:ops@example.org"};
    spec.not_before = now - 1h;
    spec.not_after = now + 48h;
    leaf_ = test::make_cert(spec, &inter_);
  }
  std::string chain_pem() const { return to_pem(leaf_.cert.get()) + to_pem(inter_.cert.get()); }

  TestCert root_, inter_, leaf_;
};

TEST_F(X509Test, ParsesAChainInOrderToleratingWhitespace) {
  auto chain = parse_chain("\n\n" + chain_pem() + "\r\n  \n");
  ASSERT_TRUE(chain) << chain.error().message;
  ASSERT_EQ(chain->size(), 2u);
  EXPECT_EQ(X509_cmp((*chain)[0].get(), leaf_.cert.get()), 0);
  EXPECT_EQ(X509_cmp((*chain)[1].get(), inter_.cert.get()), 0);
  EXPECT_EQ(to_pem((*chain)[0].get()), to_pem(leaf_.cert.get()));

  std::string crlf;
  for (char c : chain_pem()) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  auto dos = parse_chain(crlf);
  ASSERT_TRUE(dos) << dos.error().message;
  EXPECT_EQ(dos->size(), 2u);
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST_F(X509Test, ParseChainRejectionsSayWhatIsWrong) {
  const std::string leaf = to_pem(leaf_.cert.get());
  struct Case {
    std::string name;
    std::string input;
    std::string expected;
  };
  // A leaf whose base64 lost its middle lines but kept the END line.
  std::string cut = leaf;
  cut.erase(cut.find('\n') + 1, 200);
  // A well-formed block whose DER has bytes after the certificate.
  std::string der_plus;
  {
    unsigned char* der = nullptr;
    const int len = i2d_X509(leaf_.cert.get(), &der);
    std::string bytes(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
    OPENSSL_free(der);
    bytes += "XYZ";
    BioPtr bio(BIO_new(BIO_s_mem()));
    PEM_write_bio(bio.get(), "CERTIFICATE", "", reinterpret_cast<const unsigned char*>(bytes.data()),
                  static_cast<long>(bytes.size()));
    der_plus = bio_to_string(bio.get());
  }
  auto key = generate_key(crypto::KeyType::ecdsa_p256);
  ASSERT_TRUE(key);
  auto key_pem = private_key_pem(key->get());
  ASSERT_TRUE(key_pem);
  const std::string key_body(key_pem->view().substr(28, 40));

  const std::vector<Case> cases = {
      {"empty", "", "chain is empty: no certificate"},
      {"whitespace", " \n\t\n", "chain is empty: no certificate"},
      {"garbage", "hello world\n", "chain is not PEM: expected \"-----BEGIN CERTIFICATE-----\" at line 1"},
      {"text before", "subject=CN=x\n" + leaf, "chain is not PEM"},
      {"no END line", leaf.substr(0, leaf.size() / 2), "certificate #1 starting at line 1 is truncated"},
      {"second truncated", leaf + leaf.substr(0, 100), "certificate #2 starting at line"},
      {"truncated before next", leaf.substr(0, 200) + "\n" + leaf, "certificate #1 starting at line 1 is truncated"},
      {"base64 cut", cut, "certificate #1 is not valid PEM (bad base64 or truncated)"},
      {"trailing junk", leaf + "junk\n", "unexpected text after certificate #1"},
      {"junk on END line", leaf.substr(0, leaf.size() - 1) + "x\n", "unexpected text after certificate #1"},
      {"private key", leaf + std::string(key_pem->view()),
       "PEM block #2 at line " + std::to_string(std::count(leaf.begin(), leaf.end(), '\n') + 1) +
           " is a \"PRIVATE KEY\", expected only CERTIFICATE blocks"},
      {"der trailing bytes", der_plus, "certificate #1 has 3 unexpected bytes after the certificate DER"},
  };
  for (const auto& c : cases) {
    auto r = parse_chain(c.input);
    ASSERT_FALSE(r) << c.name;
    EXPECT_TRUE(contains(r.error().message, c.expected)) << c.name << ": " << r.error().message;
    EXPECT_FALSE(contains(r.error().message, key_body)) << c.name << ": key material echoed";
    EXPECT_EQ(ERR_peek_error(), 0u) << c.name;
  }
}

TEST_F(X509Test, ParseChainEnforcesCountAndSize) {
  std::string seventeen;
  for (int i = 0; i < 17; ++i) seventeen += to_pem(leaf_.cert.get());
  auto many = parse_chain(seventeen);
  ASSERT_FALSE(many);
  EXPECT_EQ(many.error().message, "chain holds more than 16 certificates");
  EXPECT_TRUE(parse_chain(seventeen.substr(0, seventeen.size() / 17 * 16)));

  auto three = parse_chain(chain_pem() + to_pem(root_.cert.get()), 2);
  ASSERT_FALSE(three);
  EXPECT_EQ(three.error().message, "chain holds more than 2 certificates");

  const std::string pem = chain_pem();
  auto big = parse_chain(pem, 16, pem.size() - 1);
  ASSERT_FALSE(big);
  EXPECT_TRUE(contains(big.error().message, "bytes, more than the limit of")) << big.error().message;
  auto huge = parse_chain(std::string(kMaxChainBytes + 1, '\n'));
  ASSERT_FALSE(huge);
  EXPECT_TRUE(contains(huge.error().message, "more than the limit of 1048576"));
}

TEST_F(X509Test, DescribeReportsTheFacts) {
  const CertInfo info = describe(leaf_.cert.get());
  EXPECT_EQ(info.subject_cn, "web.internal");
  EXPECT_EQ(info.subject_cns, std::vector<std::string>{"web.internal"});
  EXPECT_EQ(info.issuer_cn, "Test Intermediate");
  EXPECT_EQ(info.not_before, fixed_now() - 1h);
  EXPECT_EQ(info.not_after, fixed_now() + 48h);
  EXPECT_EQ(info.dns_names, std::vector<std::string>{"web.internal"});
  EXPECT_EQ(info.ip_addresses, (std::vector<std::string>{"::1", "10.1.2.3"}));
  EXPECT_EQ(info.uris, std::vector<std::string>{"spiffe://e/w"});
  EXPECT_EQ(info.other_names, std::vector<std::string>{"email:ops@example.org"});

  unsigned char md[32];
  unsigned int len = 0;
  ASSERT_EQ(X509_digest(leaf_.cert.get(), EVP_sha256(), md, &len), 1);
  char hex[65];
  for (unsigned i = 0; i < len; ++i) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
  EXPECT_EQ(info.sha256_hex, std::string(hex, 64));

  BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf_.cert.get()), nullptr));
  char* bn_hex = BN_bn2hex(bn.get());
  std::string expected(bn_hex);
  OPENSSL_free(bn_hex);
  for (char& c : expected) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_EQ(info.serial_hex, expected);
  EXPECT_EQ(info.serial_hex.size(), 32u);
}

TEST_F(X509Test, VerifiesAtTheGivenTimeNotTheSystemClock) {
  auto store = trust_store_from_pem(to_pem(root_.cert.get()));
  ASSERT_TRUE(store) << store.error().message;
  const std::vector<X509*> inters{inter_.cert.get()};
  EXPECT_TRUE(verify_chain(leaf_.cert.get(), inters, store->get(), fixed_now()));
  // fixed_now() is in 2026; checks happen at the given instant, whatever today is.
  auto early = verify_chain(leaf_.cert.get(), inters, store->get(), fixed_now() - 2h);
  ASSERT_FALSE(early);
  EXPECT_TRUE(contains(early.error().message, "certificate is not yet valid")) << early.error().message;
  EXPECT_TRUE(contains(early.error().message, "depth 0, CN=web.internal")) << early.error().message;
  auto late = verify_chain(leaf_.cert.get(), inters, store->get(), fixed_now() + 49h);
  ASSERT_FALSE(late);
  EXPECT_TRUE(contains(late.error().message, "certificate has expired")) << late.error().message;

  auto missing = verify_chain(leaf_.cert.get(), {}, store->get(), fixed_now());
  ASSERT_FALSE(missing);
  EXPECT_TRUE(contains(missing.error().message, "unable to get local issuer certificate"))
      << missing.error().message;
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST_F(X509Test, AnIntermediateInTheBundleIsAnAnchor) {
  auto store = trust_store_from_pem(to_pem(inter_.cert.get()));
  ASSERT_TRUE(store);
  EXPECT_TRUE(verify_chain(leaf_.cert.get(), {}, store->get(), fixed_now()));
}

TEST_F(X509Test, AnotherRootDoesNotVerify) {
  const TestCert other = test::make_ca("Other Root", fixed_now() - 24h, fixed_now() + 24h);
  auto store = trust_store_from_pem(to_pem(other.cert.get()));
  ASSERT_TRUE(store);
  auto r = verify_chain(leaf_.cert.get(), {inter_.cert.get()}, store->get(), fixed_now());
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "chain does not verify to the trust bundle")) << r.error().message;
}

TEST_F(X509Test, TrustStoreFromFileAcceptsCommentsAndRejectsBrokenBundles) {
  test::TempDir dir;
  test::write_file(dir / "bundle.pem", "# corporate roots\nTest Root\n" + to_pem(root_.cert.get()) +
                                           "\n# other\n" + to_pem(root_.cert.get()));
  auto store = load_trust_store(dir / "bundle.pem");
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_TRUE(verify_chain(leaf_.cert.get(), {inter_.cert.get()}, store->get(), fixed_now()));

  auto missing = load_trust_store(dir / "nope.pem");
  ASSERT_FALSE(missing);
  EXPECT_TRUE(contains(missing.error().message, "nope.pem")) << missing.error().message;

  test::write_file(dir / "empty.pem", "# nothing here\n");
  auto empty = load_trust_store(dir / "empty.pem");
  ASSERT_FALSE(empty);
  EXPECT_TRUE(contains(empty.error().message, "holds no PEM certificate")) << empty.error().message;

  const std::string root = to_pem(root_.cert.get());
  test::write_file(dir / "cut.pem", root + root.substr(0, root.size() / 2));
  auto cut = load_trust_store(dir / "cut.pem");
  ASSERT_FALSE(cut);
  EXPECT_TRUE(contains(cut.error().message, "certificate #2 is unreadable")) << cut.error().message;
  EXPECT_TRUE(contains(cut.error().message, "cut.pem")) << cut.error().message;

  auto directory = load_trust_store(dir.path());
  ASSERT_FALSE(directory);
  EXPECT_TRUE(contains(directory.error().message, "not a regular file")) << directory.error().message;
  EXPECT_EQ(ERR_peek_error(), 0u);
}

// RFC 5280's "no well-defined expiration date" is 99991231235959Z: past SystemTime's end, so it
// saturates there instead of overflowing into a date in the past (found by fuzz_formats).
TEST(X509Time, NoExpirySaturatesAtTheEndOfSystemTime) {
  std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> t(ASN1_TIME_new(), ASN1_TIME_free);
  ASSERT_EQ(ASN1_TIME_set_string_X509(t.get(), "99991231235959Z"), 1);
  auto when = to_system_time(t.get());
  ASSERT_TRUE(when) << when.error().message;
  EXPECT_EQ(*when, SystemTime::max());
  ASSERT_EQ(ASN1_TIME_set_string_X509(t.get(), "20261122101530Z"), 1);
  when = to_system_time(t.get());
  ASSERT_TRUE(when);
  EXPECT_EQ(std::chrono::system_clock::to_time_t(*when), 1795342530);
}

}  // namespace
}  // namespace certagent::crypto
