#include "agent/builtin_plugins.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "core/crypto/validation.h"
#include "renewers/local_config.h"
#include "renewers/local_renewer.h"
#include "tests/support/test_support.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <algorithm>
#include <thread>

namespace certagent::renewers {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

unsigned mode_of(const fs::path& p) {
  struct stat st{};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

struct Rotation {
  crypto::EvpPkeyPtr key;
  IssueRequest request;
};

Rotation make_request(crypto::KeyType type, config::Duration lifetime = 96h,
                      crypto::SubjectNames names = {"web.internal",
                                                    {"web.internal", "localhost"},
                                                    {"127.0.0.1", "::1"},
                                                    {"spiffe://example.org/web"}}) {
  Rotation r;
  auto key = crypto::generate_key(type);
  EXPECT_TRUE(key);
  r.key = std::move(*key);
  auto csr = crypto::build_csr(r.key.get(), names);
  EXPECT_TRUE(csr) << csr.error().message;
  r.request.cert_name = "web";
  r.request.csr_pem = *csr;
  r.request.common_name = names.common_name;
  r.request.dns_names = names.dns_names;
  r.request.ip_addresses = names.ip_addresses;
  r.request.uris = names.uris;
  r.request.lifetime = lifetime;
  return r;
}

class LocalRenewerTest : public ::testing::Test {
 protected:
  std::unique_ptr<LocalRenewer> open() {
    auto r = LocalRenewer::open(state_.path(), &clock_);
    EXPECT_TRUE(r) << r.error().message;
    return r ? std::move(*r) : nullptr;
  }

  Result<Material> validate(const Rotation& rot, const IssueResult& issued, config::Duration max = 168h) {
    auto trust = crypto::load_trust_store(LocalRenewer::root_path(state_.path()));
    EXPECT_TRUE(trust) << trust.error().message;
    ValidationInput in;
    in.chain_pem = issued.chain_pem;
    in.key = rot.key.get();
    in.requested = {rot.request.common_name, rot.request.dns_names, rot.request.ip_addresses,
                    rot.request.uris};
    in.trust = trust->get();
    in.max_lifetime = max;
    in.now = clock_.now();
    in.broker = "dev";
    return validate_issued(in);
  }

  fs::path ca_dir() const { return LocalRenewer::ca_dir(state_.path()); }

  test::TempDir state_;
  // Mid-second on purpose: certificates carry whole seconds.
  ManualClock clock_{std::chrono::system_clock::from_time_t(1772366400) + 250ms};
};

TEST_F(LocalRenewerTest, CreatesARootCaWithTheRightShape) {
  auto renewer = open();
  ASSERT_TRUE(renewer);
  EXPECT_EQ(renewer->type(), "local");
  EXPECT_EQ(renewer->root_file(), state_.path() / "local-ca" / "root.pem");
  EXPECT_EQ(mode_of(ca_dir() / "key.pem"), 0600u);
  EXPECT_EQ(mode_of(ca_dir() / "root.pem"), 0644u);
  EXPECT_EQ(fs::directory_iterator(state_.path())->path(), ca_dir()) << "no temp dir left behind";

  auto chain = crypto::parse_chain(test::read_file(LocalRenewer::root_path(state_.path())));
  ASSERT_TRUE(chain);
  X509* root = chain->front().get();
  const auto info = crypto::describe(root);
  EXPECT_EQ(info.subject_cn, "certagent development CA (not for production)");
  EXPECT_EQ(info.issuer_cn, info.subject_cn);
  EXPECT_EQ(info.not_after - info.not_before, 24h * 3650);
  EXPECT_LE(info.not_before, clock_.now());
  EXPECT_EQ(X509_check_ca(root), 1);
  EXPECT_EQ(X509_get_key_usage(root), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  const int bc = X509_get_ext_by_NID(root, NID_basic_constraints, -1);
  ASSERT_GE(bc, 0);
  EXPECT_EQ(X509_EXTENSION_get_critical(X509_get_ext(root, bc)), 1);
  EXPECT_TRUE(EVP_PKEY_is_a(X509_get0_pubkey(root), "EC"));
  EXPECT_EQ(EVP_PKEY_get_bits(X509_get0_pubkey(root)), 256);
  EXPECT_EQ(X509_verify(root, X509_get0_pubkey(root)), 1);

  auto key = crypto::parse_private_key(test::read_file(ca_dir() / "key.pem"));
  ASSERT_TRUE(key);
  EXPECT_TRUE(crypto::same_public_key(key->get(), X509_get0_pubkey(root)));
}

TEST_F(LocalRenewerTest, ReusesTheCaAcrossInstances) {
  auto first = open();
  ASSERT_TRUE(first);
  const std::string key_before = test::read_file(ca_dir() / "key.pem");
  const std::string root_before = test::read_file(ca_dir() / "root.pem");
  clock_.advance(24h * 30);
  auto second = open();
  ASSERT_TRUE(second);
  EXPECT_EQ(test::read_file(ca_dir() / "key.pem"), key_before);
  EXPECT_EQ(test::read_file(ca_dir() / "root.pem"), root_before);
  EXPECT_EQ(X509_cmp(first->root(), second->root()), 0);

  // A certificate from the first instance verifies with the second's root (same CA).
  Rotation rot = make_request(crypto::KeyType::ecdsa_p256);
  auto issued = first->issue_now(rot.request);
  ASSERT_TRUE(issued);
  EXPECT_TRUE(validate(rot, *issued));
}

TEST_F(LocalRenewerTest, ConcurrentFirstUseEndsWithOneCa) {
  std::vector<std::string> roots(4);
  std::vector<std::string> errors(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto r = LocalRenewer::open(state_.path(), &clock_);
      if (r) roots[i] = crypto::to_pem((*r)->root());
      else errors[i] = r.error().message;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(errors[i], "");
    EXPECT_EQ(roots[i], test::read_file(LocalRenewer::root_path(state_.path())));
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(state_.path()), fs::directory_iterator()), 1);
}

TEST_F(LocalRenewerTest, EnsureCaCreatesOnceAndReturnsTheRoot) {
  auto path = LocalRenewer::ensure_ca(state_.path() / "nested" / "state", &clock_);
  ASSERT_TRUE(path) << path.error().message;
  EXPECT_EQ(*path, state_.path() / "nested" / "state" / "local-ca" / "root.pem");
  const std::string root = test::read_file(*path);
  ASSERT_TRUE(crypto::load_trust_store(*path));
  auto again = LocalRenewer::ensure_ca(state_.path() / "nested" / "state", nullptr);
  ASSERT_TRUE(again);
  EXPECT_EQ(test::read_file(*again), root);
}

TEST_F(LocalRenewerTest, AnEmptyCaDirectoryIsFilled) {
  fs::create_directories(ca_dir());
  auto renewer = open();
  ASSERT_TRUE(renewer);
  EXPECT_EQ(mode_of(ca_dir() / "key.pem"), 0600u);
}

TEST_F(LocalRenewerTest, ACorruptKeyIsAnErrorAndIsNeverReplaced) {
  ASSERT_TRUE(open());
  const std::string root_before = test::read_file(ca_dir() / "root.pem");
  test::write_file(ca_dir() / "key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                   fs::perms(0600));
  auto r = LocalRenewer::open(state_.path(), &clock_);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "development CA key " + (ca_dir() / "key.pem").string() +
                                              " is corrupt"))
      << r.error().message;
  EXPECT_TRUE(contains(r.error().message, "never replaced automatically")) << r.error().message;
  EXPECT_EQ(test::read_file(ca_dir() / "key.pem"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  EXPECT_EQ(test::read_file(ca_dir() / "root.pem"), root_before);
  EXPECT_FALSE(LocalRenewer::ensure_ca(state_.path(), &clock_));
}

TEST_F(LocalRenewerTest, ACorruptRootIsAnError) {
  ASSERT_TRUE(open());
  test::write_file(ca_dir() / "root.pem", "garbage\n");
  auto r = LocalRenewer::open(state_.path(), &clock_);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "root.pem is corrupt: chain is not PEM")) << r.error().message;
  EXPECT_EQ(test::read_file(ca_dir() / "root.pem"), "garbage\n");
}

TEST_F(LocalRenewerTest, AnIncompleteOrMismatchedCaIsAnError) {
  ASSERT_TRUE(open());
  const std::string root = test::read_file(ca_dir() / "root.pem");
  fs::remove(ca_dir() / "root.pem");
  auto incomplete = LocalRenewer::open(state_.path(), &clock_);
  ASSERT_FALSE(incomplete);
  EXPECT_TRUE(contains(incomplete.error().message, "is incomplete: root.pem is missing"))
      << incomplete.error().message;

  test::write_file(ca_dir() / "root.pem", root);
  auto other = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  auto other_pem = crypto::private_key_pem(other->get());
  test::write_file(ca_dir() / "key.pem", std::string(other_pem->view()), fs::perms(0600));
  auto mismatch = LocalRenewer::open(state_.path(), &clock_);
  ASSERT_FALSE(mismatch);
  EXPECT_TRUE(contains(mismatch.error().message, "do not belong together")) << mismatch.error().message;
}

TEST_F(LocalRenewerTest, ADirectoryWithForeignFilesIsAnError) {
  fs::create_directories(ca_dir());
  test::write_file(ca_dir() / "notes.txt", "hello");
  auto r = LocalRenewer::open(state_.path(), &clock_);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "holds other files but no development CA")) << r.error().message;
}

class LocalIssueTest : public LocalRenewerTest, public ::testing::WithParamInterface<crypto::KeyType> {};

TEST_P(LocalIssueTest, IssuedLeafValidatesWithExactNamesAndLifetime) {
  auto renewer = open();
  ASSERT_TRUE(renewer);
  Rotation rot = make_request(GetParam());
  auto issued = renewer->issue_now(rot.request);
  ASSERT_TRUE(issued) << issued.error().message;
  EXPECT_FALSE(issued->renew_hint);

  auto chain = crypto::parse_chain(issued->chain_pem);
  ASSERT_TRUE(chain);
  ASSERT_EQ(chain->size(), 1u) << "leaf only: the root is the trust anchor";
  X509* leaf = chain->front().get();
  const auto info = crypto::describe(leaf);
  EXPECT_EQ(info.subject_cn, "web.internal");
  EXPECT_EQ(info.issuer_cn, "certagent development CA (not for production)");
  EXPECT_EQ(info.dns_names, rot.request.dns_names);
  EXPECT_EQ(info.ip_addresses, rot.request.ip_addresses);
  EXPECT_EQ(info.uris, rot.request.uris);
  EXPECT_TRUE(info.other_names.empty());

  // Whole seconds, backdated by min(60 s, lifetime / 10); lifetime exactly as requested.
  const auto now_s = std::chrono::time_point_cast<std::chrono::seconds>(clock_.now());
  EXPECT_EQ(info.not_before, now_s - 60s);
  EXPECT_EQ(info.not_after - info.not_before, 96h);

  EXPECT_EQ(X509_get_extended_key_usage(leaf), static_cast<uint32_t>(XKU_SSL_SERVER | XKU_SSL_CLIENT));
  const bool rsa = GetParam() == crypto::KeyType::rsa_2048;
  EXPECT_EQ(X509_get_key_usage(leaf),
            static_cast<uint32_t>(rsa ? KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT : KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_check_ca(leaf), 0);
  ASSERT_NE(X509_get0_subject_key_id(leaf), nullptr);
  ASSERT_NE(X509_get0_authority_key_id(leaf), nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf), X509_get0_subject_key_id(renewer->root())), 0);
  EXPECT_LE(ASN1_STRING_length(X509_get0_serialNumber(leaf)), 16);

  auto m = validate(rot, *issued);
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_TRUE(m->chain_pem.empty());
  EXPECT_TRUE(m->valid_at(clock_.now()));
}

INSTANTIATE_TEST_SUITE_P(KeyTypes, LocalIssueTest,
                         ::testing::Values(crypto::KeyType::ecdsa_p256, crypto::KeyType::ecdsa_p384,
                                           crypto::KeyType::rsa_2048, crypto::KeyType::ed25519));

TEST_F(LocalRenewerTest, ShortLifetimesAreHonouredAndExpireOnTime) {
  auto renewer = open();
  ASSERT_TRUE(renewer);
  Rotation rot = make_request(crypto::KeyType::ecdsa_p256, 5s);
  auto issued = renewer->issue_now(rot.request);
  ASSERT_TRUE(issued) << issued.error().message;
  auto m = validate(rot, *issued, 10s);
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ(m->not_before, std::chrono::time_point_cast<std::chrono::seconds>(clock_.now()));
  EXPECT_EQ(m->not_after - m->not_before, 5s);

  clock_.advance(5s);
  auto late = validate(rot, *issued, 10s);
  ASSERT_FALSE(late);
  EXPECT_TRUE(contains(late.error().message, "expired at")) << late.error().message;

  Rotation two_min = make_request(crypto::KeyType::ecdsa_p256, 2min);
  auto issued2 = renewer->issue_now(two_min.request);
  ASSERT_TRUE(issued2);
  auto m2 = validate(two_min, *issued2, 2min);
  ASSERT_TRUE(m2) << m2.error().message;
  EXPECT_EQ(m2->not_after - m2->not_before, 2min);
  EXPECT_EQ(m2->not_before, std::chrono::time_point_cast<std::chrono::seconds>(clock_.now()) - 12s);
}

TEST_F(LocalRenewerTest, SerialsAreRandomAndDistinct) {
  auto renewer = open();
  ASSERT_TRUE(renewer);
  Rotation rot = make_request(crypto::KeyType::ecdsa_p256);
  auto a = renewer->issue_now(rot.request);
  auto b = renewer->issue_now(rot.request);
  ASSERT_TRUE(a && b);
  const auto sa = crypto::describe(crypto::parse_chain(a->chain_pem)->front().get()).serial_hex;
  const auto sb = crypto::describe(crypto::parse_chain(b->chain_pem)->front().get()).serial_hex;
  EXPECT_NE(sa, sb);
  EXPECT_GE(sa.size(), 28u);
}

TEST_F(LocalRenewerTest, NamesOnlyInTheSanWhenNoCommonNameIsRequested) {
  auto renewer = open();
  ASSERT_TRUE(renewer);
  Rotation rot = make_request(crypto::KeyType::ecdsa_p256, 96h, {"", {"svc.internal"}, {}, {}});
  auto issued = renewer->issue_now(rot.request);
  ASSERT_TRUE(issued) << issued.error().message;
  auto chain = crypto::parse_chain(issued->chain_pem);
  X509* leaf = chain->front().get();
  EXPECT_EQ(X509_NAME_entry_count(X509_get_subject_name(leaf)), 0);
  const int san = X509_get_ext_by_NID(leaf, NID_subject_alt_name, -1);
  ASSERT_GE(san, 0);
  EXPECT_EQ(X509_EXTENSION_get_critical(X509_get_ext(leaf, san)), 1);
  EXPECT_TRUE(validate(rot, *issued));
}

TEST_F(LocalRenewerTest, RefusesCsrsThatDoNotMatchTheRequest) {
  auto renewer = open();
  ASSERT_TRUE(renewer);
  Rotation rot = make_request(crypto::KeyType::ecdsa_p256);
  rot.request.dns_names.push_back("admin.internal");
  auto extra = renewer->issue_now(rot.request);
  ASSERT_FALSE(extra);
  EXPECT_TRUE(contains(extra.error().message, "the CSR's names differ from the request (CSR missing DNS name "
                                              "admin.internal)"))
      << extra.error().message;

  Rotation garbage = make_request(crypto::KeyType::ecdsa_p256);
  garbage.request.csr_pem = "not a csr";
  auto bad = renewer->issue_now(garbage.request);
  ASSERT_FALSE(bad);
  EXPECT_TRUE(contains(bad.error().message, "local CA: CSR: not a PEM certificate request")) << bad.error().message;

  // CSR carrying key A, signed by key B.
  auto a = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  auto b = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  crypto::X509ReqPtr req(X509_REQ_new());
  X509_REQ_set_pubkey(req.get(), a->get());
  X509_NAME_add_entry_by_NID(X509_REQ_get_subject_name(req.get()), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("x"), 1, -1, 0);
  X509_REQ_sign(req.get(), b->get(), EVP_sha256());
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_REQ(bio.get(), req.get());
  IssueRequest forged;
  forged.csr_pem = crypto::bio_to_string(bio.get());
  forged.common_name = "x";
  forged.lifetime = 1h;
  auto f = renewer->issue_now(forged);
  ASSERT_FALSE(f);
  EXPECT_TRUE(contains(f.error().message, "CSR signature does not verify")) << f.error().message;

  Rotation zero = make_request(crypto::KeyType::ecdsa_p256, 0s);
  auto z = renewer->issue_now(zero.request);
  ASSERT_FALSE(z);
  EXPECT_TRUE(z.error().configuration);
}

TEST_F(LocalRenewerTest, AnExpiredRootIsReported) {
  auto renewer = open();
  ASSERT_TRUE(renewer);
  clock_.advance(24h * 3651);
  Rotation rot = make_request(crypto::KeyType::ecdsa_p256);
  auto r = renewer->issue_now(rot.request);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "the development root expired at")) << r.error().message;
  EXPECT_TRUE(r.error().configuration);
}

TEST_F(LocalRenewerTest, IssueCoroutineAndRegistry) {
  boost::asio::io_context io;
  RenewerContext context{io.get_executor(), nullptr, state_.path(), &clock_};
  config::BrokerConfig broker;
  broker.name = "dev";
  broker.type = "local";
  broker.settings = LocalRenewerConfig{};
  auto renewer = agent::make_renewer(broker, context);
  ASSERT_TRUE(renewer) << renewer.error().message;
  EXPECT_EQ((*renewer)->type(), "local");

  Rotation rot = make_request(crypto::KeyType::ecdsa_p256);
  std::optional<Result<IssueResult>> out;
  boost::asio::co_spawn(io, (*renewer)->issue(rot.request),
                        [&](std::exception_ptr e, Result<IssueResult> r) {
                          EXPECT_FALSE(e);
                          out.emplace(std::move(r));
                        });
  io.run();
  ASSERT_TRUE(out);
  ASSERT_TRUE(*out) << out->error().message;
  EXPECT_TRUE(validate(rot, **out));

  // Config loading rejects unknown types first; the registry still refuses them cleanly.
  broker.type = "nosuch";
  auto unknown = agent::make_renewer(broker, context);
  ASSERT_FALSE(unknown);
  EXPECT_TRUE(contains(unknown.error().message, "renewer type nosuch not built yet")) << unknown.error().message;

  std::vector<std::string> types;
  for (const auto& t : agent::builtin_plugins().renewers) types.push_back(t.config.name);
  EXPECT_EQ(types, (std::vector<std::string>{"local", "acme", "cfssl", "lemur"}));
}

}  // namespace
}  // namespace certagent::renewers
