// The TPM identity against a real swtpm (one per test, Unix socket in a temp dir).

#include "tpm/tpm_identity.h"
#include "tpm/tss_error.h"

#include "tests/support/test_support.h"
#include "tests/support/swtpm.h"
#include "tests/support/tls_test_util.h"

#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <tss2/tss2_mu.h>

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

namespace certagent::tpm {
namespace {

using certagent::test::TempDir;
using test::EsysClient;
using test::Swtpm;

Bytes sha256(std::string_view data) {
  Bytes out(32);
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

bool verify(const std::string& public_pem, std::span<const std::uint8_t> digest, const Bytes& der) {
  crypto::BioPtr bio(BIO_new_mem_buf(public_pem.data(), static_cast<int>(public_pem.size())));
  crypto::EvpPkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return false;
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  return ctx && EVP_PKEY_verify_init(ctx.get()) == 1 &&
         EVP_PKEY_verify(ctx.get(), der.data(), der.size(), digest.data(), digest.size()) == 1;
}

Bytes openssl_hmac(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) {
  Bytes out(32);
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(), out.data(), &len);
  return out;
}

Bytes from_hex(std::string_view hex) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<std::uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

unsigned mode_of(const fs::path& p) {
  struct stat st {};
  ::stat(p.c_str(), &st);
  return st.st_mode & 0777;
}

class TpmIdentityTest : public ::testing::Test {
 protected:
  TempDir dir{"certagent-tpm"};
  Swtpm tpm{dir / "swtpm"};
  TpmIdentityOptions options{dir / "state" / "identity", tpm.tcti(), "run `certagent enroll --config /etc/certagent.yaml`"};

  std::unique_ptr<TpmIdentity> enroll() {
    auto id = TpmIdentity::open(options, OpenMode::create_if_missing);
    if (!id) ADD_FAILURE() << id.error().message;
    return id ? std::move(*id) : nullptr;
  }
  Result<std::unique_ptr<TpmIdentity>> open() { return TpmIdentity::open(options, OpenMode::existing); }
};

TEST_F(TpmIdentityTest, OpenWithoutIdentityFailsAndCreatesNothing) {
  auto id = open();
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message, "no identity in " + options.dir.string() +
                                    ": run `certagent enroll --config /etc/certagent.yaml`");
  EXPECT_FALSE(fs::exists(options.dir));
}

TEST_F(TpmIdentityTest, EnrolCreatesBlobsAndReloadsAcrossSwtpmRestart) {
  std::string pem;
  {
    auto id = enroll();
    ASSERT_TRUE(id);
    EXPECT_TRUE(id->created());
    EXPECT_EQ(id->backend(), "tpm");
    pem = id->public_key_pem();
    EXPECT_NE(pem.find("BEGIN PUBLIC KEY"), std::string::npos);
  }
  EXPECT_EQ(mode_of(options.dir), 0700u);
  EXPECT_EQ(mode_of(options.dir / "identity.pub"), 0600u);
  EXPECT_EQ(mode_of(options.dir / "identity.priv"), 0600u);
  // Only the TPM-wrapped blobs: a marshalled TPM2B_PUBLIC and TPM2B_PRIVATE, nothing else.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(options.dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"identity.priv", "identity.pub"}));

  tpm.restart();
  auto id = open();
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_FALSE((*id)->created());
  EXPECT_EQ((*id)->public_key_pem(), pem);
  const Bytes digest = sha256("after restart");
  auto sig = (*id)->sign_digest(digest);
  ASSERT_TRUE(sig) << sig.error().message;
  EXPECT_TRUE(verify(pem, digest, *sig));

  // A second enrolment keeps the key.
  id->reset();
  auto again = TpmIdentity::open(options, OpenMode::create_if_missing);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_FALSE((*again)->created());
  EXPECT_EQ((*again)->public_key_pem(), pem);
}

TEST_F(TpmIdentityTest, SignsDigestsThatOpenSslVerifies) {
  auto id = enroll();
  ASSERT_TRUE(id);
  for (int i = 0; i < 5; ++i) {
    const Bytes digest = sha256("message " + std::to_string(i));
    auto sig = id->sign_digest(digest);
    ASSERT_TRUE(sig) << sig.error().message;
    EXPECT_TRUE(verify(id->public_key_pem(), digest, *sig));
    EXPECT_FALSE(verify(id->public_key_pem(), sha256("other"), *sig));
  }
  EXPECT_EQ(id->sign_count(), 5u);
  auto bad = id->sign_digest(Bytes(20, 1));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("32-byte"), std::string::npos);
}

TEST_F(TpmIdentityTest, KeyIsNonExportable) {
  auto id = enroll();
  ASSERT_TRUE(id);
  auto pub = id->read_public_from_tpm();
  ASSERT_TRUE(pub) << pub.error().message;
  const TPMA_OBJECT attrs = pub->publicArea.objectAttributes;
  EXPECT_TRUE(attrs & TPMA_OBJECT_FIXEDTPM);
  EXPECT_TRUE(attrs & TPMA_OBJECT_FIXEDPARENT);
  EXPECT_TRUE(attrs & TPMA_OBJECT_SENSITIVEDATAORIGIN);
  EXPECT_TRUE(attrs & TPMA_OBJECT_SIGN_ENCRYPT);
  EXPECT_FALSE(attrs & TPMA_OBJECT_DECRYPT);
  EXPECT_EQ(pub->publicArea.authPolicy.size, 0) << "no policy: no duplication role at all";
  // The TPM's public area is the one on disk.
  std::string disk = certagent::test::read_file(options.dir / "identity.pub");
  std::uint8_t buf[sizeof(TPM2B_PUBLIC)];
  std::size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&*pub, buf, sizeof buf, &off), TSS2_RC_SUCCESS);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), off), disk);
  id.reset();

  // Even with a policy that allows TPM2_Duplicate, a key made from our template is refused by
  // the TPM because of fixedParent.
  EsysClient client(tpm.tcti());
  TSS2_RC rc = client.try_duplicate(identity_key_template());
  EXPECT_NE(rc, TSS2_RC_SUCCESS);
  EXPECT_EQ(tpm_base_code(rc), static_cast<TSS2_RC>(TPM2_RC_ATTRIBUTES)) << describe("Esys_Duplicate", rc);
}

TEST_F(TpmIdentityTest, TransparentReloadAfterTpmRestart) {
  auto id = enroll();
  ASSERT_TRUE(id);
  ASSERT_TRUE(id->sign_digest(sha256("before")));
  EXPECT_EQ(id->reload_count(), 0u);
  tpm.restart();  // the TPM forgets every transient object
  const Bytes digest = sha256("after");
  auto sig = id->sign_digest(digest);
  ASSERT_TRUE(sig) << sig.error().message;
  EXPECT_TRUE(verify(id->public_key_pem(), digest, *sig));
  EXPECT_EQ(id->reload_count(), 1u);
  // Operations on other objects after a restart: they re-create the SRK anyway.
  ASSERT_TRUE(id->seal("x.token", as_bytes("secret")));
  tpm.restart();
  auto unsealed = id->unseal("x.token");
  ASSERT_TRUE(unsealed) << unsealed.error().message;
  EXPECT_EQ(unsealed->view(), "secret");
  auto again = id->sign_digest(digest);
  EXPECT_TRUE(again) << again.error().message;
  EsysClient client(tpm.tcti());
  EXPECT_EQ(client.transient_handles().size(), 2u);  // the identity and the kept sealed object
}

TEST_F(TpmIdentityTest, TransparentReloadWhenTpmNeedsStartup) {
  auto id = enroll();
  ASSERT_TRUE(id);
  tpm.restart(/*startup_clear=*/false);  // every command answers TPM2_RC_INITIALIZE until Startup
  const Bytes digest = sha256("after reset");
  auto sig = id->sign_digest(digest);
  ASSERT_TRUE(sig) << sig.error().message;
  EXPECT_TRUE(verify(id->public_key_pem(), digest, *sig));
  EXPECT_EQ(id->reload_count(), 1u);
}

TEST_F(TpmIdentityTest, SignFailsCleanlyWhileTpmIsDownThenRecovers) {
  auto id = enroll();
  ASSERT_TRUE(id);
  tpm.stop();
  auto sig = id->sign_digest(sha256("down"));
  ASSERT_FALSE(sig);
  EXPECT_NE(sig.error().message.find("TPM signature failed"), std::string::npos) << sig.error().message;
  tpm.start();
  auto ok = id->sign_digest(sha256("up"));
  EXPECT_TRUE(ok) << ok.error().message;
}

TEST_F(TpmIdentityTest, HmacMatchesOpenSslOnKnownVectors) {
  auto id = enroll();
  ASSERT_TRUE(id);
  // RFC 4231 test case 2.
  ASSERT_TRUE(id->import_hmac_key("ca.eab_hmac", as_bytes("Jefe")));
  auto mac = id->hmac("ca.eab_hmac", as_bytes("what do ya want for nothing?"));
  ASSERT_TRUE(mac) << mac.error().message;
  EXPECT_EQ(*mac, from_hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
  // RFC 4231 test case 6: a key longer than the block size.
  const Bytes long_key(131, 0xaa);
  ASSERT_TRUE(id->import_hmac_key("ca.cfssl_auth", long_key));
  mac = id->hmac("ca.cfssl_auth", as_bytes("Test Using Larger Than Block-Size Key - Hash Key First"));
  ASSERT_TRUE(mac) << mac.error().message;
  EXPECT_EQ(*mac, from_hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"));
  // Data beyond one TPM buffer (1024 bytes) goes through an HMAC sequence.
  std::string big(5000, 'x');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  for (std::size_t size : {std::size_t{0}, std::size_t{1024}, std::size_t{1025}, std::size_t{2048}, big.size()}) {
    auto m = id->hmac("ca.eab_hmac", as_bytes(std::string_view(big).substr(0, size)));
    ASSERT_TRUE(m) << size << ": " << m.error().message;
    EXPECT_EQ(*m, openssl_hmac(as_bytes("Jefe"), as_bytes(std::string_view(big).substr(0, size)))) << size;
  }
  EXPECT_TRUE(id->has_secret("ca.eab_hmac"));
  EXPECT_EQ(mode_of(options.dir / "hmac-ca.eab_hmac.priv"), 0600u);
  // The identity still signs, with one TPM command, after the HMAC work.
  const auto before = id->command_count();
  ASSERT_TRUE(id->sign_digest(sha256("x")));
  EXPECT_EQ(id->command_count() - before, 1u);

  auto missing = id->hmac("nope", as_bytes("x"));
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("no HMAC key \"nope\""), std::string::npos);
  EXPECT_FALSE(id->import_hmac_key("empty", {}));
}

TEST_F(TpmIdentityTest, SealUnsealRoundTrip) {
  auto id = enroll();
  ASSERT_TRUE(id);
  std::string small = "0123456789abcdef0123456789abcdef";
  std::string max(128, 'm');
  std::string jwt(600, 'j');  // over 128 bytes: sealed key + AES-GCM envelope
  for (auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"lemur.lemur_token", small}, {"b.max", max}, {"c.jwt", jwt}}) {
    EXPECT_FALSE(id->has_secret(name));
    ASSERT_TRUE(id->seal(name, as_bytes(value))) << name;
    EXPECT_TRUE(id->has_secret(name));
    auto out = id->unseal(name);
    ASSERT_TRUE(out) << name << ": " << out.error().message;
    EXPECT_EQ(out->view(), value);
    EXPECT_EQ(mode_of(options.dir / ("sealed-" + name + ".priv")), 0600u);
  }
  EXPECT_TRUE(fs::exists(options.dir / "sealed-c.jwt.enc"));
  EXPECT_FALSE(fs::exists(options.dir / "sealed-b.max.enc"));
  // The envelope is useless without the TPM: its plaintext is not in any file.
  for (const auto& e : fs::directory_iterator(options.dir))
    EXPECT_EQ(certagent::test::read_file(e.path()).find(std::string(64, 'j')), std::string::npos) << e.path();
  // Re-sealing replaces the value (and switches format).
  ASSERT_TRUE(id->seal("c.jwt", as_bytes("short now")));
  EXPECT_EQ(id->unseal("c.jwt")->view(), "short now");
  EXPECT_FALSE(fs::exists(options.dir / "sealed-c.jwt.enc"));

  EXPECT_FALSE(id->seal("big", Bytes(kMaxSealedSecretSize + 1)));
  auto missing = id->unseal("nope");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("no sealed secret \"nope\""), std::string::npos);
  for (std::string bad : std::vector<std::string>{"", "../x", "A", "a/b", ".hidden", std::string(101, 'a')}) {
    auto r = id->seal(bad, as_bytes("x"));
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find("invalid secret name"), std::string::npos);
    EXPECT_FALSE(id->has_secret(bad));
  }
}

// At rest the identity and the last object used stay loaded (one command per operation); with a
// slot taken by another client (no resource manager), what is kept is flushed to make room.
TEST_F(TpmIdentityTest, AtMostTwoObjectsLoadedAndWorksWithOneSlotTaken) {
  auto id = enroll();
  ASSERT_TRUE(id);
  EsysClient client(tpm.tcti());
  EXPECT_EQ(client.transient_handles().size(), 1u);
  // Someone else holds a slot: our operations must fit in the remaining two.
  ESYS_TR other = client.occupy_slot();
  ASSERT_TRUE(id->import_hmac_key("k", as_bytes("key")));
  ASSERT_TRUE(id->seal("s", as_bytes("value")));
  EXPECT_TRUE(id->hmac("k", Bytes(3000, 7)));
  EXPECT_TRUE(id->hmac("k", Bytes(10, 7)));
  EXPECT_TRUE(id->unseal("s"));
  EXPECT_TRUE(id->sign_digest(sha256("x")));
  EXPECT_EQ(client.transient_handles().size(), 2u);  // ours + the other one
  client.flush(other);
  EXPECT_EQ(client.transient_handles().size(), 1u);
  id.reset();
  EXPECT_EQ(client.transient_handles().size(), 0u) << "closing flushes the key";
}

TEST_F(TpmIdentityTest, ConcurrentSignersAreSerialised) {
  auto id = enroll();
  ASSERT_TRUE(id);
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        const Bytes digest = sha256("t" + std::to_string(t) + "i" + std::to_string(i));
        auto sig = id->sign_digest(digest);
        if (sig && verify(id->public_key_pem(), digest, *sig)) ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good, 40);
  EXPECT_EQ(id->sign_count(), 40u);
}

TEST_F(TpmIdentityTest, PrivateKeyMakesCsrAndOutlivingKeyFailsCleanly) {
  auto id = enroll();
  ASSERT_TRUE(id);
  auto key = id->private_key();
  ASSERT_TRUE(key);
  crypto::X509ReqPtr req(X509_REQ_new());
  X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("host-1"), -1, -1, 0);
  ASSERT_EQ(X509_REQ_set_pubkey(req.get(), key->get()), 1) << test::openssl_errors();
  const auto signs = id->sign_count();
  ASSERT_GT(X509_REQ_sign(req.get(), key->get(), EVP_sha256()), 0) << test::openssl_errors();
  EXPECT_EQ(id->sign_count() - signs, 1u);
  EXPECT_EQ(X509_REQ_verify(req.get(), X509_REQ_get0_pubkey(req.get())), 1);
  EXPECT_EQ(test::public_key_pem(X509_REQ_get0_pubkey(req.get())), id->public_key_pem());

  id.reset();
  crypto::EvpMdCtxPtr md(EVP_MD_CTX_new());
  ASSERT_EQ(EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key->get()), 1);
  unsigned char sig[80];
  std::size_t len = sizeof sig;
  EXPECT_NE(EVP_DigestSign(md.get(), sig, &len, reinterpret_cast<const unsigned char*>("x"), 1), 1);
  EXPECT_NE(test::openssl_errors().find("TPM identity was closed"), std::string::npos);
}

// ---- failures of item 5: what happened and what to do ------------------------------------------

TEST_F(TpmIdentityTest, NoTpmReachable) {
  ASSERT_TRUE(enroll());
  // A socket file nobody listens on.
  const fs::path dead = dir / "dead.sock";
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, dead.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ::close(fd);
  options.tcti = "swtpm:path=" + dead.string();
  auto id = open();
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("no TPM reachable through \"swtpm:path=" + dead.string() + "\" (identity.tcti)"),
            std::string::npos)
      << id.error().message;
  EXPECT_NE(id.error().message.find("simulator is running"), std::string::npos);

  options.tcti = "device:" + (dir / "no-such-tpm").string();
  id = open();
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("no TPM reachable"), std::string::npos) << id.error().message;
  EXPECT_NE(id.error().message.find("group tss"), std::string::npos);
}

TEST_F(TpmIdentityTest, WrongTctiString) {
  ASSERT_TRUE(enroll());
  for (std::string tcti : {"nonsense:foo", "swtpm:bogus=1"}) {
    options.tcti = tcti;
    auto id = open();
    ASSERT_FALSE(id) << tcti;
    EXPECT_NE(id.error().message.find("the TCTI \"" + tcti + "\" (identity.tcti) is not valid"), std::string::npos)
        << id.error().message;
    EXPECT_NE(id.error().message.find("device:/dev/tpmrm0"), std::string::npos);
  }
}

TEST_F(TpmIdentityTest, TpmClearedIsReportedNotReplaced) {
  std::string pem;
  {
    auto id = enroll();
    ASSERT_TRUE(id);
    pem = id->public_key_pem();
  }
  {
    EsysClient client(tpm.tcti());
    ASSERT_EQ(client.clear(), TSS2_RC_SUCCESS);
  }
  const std::string pub_before = certagent::test::read_file(options.dir / "identity.pub");
  auto id = open();
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("the TPM no longer accepts the identity in " + options.dir.string() +
                                    " (cleared, or another TPM?)"),
            std::string::npos)
      << id.error().message;
  EXPECT_NE(id.error().message.find("move " + options.dir.string() + " aside and run `certagent enroll"),
            std::string::npos);
  // Never a silent new identity: the blobs are untouched, even by an enrolment.
  auto enrolled = TpmIdentity::open(options, OpenMode::create_if_missing);
  ASSERT_FALSE(enrolled);
  EXPECT_EQ(certagent::test::read_file(options.dir / "identity.pub"), pub_before);
}

TEST_F(TpmIdentityTest, OtherTpmWithOldBlobsIsReported) {
  ASSERT_TRUE(enroll());
  Swtpm fresh(dir / "swtpm-fresh");
  options.tcti = fresh.tcti();
  auto id = open();
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("no longer accepts the identity"), std::string::npos) << id.error().message;
}

TEST_F(TpmIdentityTest, CorruptBlobsAreReported) {
  ASSERT_TRUE(enroll());
  const fs::path pub = options.dir / "identity.pub";
  const fs::path priv = options.dir / "identity.priv";
  const std::string good_pub = certagent::test::read_file(pub);
  const std::string good_priv = certagent::test::read_file(priv);

  certagent::test::write_file(pub, good_pub.substr(0, 20), fs::perms(0600));
  auto id = open();
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("the identity in " + options.dir.string() + " is corrupt: " + pub.string() +
                                    " is not a marshalled TPM2B_PUBLIC"),
            std::string::npos)
      << id.error().message;
  EXPECT_NE(id.error().message.find("restore it from a backup"), std::string::npos);

  certagent::test::write_file(pub, good_pub, fs::perms(0600));
  fs::remove(priv);
  id = open();
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find(priv.string() + " is missing"), std::string::npos) << id.error().message;

  // A flipped bit inside the wrapped private part: the TPM's integrity check refuses it.
  std::string flipped = good_priv;
  flipped[flipped.size() / 2] ^= 0x01;
  certagent::test::write_file(priv, flipped, fs::perms(0600));
  id = open();
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("no longer accepts the identity"), std::string::npos) << id.error().message;

  // A public area that is not our kind of key is refused before it reaches the TPM.
  certagent::test::write_file(priv, good_priv, fs::perms(0600));
  std::string altered = good_pub;
  altered[9] ^= 0x02;  // clears fixedTPM in objectAttributes
  certagent::test::write_file(pub, altered, fs::perms(0600));
  id = open();
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("is corrupt"), std::string::npos) << id.error().message;

  certagent::test::write_file(pub, good_pub, fs::perms(0600));
  id = open();
  EXPECT_TRUE(id) << id.error().message;
}

}  // namespace
}  // namespace certagent::tpm
