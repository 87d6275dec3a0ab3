// Dovecot 2.3 reloaded by the exec reloader (`doveadm -c FILE reload`) and verified through
// IMAP STARTTLS: rotations are seen served while Python's imaplib, with chain and name
// verification, connects throughout without a failure; a broken key is reported and the next
// good generation recovers.

#include "agent/builtin_plugins.h"
#include "reloaders/exec_config.h"
#include "tests/integration/reloaders/reloader_fixtures.h"
#include "tests/integration/reloaders/starttls_servers.h"

#include <gtest/gtest.h>

#include <iostream>

#include <unistd.h>

#include <sstream>

namespace certagent::test::reloaders {
namespace {

namespace r = certagent::reloaders;

// login processes started before the reload may still take a connection
config::ReloaderConfig exec_verified(std::vector<std::string> command, int port, std::chrono::milliseconds deadline) {
  return reloaders::exec_verified(std::move(command), port, config::VerifyProtocol::imap, 150ms, deadline);
}

class DovecotReloadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0) {
      setup_error_ = "this Dovecot instance runs as root, as Dovecot does: run the suite as root (CI does)";
      return;
    }
    try {
      suite_ = std::make_unique<Suite>();
    } catch (const std::exception& e) {
      setup_error_ = e.what();
    }
  }
  static void TearDownTestSuite() { suite_.reset(); }
  void SetUp() override { ASSERT_TRUE(suite_) << setup_error_; }

  struct Suite {
    Suite() {
      open_for_others(tmp.path());
      write_file(tmp / "ca.pem", ca.cert_pem());
      gens.commit(ca.issue(next_serial++));
      server = std::make_unique<DovecotServer>(tmp / "dovecot", free_tcp_port(), tmp / "live" / "fullchain.pem",
                                               tmp / "live" / "key.pem");
    }
    TempDir tmp{"certagent-dovecot"};
    TestCa ca;
    Generations gens{tmp / "live"};
    std::uint64_t next_serial{0x4001};
    std::unique_ptr<DovecotServer> server;
  };

  Suite& s() { return *suite_; }
  std::string served() { return served_serial(s().server->port(), "localhost", config::VerifyProtocol::imap); }

  static inline std::unique_ptr<Suite> suite_;
  static inline std::string setup_error_;
  boost::asio::io_context ioc_;
};

TEST_F(DovecotReloadTest, RotationsAreVerifiedThroughStartTlsWhileImapClientsNeverFail) {
  auto& server = *s().server;
  auto client = ClientLoop::python(s().tmp / "clients", "imap", server.port(), s().tmp / "ca.pem");
  ASSERT_TRUE(wait_until([&] { return client.successes() >= 1; }, 60s)) << client.stop().output_tail;

  auto reloader = make_reloader_or_throw(ioc_, exec_verified(server.reload_command(), server.port(), 10s));
  for (int i = 0; i < 4; ++i) {
    auto m = s().ca.issue(s().next_serial++);
    s().gens.commit(m);
    auto out = run_on(ioc_, reloader->reload(event_for("imap", m, s().tmp / "live")));
    EXPECT_EQ(out.result, r::ReloadResult::success) << out.detail;
    EXPECT_NE(out.detail.find("serial " + m.serial_hex + " served stably"), std::string::npos) << out.detail;
    EXPECT_EQ(served(), m.serial_hex);
    const int before = client.successes();
    EXPECT_TRUE(wait_until([&] { return client.successes() > before; }, 30s));
  }
  auto summary = client.stop();
  std::cout << "imaplib: " << summary.ok << " connections during the rotations, " << summary.failed << " failed, "
            << summary.serials.size() << " serials seen\n";
  EXPECT_EQ(summary.failed, 0) << ::testing::PrintToString(summary.failures) << "\n" << summary.output_tail;
  EXPECT_GE(summary.ok, 5);
  EXPECT_GE(summary.serials.size(), 3u) << "the client saw too few generations";
  // The probe says LOGOUT after its handshake: imap-login logs an ordinary logout, never a TLS
  // session closed under it.
  const auto log = server.log();
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (line.find(", TLS") == std::string::npos) continue;
    EXPECT_EQ(line.find("Disconnected: Connection closed"), std::string::npos) << line;
  }
}

TEST_F(DovecotReloadTest, ABrokenKeyIsReportedAndTheNextGenerationRecovers) {
  auto& server = *s().server;
  auto reloader = make_reloader_or_throw(ioc_, exec_verified(server.reload_command(), server.port(), 1500ms));
  const std::string old = served();
  ASSERT_EQ(old.find("error"), std::string::npos) << old;
  auto m = s().ca.issue(s().next_serial++);
  s().gens.commit(m);
  break_current(s().tmp / "live", "key.pem");
  // `doveadm reload` exits 0; the master cannot read the new configuration and keeps the old.
  auto out = run_on(ioc_, reloader->reload(event_for("imap", m, s().tmp / "live")));
  EXPECT_EQ(out.result, r::ReloadResult::unverified) << out.detail;
  EXPECT_NE(out.detail.find("last served serial " + old), std::string::npos) << out.detail;
  EXPECT_TRUE(wait_until([&] { return server.log().find("Error reading configuration") != std::string::npos; }, 10s))
      << server.log();
  EXPECT_EQ(served(), old);

  auto good = s().ca.issue(s().next_serial++);
  s().gens.commit(good);
  auto recovering = make_reloader_or_throw(ioc_, exec_verified(server.reload_command(), server.port(), 10s));
  auto again = run_on(ioc_, recovering->reload(event_for("imap", good, s().tmp / "live")));
  EXPECT_EQ(again.result, r::ReloadResult::success) << again.detail;
  EXPECT_EQ(served(), good.serial_hex);
}

}  // namespace
}  // namespace certagent::test::reloaders
