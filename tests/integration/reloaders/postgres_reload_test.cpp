// PostgreSQL 15 reloaded by the exec reloader (`pg_ctl reload`, `SELECT pg_reload_conf()`) and
// verified through the SSLRequest: rotations are seen served while psql sslmode=verify-full
// connects throughout without a failure; a key PostgreSQL refuses (group/world readable) is
// reported, the old certificate stays served, and the next good generation recovers.
// Run as root (CI), the cluster runs as nobody and the file sink gives it the key (0600).

#include "agent/builtin_plugins.h"
#include "reloaders/exec_config.h"
#include "reloaders/reloader_base.h"
#include "tests/integration/reloaders/reloader_fixtures.h"
#include "tests/integration/reloaders/starttls_servers.h"

#include <gtest/gtest.h>

#include <iostream>

#include <sys/stat.h>

namespace certagent::test::reloaders {
namespace {

namespace r = certagent::reloaders;

// the postmaster swaps its SSL context at once: no old workers
config::ReloaderConfig exec_verified(std::vector<std::string> command, int port, std::chrono::milliseconds deadline) {
  return reloaders::exec_verified(std::move(command), port, config::VerifyProtocol::postgres, 0ms, deadline);
}

class PostgresReloadTest : public ::testing::Test {
 protected:
  // One cluster for the suite: initdb is most of the start-up cost.
  static void SetUpTestSuite() {
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
      server = std::make_unique<PostgresServer>(tmp / "pg", free_tcp_port(), tmp / "live" / "fullchain.pem",
                                                tmp / "live" / "key.pem", user);
    }
    RunAs user = postgres_user();
    TempDir tmp{"certagent-pg"};
    TestCa ca;
    Generations gens{tmp / "live", user.switch_user ? user.name : std::string()};
    std::uint64_t next_serial{0x2001};
    std::unique_ptr<PostgresServer> server;
  };

  Suite& s() { return *suite_; }
  std::string served() { return served_serial(s().server->port(), "localhost", config::VerifyProtocol::postgres); }
  r::ReloadOutcome rotate(r::Reloader& reloader, Material& m) {
    m = s().ca.issue(s().next_serial++);
    s().gens.commit(m);
    return run_on(ioc_, reloader.reload(event_for("db", m, s().tmp / "live")));
  }

  static inline std::unique_ptr<Suite> suite_;
  static inline std::string setup_error_;
  boost::asio::io_context ioc_;
};

TEST_F(PostgresReloadTest, RotationsAreVerifiedThroughTheSslRequestWhilePsqlNeverFails) {
  auto& server = *s().server;
  // The key as PostgreSQL demands it: owned by the cluster's user, 0600.
  struct stat st {};
  ASSERT_EQ(::stat((s().tmp / "live" / "key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, s().user.uid);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto client = ClientLoop::psql(s().tmp / "clients", server.psql_verify_full(s().tmp / "ca.pem"));
  ASSERT_TRUE(wait_until([&] { return client.successes() >= 1; }, 60s)) << client.stop().output_tail;

  auto by_pg_ctl = make_reloader_or_throw(ioc_, exec_verified(server.pg_ctl_reload(), server.port(), 10s));
  auto by_sql = make_reloader_or_throw(ioc_, exec_verified(server.sql_reload(), server.port(), 10s));
  for (int i = 0; i < 4; ++i) {
    r::Reloader& reloader = i % 2 == 0 ? *by_pg_ctl : *by_sql;
    Material m;
    auto out = rotate(reloader, m);
    EXPECT_EQ(out.result, r::ReloadResult::success) << out.detail;
    EXPECT_NE(out.detail.find("serial " + m.serial_hex + " served stably"), std::string::npos) << out.detail;
    EXPECT_EQ(served(), m.serial_hex);
    // Let psql connect to each generation before the next rotation.
    const int before = client.successes();
    EXPECT_TRUE(wait_until([&] { return client.successes() > before; }, 30s));
  }
  auto summary = client.stop();
  std::cout << "psql: " << summary.ok << " connections during the rotations, " << summary.failed << " failed, "
            << summary.serials.size() << " serials seen\n";
  EXPECT_EQ(summary.failed, 0) << ::testing::PrintToString(summary.failures) << "\n" << summary.output_tail;
  EXPECT_GE(summary.ok, 5);
  // The probe ends each session with a close_notify: nothing about it in PostgreSQL's log.
  const auto log = server.log();
  EXPECT_EQ(log.find("could not receive data from client"), std::string::npos) << log;
  EXPECT_EQ(log.find("could not accept SSL connection"), std::string::npos) << log;
}

TEST_F(PostgresReloadTest, AKeyPostgresRefusesIsReportedAndTheOldCertificateStaysServed) {
  auto& server = *s().server;
  auto reloader = make_reloader_or_throw(ioc_, exec_verified(server.pg_ctl_reload(), server.port(), 1500ms));
  const std::string old = served();
  ASSERT_FALSE(old.empty());
  ASSERT_EQ(old.find("error"), std::string::npos) << old;

  auto m = s().ca.issue(s().next_serial++);
  s().gens.commit(m);
  // World-readable: PostgreSQL keeps its old SSL configuration ("SSL configuration was not
  // reloaded"); pg_ctl still exits 0, so only the probe can tell.
  fs::permissions(fs::canonical(s().tmp / "live" / "key.pem"), fs::perms(0644));
  auto out = run_on(ioc_, reloader->reload(event_for("db", m, s().tmp / "live")));
  EXPECT_EQ(out.result, r::ReloadResult::unverified) << out.detail;
  EXPECT_NE(out.detail.find("last served serial " + old), std::string::npos) << out.detail;
  EXPECT_TRUE(wait_until([&] { return server.log().find("has group or world access") != std::string::npos; }, 10s))
      << server.log();
  EXPECT_EQ(served(), old);

  // The next good generation is served again.
  auto recovering = make_reloader_or_throw(ioc_, exec_verified(server.pg_ctl_reload(), server.port(), 10s));
  Material good;
  auto again = rotate(*recovering, good);
  EXPECT_EQ(again.result, r::ReloadResult::success) << again.detail;
  EXPECT_EQ(served(), good.serial_hex);
}

}  // namespace
}  // namespace certagent::test::reloaders
