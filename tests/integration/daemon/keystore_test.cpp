// Keystore outputs through the real daemon (issue 18): `formats: [pkcs12]` with the password
// from a file, and sealed into the identity by `certagent enroll`; each rotation writes a
// keystore of the new serial, read back with the openssl CLI.

#include "tests/support/daemon_fixture.h"

#include <gtest/gtest.h>

namespace certagent::test {
namespace {

// The leaf's serial (lowercase hex) in keystore.p12, via `openssl pkcs12` then `openssl x509`.
std::string keystore_serial(const fs::path& p12, const std::string& password) {
  auto certs = run({require_program("openssl").string(), "pkcs12", "-in", p12.string(), "-passin",
                    "pass:" + password, "-nokeys", "-clcerts"});
  if (certs.exit_code != 0) return "openssl pkcs12 failed: " + certs.err;
  const fs::path pem = p12.parent_path().parent_path() / (p12.parent_path().filename().string() + "-leaf.pem");
  write_file(pem, certs.out);
  auto serial = run({require_program("openssl").string(), "x509", "-in", pem.string(), "-noout", "-serial"});
  std::string s = serial.out.substr(serial.out.find('=') + 1);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s.erase(0, std::min(s.find_first_not_of('0'), s.size() - 1));
}

std::string strip_zeros(std::string s) { return s.erase(0, std::min(s.find_first_not_of('0'), s.size() - 1)); }

TEST(Keystore, FromAFileAndSealedInTheIdentityRotateWithThePemFiles) {
  DaemonFixture d;
  write_file(d.dir() / "web.pass", "sealed-pass\n", fs::perms(0600));
  write_file(d.dir() / "api.pass", "file-pass\n", fs::perms(0600));
  auto cert = [&](const std::string& name, bool sealed) {
    return "  - name: " + name + "\n    broker: dev\n    common_name: " + name + ".internal\n    files:\n      dir: " +
           d.live_dir(name).string() + "\n      formats: [pkcs12]\n      pkcs12: { password_file: " +
           (d.dir() / (name + ".pass")).string() + (sealed ? ", sealed: true" : "") + " }\n";
  };
  d.write_config("defaults: { lifetime: 1h, max_lifetime: 2h }\ncertificates:\n" + cert("web", true) + cert("api", false));
  auto enrolled = d.cli({"enroll"});
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
  EXPECT_NE(enrolled.out.find("sealed web.pkcs12_password"), std::string::npos) << enrolled.out;
  EXPECT_FALSE(fs::exists(d.dir() / "web.pass"));  // sealed, then deleted
  EXPECT_TRUE(fs::exists(d.dir() / "api.pass"));   // read at every write, left for the application

  d.start();
  auto web1 = d.wait_new_serial("web", {}, 30s);
  auto api1 = d.wait_new_serial("api", {}, 30s);
  ASSERT_TRUE(web1 && api1) << d.log();
  EXPECT_EQ(keystore_serial(d.live_dir("web") / "keystore.p12", "sealed-pass"), strip_zeros(*web1));
  EXPECT_EQ(keystore_serial(d.live_dir("api") / "keystore.p12", "file-pass"), strip_zeros(*api1));
  auto trust = run({require_program("openssl").string(), "pkcs12", "-in", (d.live_dir("web") / "truststore.p12").string(),
                    "-passin", "pass:sealed-pass", "-nokeys"});
  ASSERT_EQ(trust.exit_code, 0) << trust.err;
  EXPECT_NE(trust.out.find(read_file(d.state_dir() / "local-ca" / "root.pem")), std::string::npos) << trust.out;

  // A rotation writes a keystore of the new serial in the new generation.
  auto renew = run({certagent_binary().string(), "renew", "web", "--socket", d.socket_path().string()});
  ASSERT_EQ(renew.exit_code, 0) << renew.out << renew.err;
  auto web2 = d.wait_new_serial("web", {*web1}, 30s);
  ASSERT_TRUE(web2) << d.log();
  EXPECT_EQ(keystore_serial(d.live_dir("web") / "keystore.p12", "sealed-pass"), strip_zeros(*web2));
  EXPECT_EQ(check_consistent(d.live_dir("web")), "");

  auto doctor = d.cli({"doctor", "--json"});
  EXPECT_NE(doctor.out.find("{\"id\":\"sealed_secret\",\"subject\":\"web.pkcs12_password\",\"verdict\":\"ok\""),
            std::string::npos)
      << doctor.out;
  EXPECT_EQ(d.stop(), 0);
  EXPECT_EQ(d.log().find("sealed-pass"), std::string::npos);
  EXPECT_EQ(d.log().find("file-pass"), std::string::npos);
}

}  // namespace
}  // namespace certagent::test
