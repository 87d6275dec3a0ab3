// `certagent doctor` (issue 18) against a real setup: the daemon, multirootca brokers, and
// `openssl s_server` as the TLS server a verify address points at. A healthy host passes every
// check (exit 0); each deliberate breakage is named by its own check in the JSON, with the
// file, secret, broker or directory at fault — not only in the exit code.

#include "tests/support/daemon_fixture.h"
#include "tests/support/multirootca.h"
#include "tests/support/swtpm.h"
#include "tests/support/test_pki.h"

#include <boost/json.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace certagent::test {
namespace {

namespace json = boost::json;

struct Doctor {
  int exit_code{-1};
  json::array checks;
  std::string raw;
};

Doctor doctor(const DaemonFixture& d) {
  auto r = d.cli({"doctor", "--json"});
  Doctor out;
  out.exit_code = r.exit_code;
  out.raw = r.out + r.err;
  boost::system::error_code ec;
  auto v = json::parse(r.out, ec);
  if (!ec && v.is_object()) {
    if (const auto* c = v.as_object().if_contains("checks"); c && c->is_array()) out.checks = c->as_array();
    EXPECT_EQ(v.as_object().at("exit_code").as_int64(), r.exit_code) << r.out;
  }
  return out;
}

std::string field(const json::value& c, const char* key) {
  const auto* v = c.as_object().if_contains(key);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

// The check with this id and subject; fails the test when there is none.
json::object find(const Doctor& d, const std::string& id, const std::string& subject) {
  for (const auto& c : d.checks)
    if (field(c, "id") == id && field(c, "subject") == subject) return c.as_object();
  ADD_FAILURE() << "no check " << id << " / " << subject << " in\n" << d.raw;
  return {};
}

void expect_verdict(const Doctor& d, const std::string& id, const std::string& subject, const std::string& verdict,
                    const std::string& says = "") {
  SCOPED_TRACE(id + " / " + subject);
  auto c = find(d, id, subject);
  if (c.empty()) return;
  EXPECT_EQ(field(c, "verdict"), verdict) << json::serialize(c);
  if (!says.empty()) {
    EXPECT_NE((field(c, "message") + " " + field(c, "fix")).find(says), std::string::npos) << json::serialize(c);
  }
  if (verdict == "fail" || verdict == "warn") {
    EXPECT_FALSE(field(c, "fix").empty()) << json::serialize(c);
  }
}

// `openssl s_server` serving the files the daemon wrote: a real TLS server for verify addresses.
struct TlsServer {
  TlsServer(const fs::path& live, int port)
      : process({require_program("openssl").string(), "s_server", "-accept", "127.0.0.1:" + std::to_string(port),
                 "-cert", (live / "cert.pem").string(), "-key", (live / "key.pem").string(), "-www", "-quiet"},
                Process::Options{}) {
    EXPECT_TRUE(wait_until([&] { return tcp_connectable(port); }, 10s));
  }
  static bool tcp_connectable(int port) {
    auto r = run({"/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port)}, 5s);
    return r.exit_code == 0;
  }
  Process process;
};

TEST(Doctor, AHealthyHostPassesEveryCheck) {
  DaemonFixture d;
  const int port = free_tcp_port();
  d.write_config("defaults: { lifetime: 1h, max_lifetime: 2h }\n"
                 "certificates:\n"
                 "  - name: web\n"
                 "    broker: dev\n"
                 "    common_name: web.internal\n"
                 "    dns_names: [web.internal]\n"
                 "    files: { dir: " + d.live_dir("web").string() + " }\n"
                 "    reload:\n"
                 "      - type: exec\n"
                 "        command: [\"/bin/true\"]\n"
                 "        verify: { connect: \"127.0.0.1:" + std::to_string(port) + "\", server_name: web.internal }\n");
  d.start();
  ASSERT_TRUE(d.wait_new_serial("web", {}, 30s)) << d.log();
  TlsServer server(d.live_dir("web"), port);

  auto r = doctor(d);
  std::string not_ok;
  for (const auto& c : r.checks)
    if (field(c, "verdict") != "ok" && field(c, "verdict") != "skip") not_ok += json::serialize(c) + "\n";
  EXPECT_EQ(r.exit_code, 0) << not_ok << r.raw;
  expect_verdict(r, "config", d.config_path().string(), "ok");
  expect_verdict(r, "state_dir", d.state_dir().string(), "ok", "0700");
  expect_verdict(r, "identity", "file " + (d.state_dir() / "identity").string(), "skip");  // the local CA needs none
  expect_verdict(r, "broker", "dev", "ok");
  expect_verdict(r, "daemon", d.socket_path().string(), "ok");
  expect_verdict(r, "trust_bundle", "web", "ok", "covers the current certificate");
  expect_verdict(r, "files", "web", "ok");
  expect_verdict(r, "reloader", "web reload[0] exec", "ok");
  expect_verdict(r, "verify", "web reload[0] exec", "ok", "serves the current serial " + d.current_serial("web"));

  // The text form says the same, one line per check.
  auto text = d.cli({"doctor"});
  EXPECT_EQ(text.exit_code, 0) << text.out;
  EXPECT_NE(text.out.find("checks: 0 failed, 0 warnings"), std::string::npos) << text.out;

  // The daemon stopped: it says so (a warning), and the verify address still serves the old
  // files; then the TLS server stopped too: the verify check fails and names the address.
  ASSERT_EQ(d.stop(), 0);
  server.process.stop(15, 10s);
  auto down = doctor(d);
  EXPECT_EQ(down.exit_code, 2) << down.raw;
  expect_verdict(down, "daemon", d.socket_path().string(), "warn", "does not answer");
  expect_verdict(down, "verify", "web reload[0] exec", "fail", "127.0.0.1:" + std::to_string(port));
}

TEST(Doctor, EachBrokenPartIsNamed) {
  DaemonFixture d;
  Multirootca ca(d.dir() / "cfssl");
  std::optional<Multirootca> stopped(std::in_place, d.dir() / "cfssl-stopped");
  const fs::path wrong_ca = d.dir() / "wrong-ca.pem";
  write_file(wrong_ca, make_cert(CertSpec{.common_name = "Unrelated CA", .is_ca = true}).cert_pem());
  auto broker = [&](const std::string& name, const std::string& url, const fs::path& ca_bundle, const fs::path& key) {
    return "  " + name + ":\n    type: cfssl\n    url: " + url + "\n    ca_bundle: " + ca_bundle.string() +
           "\n    auth_key_file: " + key.string() + "\n    profile: short\n    label: primary\n    timeout: 5s\n";
  };
  for (const char* k : {"ok.key", "tls.key", "stopped.key"})
    write_file(d.dir() / k, read_file(ca.auth_key_file()), fs::perms(0600));
  write_file(d.dir() / "wrong.key", "00112233445566778899aabbccddeeff\n", fs::perms(0600));
  DaemonFixture::Header header;
  header.extra_brokers = broker("ok", ca.url(), ca.tls_ca_file(), d.dir() / "ok.key") +
                         broker("tls", ca.url(), wrong_ca, d.dir() / "tls.key") +
                         broker("stopped", stopped->url(), stopped->tls_ca_file(), d.dir() / "stopped.key") +
                         broker("badkey", ca.url(), ca.tls_ca_file(), d.dir() / "wrong.key");
  auto cert = [&](const std::string& name, const std::string& trust, const std::string& extra = "",
                  const std::string& via = "ok") {
    return "  - name: " + name + "\n    broker: " + via + "\n    common_name: " + name + ".internal\n    dns_names: [" + name +
           ".internal]\n    trust_bundle: " + trust + "\n    files: { dir: " + d.live_dir(name).string() + extra + " }\n";
  };
  const std::string certs = "defaults: { lifetime: 5m, max_lifetime: 1h }\ncertificates:\n" +
                            cert("web", ca.ca_file().string(), ", owner: root") + cert("locked", ca.ca_file().string()) +
                            cert("refused", ca.ca_file().string(), "", "badkey");
  d.write_config(certs, header);
  auto enrolled = d.cli({"enroll"});
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
  d.start();
  ASSERT_TRUE(d.wait_new_serial("web", {}, 60s)) << d.log();
  ASSERT_TRUE(d.wait_new_serial("locked", {}, 60s)) << d.log();
  // The daemon has seen each broker answer (or not) once.
  // A certificate of the broker that refuses our key: the daemon has tried it once.
  ASSERT_TRUE(wait_until([&] { return d.socket_get("/v1/certificates").find("\"reason\":\"credentials\"") != std::string::npos; }, 30s))
      << d.socket_get("/v1/certificates");

  // The breakages:
  // - a broker stopped after enrolment;
  stopped.reset();
  // - a broker whose secret was never sealed (added to the config after enroll);
  header.extra_brokers += broker("unsealed", ca.url(), ca.tls_ca_file(), d.dir() / "unsealed.key");
  // - web's trust bundle replaced by a CA that never issued its certificate;
  const std::string broken = "defaults: { lifetime: 5m, max_lifetime: 1h }\ncertificates:\n" +
                             cert("web", wrong_ca.string(), ", owner: root") + cert("locked", ca.ca_file().string()) +
                             cert("refused", ca.ca_file().string(), "", "badkey");
  d.write_config(broken, header);
  // - the daemon's user (state_dir's owner) is nobody, and locked's directory is root's 0755;
  //   web's belongs to nobody.
  ASSERT_EQ(::chown(d.state_dir().c_str(), 65534, 65534), 0);
  ASSERT_EQ(::chown(d.live_dir("web").c_str(), 65534, 65534), 0);
  ASSERT_EQ(::chmod(d.live_dir("locked").c_str(), 0755), 0);

  auto r = doctor(d);
  EXPECT_EQ(r.exit_code, 2) << r.raw;
  expect_verdict(r, "config", d.config_path().string(), "ok");
  expect_verdict(r, "state_dir", d.state_dir().string(), "ok", "owner nobody");
  expect_verdict(r, "identity", "file " + (d.state_dir() / "identity").string(), "warn", "development only");
  expect_verdict(r, "sealed_secret", "ok.cfssl_auth", "ok");
  expect_verdict(r, "sealed_secret", "unsealed.cfssl_auth", "fail", (d.dir() / "unsealed.key").string());
  expect_verdict(r, "broker", "ok", "ok");
  expect_verdict(r, "broker", "tls", "fail", "ca_bundle " + wrong_ca.string());
  expect_verdict(r, "broker", "stopped", "fail", "start the broker");
  expect_verdict(r, "broker_credentials", "ok", "ok");
  expect_verdict(r, "broker", "badkey", "ok");  // it answers ...
  expect_verdict(r, "broker_credentials", "badkey", "fail", "refused: credentials");  // ... and refuses us
  expect_verdict(r, "broker_credentials", "tls", "skip");  // the broker check names the problem
  // refused has no files yet, and its parent directory is root's: the daemon could not create it.
  expect_verdict(r, "files", "refused", "fail", d.live_dir("refused").string() + " does not exist and " +
                                                   (d.dir() / "live").string() + " is not writable by nobody");
  expect_verdict(r, "daemon", d.socket_path().string(), "warn", "not ready");
  expect_verdict(r, "trust_bundle", "web", "fail", wrong_ca.string() + " does not cover the current certificate");
  expect_verdict(r, "trust_bundle", "locked", "ok");
  expect_verdict(r, "files", "web", "ok");
  expect_verdict(r, "files", "locked", "fail", "not writable by the daemon's user nobody");

  // The config itself broken: one failure naming file:line:column, nothing else checked.
  write_file(d.config_path(), read_file(d.config_path()) + "bogus_key: 1\n");
  auto bad = doctor(d);
  EXPECT_EQ(bad.exit_code, 2) << bad.raw;
  ASSERT_EQ(bad.checks.size(), 1u) << bad.raw;
  expect_verdict(bad, "config", d.config_path().string(), "fail", d.config_path().string() + ":");
  EXPECT_NE(field(bad.checks[0], "message").find("unknown key 'bogus_key'"), std::string::npos) << bad.raw;
  EXPECT_EQ(d.stop(), 0);
}

TEST(Doctor, TheTpmAndASealedKeystorePassword) {
  DaemonFixture d;
  tpm::test::Swtpm tpm(d.dir() / "swtpm");
  DaemonFixture::Header header;
  header.identity = "{ backend: tpm, tcti: \"" + tpm.tcti() + "\" }";
  write_file(d.dir() / "web.pass", "pw\n", fs::perms(0600));
  d.write_config("certificates:\n  - name: web\n    broker: dev\n    common_name: web.internal\n    files:\n"
                 "      dir: " + d.live_dir("web").string() + "\n      formats: [pkcs12]\n"
                 "      pkcs12: { password_file: " + (d.dir() / "web.pass").string() + ", sealed: true }\n",
                 header);
  auto enrolled = d.cli({"enroll"});
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;

  // The daemon is not running (a swtpm socket serves one client at a time).
  auto r = doctor(d);
  const std::string subject = "tpm " + tpm.tcti();
  expect_verdict(r, "identity", subject, "ok", "the TPM answers");
  expect_verdict(r, "sealed_secret", "web.pkcs12_password", "ok");
  expect_verdict(r, "daemon", d.socket_path().string(), "warn", "does not answer");
  expect_verdict(r, "files", "web", "warn", "does not exist yet");
  EXPECT_EQ(r.exit_code, 1) << r.raw;  // warnings only

  // With the daemon running on a TPM without a resource manager (a swtpm socket, /dev/tpm0), doctor
  // leaves the TPM alone: a second client would take the object slots the daemon needs.
  d.start();
  ASSERT_TRUE(d.wait_new_serial("web", {}, 30s)) << d.log();
  auto busy = doctor(d);
  expect_verdict(busy, "identity", subject, "skip", "no resource manager");
  expect_verdict(busy, "sealed_secret", "web.pkcs12_password", "skip", "no resource manager");
  expect_verdict(busy, "files", "web", "ok");
  EXPECT_EQ(d.stop(), 0);
  EXPECT_EQ(d.log().find("out of memory for object contexts"), std::string::npos) << d.log();

  // The TPM gone: the identity check fails and says where it looked; what needs it is not checked.
  tpm.stop();
  auto gone = doctor(d);
  EXPECT_EQ(gone.exit_code, 2) << gone.raw;
  expect_verdict(gone, "identity", subject, "fail", "check that the TPM answers at " + tpm.tcti());
  expect_verdict(gone, "sealed_secret", "web.pkcs12_password", "skip");
}

}  // namespace
}  // namespace certagent::test
