// The real binary against the embedded local CA, with lifetimes of seconds.

#include "tests/support/daemon_fixture.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <sstream>
#include <random>
#include <set>
#include <thread>

namespace certagent::test {
namespace {

std::string web_cert(const DaemonFixture& d, const std::string& lifetime = "4s",
                     const std::string& extra = "") {
  return "defaults: { lifetime: " + lifetime + ", max_lifetime: 1h, renew_at: 0.5, jitter: 0.1 }\n"
         "certificates:\n"
         "  - name: web\n"
         "    broker: dev\n"
         "    common_name: web.internal\n"
         "    dns_names: [web.internal, localhost]\n"
         "    ip_addresses: [127.0.0.1]\n"
         "    files: { dir: " + d.live_dir("web").string() + ", keep: 3 }\n" + extra;
}

TEST(Daemon, RotatesOnDiskWithoutEverShowingAMismatchedPair) {
  DaemonFixture d;
  d.write_config(web_cert(d));
  d.start();
  auto first = d.wait_new_serial("web", {}, 20s);
  ASSERT_TRUE(first) << d.log();

  // A reader hammering the files while rotations happen: every read must be consistent.
  std::atomic<bool> done{false};
  std::atomic<int> reads{0};
  std::vector<std::string> problems;
  std::thread reader([&] {
    while (!done) {
      auto why = check_consistent(d.live_dir("web"));
      if (!why.empty() && problems.size() < 10) problems.push_back(why);
      ++reads;
    }
  });
  std::vector<std::string> serials{*first};
  for (int i = 0; i < 3; ++i) {
    auto next = d.wait_new_serial("web", serials, 15s);
    ASSERT_TRUE(next) << "rotation " << i + 1 << " did not happen\n" << d.log();
    serials.push_back(*next);
  }
  done = true;
  reader.join();
  EXPECT_TRUE(problems.empty()) << problems.front();
  EXPECT_GT(reads.load(), 100);
  // The audit line follows the commit by a moment.
  EXPECT_TRUE(wait_until([&] { return d.count_events("issued", "web") >= 4; }, 5s));
  // Graceful stop: exit 0.
  int status = d.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // keep: 3 generations at most, plus nothing else of ours. Counted once stopped: mid-rotation
  // the next generation exists for a moment before the oldest is pruned.
  int generations = 0;
  for (const auto& e : fs::directory_iterator(d.live_dir("web")))
    if (!e.is_symlink() && e.is_directory() && e.path().filename().string().rfind("..", 0) == 0)
      ++generations;
  EXPECT_LE(generations, 3);
  EXPECT_EQ(fs::status(d.live_dir("web") / "key.pem").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  // No key material in the log.
  EXPECT_EQ(d.log().find("PRIVATE KEY"), std::string::npos);
}

TEST(Daemon, ExecHookSeesNameSerialAndDirectory) {
  DaemonFixture d;
  const auto hook_out = d.dir() / "hook.txt";
  d.write_config(web_cert(d, "4s",
                          "    reload:\n"
                          "      - type: exec\n"
                          "        command: [\"/bin/sh\", \"-c\", \"echo \\\"$CERTAGENT_NAME "
                          "$CERTAGENT_SERIAL $CERTAGENT_DIR\\\" >> " +
                              hook_out.string() + "\"]\n"));
  d.start();
  auto serial = d.wait_new_serial("web", {}, 20s);
  ASSERT_TRUE(serial) << d.log();
  const std::string expected = "web " + *serial + " " + d.live_dir("web").string();
  EXPECT_TRUE(wait_until([&] { return read_file(hook_out).find(expected) != std::string::npos; }, 10s))
      << "hook output: " << read_file(hook_out) << "\n" << d.log();
  EXPECT_TRUE(wait_until([&] { return d.metric("certagent_reloads_total",
                                               "name=\"web\",reloader=\"exec\",result=\"success\"")
                                          .value_or(0) >= 1; }, 10s));
}

TEST(Daemon, RestartWithValidMaterialDoesNotReissue) {
  DaemonFixture d;
  d.write_config(web_cert(d, "1h"));
  d.start();
  auto serial = d.wait_new_serial("web", {}, 20s);
  ASSERT_TRUE(serial) << d.log();
  ASSERT_TRUE(wait_until([&] { return d.count_events("issued", "web") == 1; }, 5s));
  d.stop();
  d.start();
  // Up again: the metrics listener answers and reports the same certificate.
  ASSERT_TRUE(wait_until([&] { return d.metric("certagent_certificate_expired", "name=\"web\"").has_value(); }, 20s))
      << d.log();
  ASSERT_TRUE(wait_until([&] { return d.log().find("event=stored_certificate_reused") != std::string::npos; }, 10s))
      << d.log();
  EXPECT_EQ(d.current_serial("web"), *serial);
  EXPECT_EQ(d.count_events("issued", "web"), 1);
  int status = 0;
  d.http_get("/readyz", &status);
  EXPECT_EQ(status, 200);
}

TEST(Daemon, SurvivesSigkillDuringRotationsWithConsistentFiles) {
  DaemonFixture d;
  d.write_config(web_cert(d, "2s"));
  std::mt19937 rng(42);
  std::vector<std::string> serials;
  for (int round = 0; round < 8; ++round) {
    d.start();
    auto next = d.wait_new_serial("web", serials, 20s);
    ASSERT_TRUE(next) << "round " << round << "\n" << d.log();
    serials.push_back(*next);
    // Kill at a random moment of the next rotation cycle.
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<>(0, 1500)(rng)));
    d.kill9();
    EXPECT_EQ(check_consistent(d.live_dir("web")), "") << "after kill in round " << round;
  }
  // The daemon recovers after the last kill.
  d.start();
  EXPECT_TRUE(d.wait_new_serial("web", serials, 20s)) << d.log();
  EXPECT_EQ(check_consistent(d.live_dir("web")), "");
}

TEST(Daemon, FailsClosedAtExpiryAndRecoversWhenTheBrokerIsTrustedAgain) {
  DaemonFixture d;
  // First a normal run, to get a certificate and the dev CA's root.
  const auto bundle = d.dir() / "trust.pem";
  d.write_config(web_cert(d, "6s", "    trust_bundle: " + bundle.string() + "\n"));
  // Until the CA exists, trust some other root: every issuance is rejected by validation.
  const auto other = run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-nodes", "-keyout", (d.dir() / "other.key").string(), "-subj", "/CN=other",
                          "-days", "1", "-out", bundle.string()});
  ASSERT_EQ(other.exit_code, 0) << other.err;
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.count_events("renewal_failed", "web") >= 1; }, 20s)) << d.log();
  EXPECT_EQ(d.current_serial("web"), "");  // nothing written
  int status = 0;
  d.http_get("/readyz", &status);
  EXPECT_EQ(status, 503);
  EXPECT_EQ(d.metric("certagent_renewals_total", "name=\"web\",result=\"rejected\"").value_or(0) >= 1, true);

  // Trust the dev CA: the daemon re-reads the bundle and recovers without a restart.
  const auto root = read_file(d.state_dir() / "local-ca" / "root.pem");
  ASSERT_FALSE(root.empty());
  write_file(bundle, root);
  auto serial = d.wait_new_serial("web", {}, 40s);
  ASSERT_TRUE(serial) << d.log();
  ASSERT_TRUE(wait_until([&] { d.http_get("/readyz", &status); return status == 200; }, 10s));

  // Distrust again: renewals are rejected, the held leaf expires, the daemon fails closed.
  const auto other2 = run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-nodes", "-keyout", (d.dir() / "other2.key").string(), "-subj", "/CN=other2",
                           "-days", "1", "-out", bundle.string()});
  ASSERT_EQ(other2.exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return d.metric("certagent_certificate_expired", "name=\"web\"").value_or(0) == 1; },
                         30s))
      << d.log();
  d.http_get("/readyz", &status);
  EXPECT_EQ(status, 503);
  EXPECT_GE(d.count_events("expired", "web"), 1);
  // Files stay (remove_on_expiry is off): every TLS peer rejects an expired leaf anyway.
  EXPECT_EQ(d.current_serial("web"), *serial);
  EXPECT_NE(d.log().find("event=certificate_expired"), std::string::npos);

  // Trusted again: recovery within one backoff step (<= 30 s once expired).
  write_file(bundle, root);
  auto recovered = d.wait_new_serial("web", {*serial}, 35s);
  EXPECT_TRUE(recovered) << d.log();
  EXPECT_TRUE(wait_until([&] { return d.metric("certagent_certificate_expired", "name=\"web\"").value_or(1) == 0; }, 5s));
}

TEST(Daemon, SighupAppliesANewConfigAndKeepsRunningOnABadOne) {
  DaemonFixture d;
  d.write_config(web_cert(d, "1h"));
  d.start();
  auto serial = d.wait_new_serial("web", {}, 20s);
  ASSERT_TRUE(serial) << d.log();
  // A broken config: logged, ignored, daemon keeps running.
  write_file(d.config_path(), read_file(d.config_path()) + "  - name: [oops\n");
  auto send_hup = [&] { ::kill(d.pid(), SIGHUP); };
  send_hup();
  ASSERT_TRUE(wait_until([&] { return d.log().find("event=config_reload_failed") != std::string::npos; }, 10s))
      << d.log();
  EXPECT_TRUE(d.running());
  // A good one with a second certificate: issued without a restart, the first one untouched.
  d.write_config(web_cert(d, "1h") +
                 "  - name: api\n    broker: dev\n    common_name: api.internal\n"
                 "    files: { dir: " + d.live_dir("api").string() + " }\n");
  send_hup();
  EXPECT_TRUE(d.wait_new_serial("api", {}, 20s)) << d.log();
  EXPECT_EQ(d.current_serial("web"), *serial);
  EXPECT_EQ(d.count_events("issued", "web"), 1);
}

// A reload that removes certificates whose loops are suspended mid-rotation (queued for the
// broker's only slot): the daemon carries on, and the removed ones write nothing more.
TEST(Daemon, SighupRemovingCertificatesMidStormKeepsRunning) {
  DaemonFixture d;
  DaemonFixture::Header header;
  header.extra_brokers = "  one: { type: local, max_in_flight: 1 }\n";
  auto config = [&](int n) {
    std::string body = "defaults: { lifetime: 1h, max_lifetime: 2h }\ncertificates:\n";
    for (int i = 0; i < n; ++i) {
      const std::string name = "c" + std::to_string(i);
      body += "  - { name: " + name + ", broker: one, common_name: " + name + ".internal";
      if (i < 2) body += ", files: { dir: " + d.live_dir(name).string() + " }";
      body += " }\n";
    }
    return body;
  };
  d.write_config(config(300), header);
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.log().find("event=certificate_issued") != std::string::npos; }, 20s))
      << d.log();
  // Two certificates stay, moved to the `dev` broker; `one` goes away with its metric series.
  std::string kept = config(2);
  for (std::size_t at; (at = kept.find("broker: one")) != std::string::npos;) kept.replace(at, 11, "broker: dev");
  d.write_config(kept);  // without `one`
  ::kill(d.pid(), SIGHUP);
  ASSERT_TRUE(wait_until([&] { return d.log().find("event=config_reloaded") != std::string::npos; }, 10s))
      << d.log();
  // Everything queued drains; the two kept certificates are valid; the daemon is alive.
  int status = 0;
  EXPECT_TRUE(wait_until([&] { d.http_get("/readyz", &status); return status == 200; }, 20s)) << d.log();
  EXPECT_TRUE(d.running()) << d.log();
  // Loops still finishing with the retired broker do not bring its series back.
  EXPECT_EQ(d.metric("certagent_broker_requests_in_flight", "broker=\"one\""), std::nullopt);
  EXPECT_EQ(d.metric("certagent_broker_up", "broker=\"one\""), std::nullopt);
  EXPECT_EQ(d.metric("certagent_broker_up", "broker=\"dev\"").value_or(0), 1);
  auto st = run({certagent_binary().string(), "status", "--socket", d.socket_path().string(), "--json"});
  EXPECT_EQ(st.exit_code, 0) << st.err;
  EXPECT_EQ(st.out.find("\"c2\""), std::string::npos) << "a removed certificate is still listed";
  EXPECT_EQ(d.metric("certagent_certificate_expired", "name=\"c299\""), std::nullopt);
  EXPECT_EQ(d.stop(), 0);
}

// A datagram socket standing in for systemd's notification socket: what the daemon sent.
class NotifyReceiver {
 public:
  explicit NotifyReceiver(const fs::path& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  }
  ~NotifyReceiver() { ::close(fd_); }
  // Reads what arrived; returns the last STATUS= value seen so far.
  std::string last_status() {
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd_, buf, sizeof buf, 0)) > 0;) {
      std::istringstream lines(std::string(buf, static_cast<std::size_t>(n)));
      for (std::string line; std::getline(lines, line);)
        if (line.rfind("STATUS=", 0) == 0) status_ = line.substr(7);
    }
    return status_;
  }

 private:
  fs::path path_;
  int fd_{-1};
  std::string status_;
};

// STATUS= (the `Status:` line of `systemctl status`) follows every change: both certificates
// issued within the same second must show as "2/2 certificates valid", not as the count at the
// first change of that second (issue 15: "0/2" for hours).
TEST(Daemon, SystemdStatusFollowsEveryChange) {
  DaemonFixture d;
  d.write_config("defaults: { lifetime: 1h, max_lifetime: 2h }\n"
                 "certificates:\n"
                 "  - { name: one, broker: dev, common_name: one.internal }\n"
                 "  - { name: two, broker: dev, common_name: two.internal }\n");
  NotifyReceiver notify(d.dir() / "notify.sock");
  d.start({"/usr/bin/env", "NOTIFY_SOCKET=" + (d.dir() / "notify.sock").string()});
  EXPECT_TRUE(wait_until([&] { return notify.last_status().rfind("2/2 certificates valid", 0) == 0; }, 20s))
      << "last STATUS=" << notify.last_status() << "\n" << d.log();
  EXPECT_EQ(d.stop(), 0);
}

TEST(Daemon, CheckConfigReportsLocatedErrorsWithExitTwo) {
  DaemonFixture d;
  d.write_config("certificates:\n  - name: web\n    broker: nope\n    common_name: x\n");
  auto r = run({certagent_binary().string(), "check-config", "--config", d.config_path().string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find(d.config_path().string() + ":"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
  d.write_config(web_cert(d));
  r = run({certagent_binary().string(), "check-config", "--config", d.config_path().string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("web.internal"), std::string::npos);
  // `run` with a bad config exits 2 too, without starting.
  d.write_config("bogus_key: 1\n");
  r = run({certagent_binary().string(), "run", "--config", d.config_path().string()}, 20s);
  EXPECT_EQ(r.exit_code, 2);
}

TEST(Daemon, EveryShippedExampleConfigIsValid) {
  int checked = 0;
  for (const auto& e : fs::directory_iterator(source_dir() / "examples")) {
    const auto name = e.path().filename().string();
    if (e.path().extension() != ".yaml" || name == "prometheus-alerts.yaml") continue;
    auto r = run({certagent_binary().string(), "check-config", "--config", e.path().string()});
    EXPECT_EQ(r.exit_code, 0) << name << ": " << r.err;
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

TEST(Daemon, CliBasics) {
  auto r = run({certagent_binary().string(), "version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.rfind("certagent ", 0), 0u);
  r = run({certagent_binary().string(), "--help"});
  EXPECT_EQ(r.exit_code, 0);
  r = run({certagent_binary().string(), "status", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--json"), std::string::npos);
  r = run({certagent_binary().string(), "frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  r = run({certagent_binary().string(), "run", "--bogus"});
  EXPECT_EQ(r.exit_code, 2);
  r = run({certagent_binary().string(), "status", "--socket", "/nonexistent/agent.sock"});
  EXPECT_EQ(r.exit_code, 1);
}

TEST(Daemon, StatusFromStateFileWhenTheDaemonIsDown) {
  DaemonFixture d;
  d.write_config(web_cert(d, "1h"));
  d.start();
  auto serial = d.wait_new_serial("web", {}, 20s);
  ASSERT_TRUE(serial);
  d.stop();
  auto r = run({certagent_binary().string(), "status", "--config", d.config_path().string(), "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(*serial), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"state\":\"valid\""), std::string::npos) << r.out;
}

// The packaged drop-in for files.owner grants CAP_CHOWN and CAP_DAC_READ_SEARCH: as an
// unprivileged user with just those, the daemon hands its files to another owner, still prunes
// old generations, and after a restart reads back (and reuses) the key it gave away.
TEST(Daemon, FilesForAnotherOwnerWithTheDropInCapabilities) {
  ASSERT_EQ(::geteuid(), 0u) << "this test gives files away and needs root to set up";
  DaemonFixture d;
  constexpr uid_t kDaemonUid = 61000;  // no passwd entry needed
  d.write_config("defaults: { lifetime: 10s, max_lifetime: 1h, renew_at: 0.15, jitter: 0.1 }\n"
                 "certificates:\n"
                 "  - name: web\n"
                 "    broker: dev\n"
                 "    common_name: web.internal\n"
                 "    files: { dir: " + d.live_dir("web").string() + ", owner: nobody, group: nogroup, keep: 2 }\n");
  for (const auto& p : fs::recursive_directory_iterator(d.dir().path()))
    ASSERT_EQ(::lchown(p.path().c_str(), kDaemonUid, kDaemonUid), 0) << p.path();
  ASSERT_EQ(::chown(d.dir().path().c_str(), kDaemonUid, kDaemonUid), 0);
  const std::string id = std::to_string(kDaemonUid);
  const std::string caps = "-all,+chown,+dac_read_search";
  const std::vector<std::string> as_daemon_user{
      require_program("setpriv").string(), "--reuid=" + id,          "--regid=" + id, "--clear-groups",
      "--inh-caps=" + caps,                "--ambient-caps=" + caps, "--bounding-set=" + caps};
  d.start(as_daemon_user);
  std::vector<std::string> serials;
  for (int i = 0; i < 4; ++i) {
    auto serial = d.wait_new_serial("web", serials, 20s);
    ASSERT_TRUE(serial) << d.log();
    serials.push_back(*serial);
  }
  struct stat st {};
  ASSERT_EQ(::stat((d.live_dir("web") / "key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  int generations = 0;
  for (const auto& e : fs::directory_iterator(d.live_dir("web"))) {
    const auto name = e.path().filename().string();
    if (name.rfind("..", 0) == 0 && name != "..data" && e.is_directory() && !e.is_symlink()) ++generations;
  }
  EXPECT_LE(generations, 3) << "old generations were not pruned";
  EXPECT_EQ(d.log().find("prune_failed"), std::string::npos) << d.log();
  EXPECT_EQ(check_consistent(d.live_dir("web")), "");

  // A restart reuses what is on disk (no renewal on every restart), key included.
  ASSERT_EQ(d.stop(), 0);
  d.start(as_daemon_user);
  EXPECT_TRUE(wait_until([&] { return d.log().find("event=stored_certificate_reused") != std::string::npos; }, 10s))
      << d.log();
  EXPECT_EQ(d.log().find("event=stored_certificate_unusable"), std::string::npos) << d.log();
}

}  // namespace
}  // namespace certagent::test
