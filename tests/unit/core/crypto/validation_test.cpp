#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "core/crypto/validation.h"
#include "tests/support/test_pki.h"

#include <gtest/gtest.h>
#include <openssl/err.h>

namespace certagent {
namespace {

using namespace std::chrono_literals;
using crypto::SubjectNames;
using test::CertSpec;
using test::fixed_now;
using test::make_ca;
using test::make_cert;
using test::pem_of;
using test::TestCert;

crypto::EvpPkeyPtr new_key() {
  auto k = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  EXPECT_TRUE(k);
  return std::move(*k);
}

crypto::EvpPkeyPtr copy_of(EVP_PKEY* key) {
  EVP_PKEY_up_ref(key);
  return crypto::EvpPkeyPtr(key);
}

// root -> intermediate -> leaf for key_ with requested_ names, valid for 96 h around fixed_now().
class ValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = make_ca("Issuer Root", now_ - 24h * 30, now_ + 24h * 3650);
    inter_ = make_ca("Issuer Intermediate", now_ - 24h * 30, now_ + 24h * 365, &root_);
    auto store = crypto::trust_store_from_pem(crypto::to_pem(root_.cert.get()));
    ASSERT_TRUE(store);
    trust_ = std::move(*store);
    key_ = new_key();
  }

  CertSpec good_spec() const {
    CertSpec spec;
    spec.common_name = requested_.common_name;
    spec.dns_names = requested_.dns_names;
    spec.ip_addresses = requested_.ip_addresses;
    spec.uris = requested_.uris;
    spec.not_before = now_ - 5min;
    spec.not_after = now_ - 5min + 96h;
    return spec;
  }

  TestCert leaf(const CertSpec& spec) {
    return make_cert(spec, &inter_, copy_of(key_.get()));
  }

  ValidationInput input(std::string chain_pem) const {
    ValidationInput in;
    in.chain_pem = std::move(chain_pem);
    in.key = key_.get();
    in.requested = requested_;
    in.trust = trust_.get();
    in.max_lifetime = 168h;
    in.now = now_;
    in.broker = "corp";
    return in;
  }

  std::string chain_for(const CertSpec& spec) {
    TestCert l = leaf(spec);
    return pem_of({l.cert.get(), inter_.cert.get()});
  }

  // The rejection message for a chain, asserting it starts with "rejected certificate: ".
  std::string rejection(const ValidationInput& in) {
    auto r = validate_issued(in);
    EXPECT_FALSE(r);
    if (r) return {};
    EXPECT_EQ(r.error().message.rfind("rejected certificate: ", 0), 0u) << r.error().message;
    EXPECT_EQ(ERR_peek_error(), 0u);
    return r.error().message;
  }

  SystemTime now_ = fixed_now();
  Names requested_{"web.internal",
                   {"web.internal", "localhost"},
                   {"127.0.0.1", "::1"},
                   {"spiffe://example.org/web"}};
  TestCert root_, inter_;
  crypto::X509StorePtr trust_;
  crypto::EvpPkeyPtr key_;
};

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

TEST_F(ValidationTest, AcceptsAGoodChainWithAnIntermediate) {
  TestCert l = leaf(good_spec());
  auto m = validate_issued(input(pem_of({l.cert.get(), inter_.cert.get()})));
  ASSERT_TRUE(m) << m.error().message;
  const auto info = crypto::describe(l.cert.get());
  EXPECT_EQ(m->cert_pem, crypto::to_pem(l.cert.get()));
  EXPECT_EQ(m->chain_pem, crypto::to_pem(inter_.cert.get()));
  EXPECT_EQ(m->fullchain_pem(), pem_of({l.cert.get(), inter_.cert.get()}));
  EXPECT_EQ(m->serial_hex, info.serial_hex);
  EXPECT_EQ(m->sha256_hex, info.sha256_hex);
  EXPECT_EQ(m->not_before, now_ - 5min);
  EXPECT_EQ(m->not_after, now_ - 5min + 96h);
  EXPECT_EQ(m->broker, "corp");
  EXPECT_TRUE(m->key_pem.empty()) << "the caller adds the key";
  EXPECT_TRUE(m->valid_at(now_));
}

TEST_F(ValidationTest, AcceptsEquivalentSpellingsOfTheSameNames) {
  CertSpec spec = good_spec();
  spec.dns_names = {"LOCALHOST", "web.internal"};         // order and case
  spec.ip_addresses = {"0:0:0:0:0:0:0:1", "127.0.0.1"};  // IPv6 spelling
  EXPECT_TRUE(validate_issued(input(chain_for(spec))));
}

TEST_F(ValidationTest, AcceptsAnUnrequestedCnOnlyWhenItRepeatsARequestedName) {
  requested_.common_name.clear();
  CertSpec spec = good_spec();
  spec.common_name = "localhost";  // ACME CAs copy a SAN into the CN
  EXPECT_TRUE(validate_issued(input(chain_for(spec))));
  spec.common_name = "";
  EXPECT_TRUE(validate_issued(input(chain_for(spec))));
  spec.common_name = "admin.internal";
  EXPECT_TRUE(contains(rejection(input(chain_for(spec))), "unexpected common name \"admin.internal\""));
}

TEST_F(ValidationTest, RejectsGarbage) {
  const auto msg = rejection(input("HTTP/1.1 502 Bad Gateway\n"));
  EXPECT_TRUE(contains(msg, "the broker's chain: chain is not PEM")) << msg;
  EXPECT_TRUE(contains(rejection(input("")), "chain is empty"));
}

TEST_F(ValidationTest, RejectsALeafForAnotherKey) {
  TestCert other = make_cert(good_spec(), &inter_);
  const auto msg = rejection(input(pem_of({other.cert.get(), inter_.cert.get()})));
  EXPECT_TRUE(contains(msg, "the leaf's public key is not the key this rotation generated")) << msg;
  EXPECT_TRUE(contains(msg, "(serial ")) << msg;
}

TEST_F(ValidationTest, RejectsAnExtraName) {
  CertSpec spec = good_spec();
  spec.dns_names.push_back("admin.internal");
  const auto msg = rejection(input(chain_for(spec)));
  EXPECT_TRUE(contains(msg, "names differ from the request: unexpected DNS name admin.internal")) << msg;
}

TEST_F(ValidationTest, RejectsAMissingName) {
  CertSpec spec = good_spec();
  spec.dns_names = {"web.internal"};
  spec.uris.clear();
  const auto msg = rejection(input(chain_for(spec)));
  EXPECT_TRUE(contains(msg, "missing DNS name localhost; missing URI spiffe://example.org/web")) << msg;
}

TEST_F(ValidationTest, RejectsAnExtraOrMissingIp) {
  CertSpec spec = good_spec();
  spec.ip_addresses = {"127.0.0.1", "10.0.0.9"};
  const auto msg = rejection(input(chain_for(spec)));
  EXPECT_TRUE(contains(msg, "missing IP address ::1; unexpected IP address 10.0.0.9")) << msg;
}

TEST_F(ValidationTest, RejectsAWrongCommonName) {
  CertSpec spec = good_spec();
  spec.common_name = "evil.internal";
  const auto msg = rejection(input(chain_for(spec)));
  EXPECT_TRUE(contains(msg, "common name is \"evil.internal\", requested \"web.internal\"")) << msg;
  spec.common_name.clear();
  EXPECT_TRUE(contains(rejection(input(chain_for(spec))), "missing common name \"web.internal\""));
}

TEST_F(ValidationTest, RejectsSanKindsNeverRequested) {
  CertSpec spec = good_spec();
  spec.extra_san_conf = {"email:ops@example.org"};
  const auto msg = rejection(input(chain_for(spec)));
  EXPECT_TRUE(contains(msg, "names of a kind never requested: email:ops@example.org")) << msg;
}

TEST_F(ValidationTest, RejectsAnExpiredLeaf) {
  CertSpec spec = good_spec();
  spec.not_before = now_ - 97h;
  spec.not_after = now_ - 1h;
  const auto msg = rejection(input(chain_for(spec)));
  EXPECT_TRUE(contains(msg, "expired at 2026-03-01T11:00:00Z, now is 2026-03-01T12:00:00Z")) << msg;
  spec.not_after = now_;  // not_after is the first instant it is no longer accepted
  EXPECT_TRUE(contains(rejection(input(chain_for(spec))), "expired at"));
}

TEST_F(ValidationTest, RejectsALeafNotYetValidBeyondTheClockSkew) {
  CertSpec spec = good_spec();
  spec.not_before = now_ + 10min;
  spec.not_after = now_ + 10min + 96h;
  const auto msg = rejection(input(chain_for(spec)));
  EXPECT_TRUE(contains(msg, "not valid before 2026-03-01T12:10:00Z, more than 300s after now")) << msg;
}

TEST_F(ValidationTest, AcceptsANotBeforeWithinTheClockSkewButItIsNotValidYet) {
  CertSpec spec = good_spec();
  spec.not_before = now_ + 2min;
  spec.not_after = now_ + 2min + 96h;
  auto m = validate_issued(input(chain_for(spec)));
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_FALSE(m->valid_at(now_));
  EXPECT_TRUE(m->valid_at(now_ + 2min));

  ValidationInput strict = input(chain_for(spec));
  strict.clock_skew = 0s;
  EXPECT_TRUE(contains(rejection(strict), "not valid before"));
}

TEST_F(ValidationTest, RejectsAnOverLongLeaf) {
  CertSpec spec = good_spec();
  spec.not_after = *spec.not_before + 168h + 1s;
  const auto msg = rejection(input(chain_for(spec)));
  EXPECT_TRUE(contains(msg, "lives 604801s")) << msg;
  EXPECT_TRUE(contains(msg, "longer than max_lifetime 604800s")) << msg;
  spec.not_after = *spec.not_before + 168h;  // exactly max_lifetime is fine
  EXPECT_TRUE(validate_issued(input(chain_for(spec))));
}

TEST_F(ValidationTest, RejectsAnUntrustedIssuer) {
  TestCert rogue_root = make_ca("Issuer Root", now_ - 24h, now_ + 24h * 365);  // same name, other key
  TestCert rogue_inter = make_ca("Issuer Intermediate", now_ - 24h, now_ + 24h * 365, &rogue_root);
  TestCert l = make_cert(good_spec(), &rogue_inter, copy_of(key_.get()));
  const auto msg = rejection(input(pem_of({l.cert.get(), rogue_inter.cert.get()})));
  EXPECT_TRUE(contains(msg, "chain does not verify to the trust bundle")) << msg;
}

TEST_F(ValidationTest, RejectsAChainMissingItsIntermediate) {
  TestCert l = leaf(good_spec());
  const auto msg = rejection(input(pem_of({l.cert.get()})));
  EXPECT_TRUE(contains(msg, "chain does not verify to the trust bundle: unable to get local issuer "
                            "certificate (depth 0, CN=web.internal)"))
      << msg;
}

TEST_F(ValidationTest, RejectsAnOutOfOrderOrStrayCertificate) {
  TestCert l = leaf(good_spec());
  TestCert stray = make_ca("Stray", now_ - 24h, now_ + 24h);
  const auto msg = rejection(input(pem_of({l.cert.get(), stray.cert.get(), inter_.cert.get()})));
  EXPECT_TRUE(contains(msg, "chain certificate #2 (CN=Stray) did not issue certificate #1 (CN=web.internal)"))
      << msg;
  const auto reversed = rejection(input(pem_of({l.cert.get(), root_.cert.get(), inter_.cert.get()})));
  EXPECT_TRUE(contains(reversed, "out of order")) << reversed;
  // Root included after the intermediate, in order: accepted and kept in chain_pem.
  auto with_root = validate_issued(input(pem_of({l.cert.get(), inter_.cert.get(), root_.cert.get()})));
  ASSERT_TRUE(with_root) << with_root.error().message;
  EXPECT_EQ(with_root->chain_pem, pem_of({inter_.cert.get(), root_.cert.get()}));
}

TEST_F(ValidationTest, RejectsAnExpiredIntermediate) {
  TestCert old_inter = make_ca("Issuer Intermediate", now_ - 24h * 60, now_ - 24h, &root_);
  TestCert l = make_cert(good_spec(), &old_inter, copy_of(key_.get()));
  const auto msg = rejection(input(pem_of({l.cert.get(), old_inter.cert.get()})));
  EXPECT_TRUE(contains(msg, "certificate has expired (depth 1, CN=Issuer Intermediate)")) << msg;
}

TEST_F(ValidationTest, RefusesIncompleteInput) {
  TestCert l = leaf(good_spec());
  ValidationInput in = input(pem_of({l.cert.get(), inter_.cert.get()}));
  in.max_lifetime = 0s;
  EXPECT_FALSE(validate_issued(in));
  in = input(pem_of({l.cert.get(), inter_.cert.get()}));
  in.trust = nullptr;
  EXPECT_FALSE(validate_issued(in));
}

}  // namespace
}  // namespace certagent
