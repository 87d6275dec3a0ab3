// formats: [pkcs12] (issue 18): keystore.p12 and truststore.p12 in the same generation as the
// PEM files, read back by an independent reader (the openssl CLI), with the algorithms checked
// in its -info output.

#include "agent/file_sink.h"

#include "core/crypto/pkcs12.h"
#include "tests/support/test_support.h"
#include "tests/unit/agent/test_material.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

namespace certagent {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

class QuietLogs : public ::testing::Environment {
  void SetUp() override { test::quiet_logs(); }
};
const auto* const kQuietLogs = ::testing::AddGlobalTestEnvironment(new QuietLogs);

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

config::FilesConfig pkcs12_files(const fs::path& dir, const fs::path& password_file) {
  config::FilesConfig c;
  c.dir = dir;
  c.formats = {"pem", "pkcs12"};
  c.pkcs12 = config::Pkcs12Config{password_file, false};
  return c;
}

// `openssl pkcs12 <args> -in file -passin file:pass`: stdout + stderr (-info writes to stderr).
test::RunResult openssl_pkcs12(const fs::path& file, const fs::path& pass, std::vector<std::string> args) {
  std::vector<std::string> argv{test::require_program("openssl").string(), "pkcs12", "-in", file.string(),
                                "-passin", "file:" + pass.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return test::run(argv);
}

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

TEST(FileSinkPkcs12, KeystoreAndTruststoreOpenInOpenssl) {
  TempDir tmp;
  const auto dir = tmp / "live";
  test::write_file(tmp / "p12.pass", "s3cret-pass\n", fs::perms(0600));
  auto ca = test::make_test_ca("Test Issuing CA");
  auto m = test::make_test_material("web.internal", std::chrono::hours(96), &ca);
  FileSink sink(pkcs12_files(dir, tmp / "p12.pass"));
  auto gen = sink.commit(m, Pkcs12Inputs{"web", ca.cert_pem, nullptr});
  ASSERT_TRUE(gen) << gen.error().message;

  // In the generation and linked at the top level, like the PEM files.
  for (const char* name : {"keystore.p12", "truststore.p12"}) {
    EXPECT_TRUE(fs::is_regular_file(*gen / name)) << name;
    EXPECT_EQ(fs::read_symlink(dir / name), fs::path("..data") / name);
  }
  EXPECT_EQ(mode_of(*gen / "keystore.p12"), 0600u);
  EXPECT_EQ(mode_of(*gen / "truststore.p12"), 0644u);
  EXPECT_TRUE(sink.missing_outputs().empty());

  // Key + leaf + chain, the key matching the leaf; the trailing newline of the file is no part
  // of the password.
  auto all = openssl_pkcs12(dir / "keystore.p12", tmp / "p12.pass", {"-nodes"});
  ASSERT_EQ(all.exit_code, 0) << all.err;
  EXPECT_TRUE(test::pem_key_matches_cert(all.out, m.cert_pem));
  EXPECT_TRUE(contains(all.out, m.cert_pem)) << all.out;
  EXPECT_TRUE(contains(all.out, ca.cert_pem)) << all.out;
  EXPECT_TRUE(contains(all.out, "friendlyName: web")) << all.out;

  // Modern algorithms: PBES2/PBKDF2/AES-256-CBC with HMAC-SHA256 for key and certificates, an
  // HMAC-SHA256 MAC; 10000 iterations (Java's default).
  auto info = openssl_pkcs12(dir / "keystore.p12", tmp / "p12.pass", {"-info", "-nokeys", "-nocerts"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  const std::string said = info.out + info.err;
  EXPECT_TRUE(contains(said, "MAC: sha256, Iteration 10000")) << said;
  EXPECT_TRUE(contains(said, "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256"))
      << said;
  EXPECT_TRUE(contains(said, "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256"))
      << said;
  EXPECT_FALSE(contains(said, "RC2")) << said;
  EXPECT_FALSE(contains(said, "3DES")) << said;

  // The truststore: the trust bundle's certificate, marked trusted for Java (any usage).
  auto trust = openssl_pkcs12(dir / "truststore.p12", tmp / "p12.pass", {"-info", "-nokeys"});
  ASSERT_EQ(trust.exit_code, 0) << trust.err;
  const std::string t = trust.out + trust.err;
  EXPECT_TRUE(contains(t, ca.cert_pem)) << t;
  EXPECT_TRUE(contains(t, "friendlyName: test issuing ca")) << t;
  EXPECT_TRUE(contains(t, crypto::kJdkTrustedKeyUsageOid)) << t;
  EXPECT_TRUE(contains(t, "MAC: sha256, Iteration 10000")) << t;
  EXPECT_FALSE(contains(t, "Shrouded Keybag")) << t;  // no key in a truststore

  // A wrong password is refused by the reader (the MAC is real).
  test::write_file(tmp / "wrong.pass", "not-it\n");
  auto wrong = openssl_pkcs12(dir / "keystore.p12", tmp / "wrong.pass", {"-nokeys", "-noout"});
  EXPECT_NE(wrong.exit_code, 0);
}

TEST(FileSinkPkcs12, ASealedPasswordComesFromTheCaller) {
  TempDir tmp;
  const auto dir = tmp / "live";
  auto m = test::make_test_material("web.internal");
  auto files = pkcs12_files(dir, tmp / "gone.pass");  // deleted by enroll: never read
  files.pkcs12->sealed = true;
  FileSink sink(files);
  auto refused = sink.commit(m, Pkcs12Inputs{"web", m.cert_pem, nullptr});
  ASSERT_FALSE(refused);
  EXPECT_TRUE(contains(refused.error().message, "sealed")) << refused.error().message;
  EXPECT_FALSE(fs::exists(dir / "..data"));

  const Secret password(std::string("from-the-tpm"));
  ASSERT_TRUE(sink.commit(m, Pkcs12Inputs{"web", m.cert_pem, &password}));
  test::write_file(tmp / "check.pass", "from-the-tpm");
  auto back = openssl_pkcs12(dir / "keystore.p12", tmp / "check.pass", {"-nodes"});
  ASSERT_EQ(back.exit_code, 0) << back.err;
  EXPECT_TRUE(test::pem_key_matches_cert(back.out, m.cert_pem));
}

TEST(FileSinkPkcs12, BadInputsFailBeforeAnythingIsWritten) {
  TempDir tmp;
  const auto dir = tmp / "live";
  auto m = test::make_test_material("web.internal");
  {
    FileSink sink(pkcs12_files(dir, tmp / "missing.pass"));
    auto r = sink.commit(m, Pkcs12Inputs{"web", m.cert_pem, nullptr});
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(r.error().message, (tmp / "missing.pass").string())) << r.error().message;
  }
  test::write_file(tmp / "empty.pass", " \n");
  {
    FileSink sink(pkcs12_files(dir, tmp / "empty.pass"));
    auto r = sink.commit(m, Pkcs12Inputs{"web", m.cert_pem, nullptr});
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(r.error().message, "empty")) << r.error().message;
  }
  test::write_file(tmp / "ok.pass", "pw\n");
  {
    FileSink sink(pkcs12_files(dir, tmp / "ok.pass"));
    auto r = sink.commit(m, Pkcs12Inputs{"web", "", nullptr});
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(r.error().message, "trust bundle")) << r.error().message;
    auto junk = sink.commit(m, Pkcs12Inputs{"web", "not a certificate", nullptr});
    ASSERT_FALSE(junk);
  }
  EXPECT_FALSE(fs::exists(dir / "..data"));
}

TEST(FileSinkPkcs12, AGenerationWithoutTheKeystoreIsReportedMissing) {
  TempDir tmp;
  const auto dir = tmp / "live";
  auto m = test::make_test_material("web.internal");
  config::FilesConfig pem_only;
  pem_only.dir = dir;
  ASSERT_TRUE(FileSink(pem_only).commit(m));
  test::write_file(tmp / "p12.pass", "pw");
  FileSink with_p12(pkcs12_files(dir, tmp / "p12.pass"));
  EXPECT_EQ(with_p12.missing_outputs(), (std::vector<std::string>{"keystore.p12", "truststore.p12"}));
  ASSERT_TRUE(with_p12.commit(m, Pkcs12Inputs{"web", m.cert_pem, nullptr}));
  EXPECT_TRUE(with_p12.missing_outputs().empty());
  // Removing every generation takes the PKCS#12 links too.
  ASSERT_TRUE(with_p12.remove_all_generations());
  EXPECT_FALSE(fs::is_symlink(dir / "keystore.p12"));
  EXPECT_FALSE(fs::is_symlink(dir / "truststore.p12"));
}

#ifdef CERTAGENT_KEYTOOL
// Java's own reader: only where keytool was found at configure time (scripts/install-deps.sh
// java; CI does not install a JDK, see the README's "Keystores for Java").
TEST(FileSinkPkcs12, KeystoreAndTruststoreOpenInJavaKeytool) {
  TempDir tmp;
  const auto dir = tmp / "live";
  test::write_file(tmp / "p12.pass", "s3cret-pass\n", fs::perms(0600));
  auto ca = test::make_test_ca("Test Issuing CA");
  auto m = test::make_test_material("web.internal", std::chrono::hours(96), &ca);
  FileSink sink(pkcs12_files(dir, tmp / "p12.pass"));
  ASSERT_TRUE(sink.commit(m, Pkcs12Inputs{"web", ca.cert_pem, nullptr}));
  auto list = [&](const char* file) {
    return test::run({CERTAGENT_KEYTOOL, "-list", "-v", "-storetype", "PKCS12", "-keystore", (dir / file).string(),
                      "-storepass", "s3cret-pass"});
  };
  auto ks = list("keystore.p12");
  ASSERT_EQ(ks.exit_code, 0) << ks.out << ks.err;
  EXPECT_TRUE(contains(ks.out, "Alias name: web")) << ks.out;
  EXPECT_TRUE(contains(ks.out, "Entry type: PrivateKeyEntry")) << ks.out;
  EXPECT_TRUE(contains(ks.out, "Certificate chain length: 2")) << ks.out;
  auto ts = list("truststore.p12");
  ASSERT_EQ(ts.exit_code, 0) << ts.out << ts.err;
  EXPECT_TRUE(contains(ts.out, "Alias name: test issuing ca")) << ts.out;
  EXPECT_TRUE(contains(ts.out, "Entry type: trustedCertEntry")) << ts.out;
}
#endif

}  // namespace
}  // namespace certagent
