// Postfix 3.7 reloaded by the exec reloader (`postfix -c DIR reload`) and verified through SMTP
// STARTTLS (greeting, EHLO, STARTTLS): rotations are seen served while Python's smtplib, with
// chain and name verification, connects throughout without a failure; a broken key is
// reported (Postfix answers STARTTLS with 454) and the next good generation recovers.
// smtpd reads `smtpd_tls_chain_files` = the file sink's bundle.pem (key, then chain): one
// file, so a new smtpd never pairs one generation's key with another's certificate.

#include "agent/builtin_plugins.h"
#include "reloaders/exec_config.h"
#include "tests/integration/reloaders/reloader_fixtures.h"
#include "tests/integration/reloaders/starttls_servers.h"

#include <gtest/gtest.h>

#include <iostream>

#include <unistd.h>

namespace certagent::test::reloaders {
namespace {

namespace r = certagent::reloaders;

// smtpd processes started before the reload may still take a connection
config::ReloaderConfig exec_verified(std::vector<std::string> command, int port, std::chrono::milliseconds deadline) {
  return reloaders::exec_verified(std::move(command), port, config::VerifyProtocol::smtp, 150ms, deadline);
}

class PostfixReloadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0) {
      setup_error_ = "Postfix's master runs only as root: run the suite as root (CI does)";
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
      server = std::make_unique<PostfixServer>(tmp / "postfix", free_tcp_port(), tmp / "live" / "bundle.pem");
    }
    TempDir tmp{"certagent-postfix"};
    TestCa ca;
    Generations gens{tmp / "live"};
    std::uint64_t next_serial{0x3001};
    std::unique_ptr<PostfixServer> server;
  };

  Suite& s() { return *suite_; }
  std::string served() { return served_serial(s().server->port(), "localhost", config::VerifyProtocol::smtp); }

  static inline std::unique_ptr<Suite> suite_;
  static inline std::string setup_error_;
  boost::asio::io_context ioc_;
};

TEST_F(PostfixReloadTest, RotationsAreVerifiedThroughStartTlsWhileSmtpClientsNeverFail) {
  auto& server = *s().server;
  auto client = ClientLoop::python(s().tmp / "clients", "smtp", server.port(), s().tmp / "ca.pem");
  ASSERT_TRUE(wait_until([&] { return client.successes() >= 1; }, 60s)) << client.stop().output_tail;

  auto reloader = make_reloader_or_throw(ioc_, exec_verified(server.reload_command(), server.port(), 10s));
  for (int i = 0; i < 4; ++i) {
    auto m = s().ca.issue(s().next_serial++);
    s().gens.commit(m);
    auto out = run_on(ioc_, reloader->reload(event_for("mail", m, s().tmp / "live")));
    EXPECT_EQ(out.result, r::ReloadResult::success) << out.detail;
    EXPECT_NE(out.detail.find("serial " + m.serial_hex + " served stably"), std::string::npos) << out.detail;
    EXPECT_EQ(served(), m.serial_hex);
    const int before = client.successes();
    EXPECT_TRUE(wait_until([&] { return client.successes() > before; }, 30s));
  }
  auto summary = client.stop();
  std::cout << "smtplib: " << summary.ok << " connections during the rotations, " << summary.failed << " failed, "
            << summary.serials.size() << " serials seen\n";
  EXPECT_EQ(summary.failed, 0) << ::testing::PrintToString(summary.failures) << "\n" << summary.output_tail;
  EXPECT_GE(summary.ok, 5);
  EXPECT_GE(summary.serials.size(), 3u) << "the client saw too few generations";
  // The probe says QUIT after its handshake: smtpd logs an ordinary session.
  const auto log = server.log();
  EXPECT_EQ(log.find("lost connection after STARTTLS"), std::string::npos) << log;
}

TEST_F(PostfixReloadTest, ABrokenKeyIsReportedAndTheNextGenerationRecovers) {
  auto& server = *s().server;
  auto reloader = make_reloader_or_throw(ioc_, exec_verified(server.reload_command(), server.port(), 1500ms));
  auto m = s().ca.issue(s().next_serial++);
  s().gens.commit(m);
  break_current(s().tmp / "live", "bundle.pem");
  // `postfix reload` exits 0; each new smtpd then fails to load the file and disables TLS.
  auto out = run_on(ioc_, reloader->reload(event_for("mail", m, s().tmp / "live")));
  EXPECT_EQ(out.result, r::ReloadResult::unverified) << out.detail;
  EXPECT_NE(out.detail.find("STARTTLS refused: '454 4.7.0 TLS not available due to local problem'"),
            std::string::npos)
      << out.detail;
  EXPECT_NE(server.log().find("disabling TLS support"), std::string::npos) << server.log();

  auto good = s().ca.issue(s().next_serial++);
  s().gens.commit(good);
  auto recovering = make_reloader_or_throw(ioc_, exec_verified(server.reload_command(), server.port(), 10s));
  auto again = run_on(ioc_, recovering->reload(event_for("mail", good, s().tmp / "live")));
  EXPECT_EQ(again.result, r::ReloadResult::success) << again.detail;
  EXPECT_EQ(served(), good.serial_hex);
}

}  // namespace
}  // namespace certagent::test::reloaders
