// The nginx reloader against a real private nginx on loopback: verified rotations, failures
// detected from the pre-check, from the reload command's exit code and from the master's
// [emerg] lines when the command itself cannot tell; reloads never overlap.

#include "agent/builtin_plugins.h"
#include "reloaders/nginx_config.h"
#include "reloaders/nginx_reloader.h"
#include "tests/integration/reloaders/reloader_fixtures.h"

#include <boost/asio/detached.hpp>

#include <gtest/gtest.h>

#include <sys/stat.h>

namespace certagent::test::reloaders {
namespace {

namespace r = certagent::reloaders;

config::ReloaderConfig nginx_config(const NginxServer& server, bool verify = true) {
  config::ReloaderConfig c;
  c.type = "nginx";
  c.timeout = 20s;
  if (verify) {
    config::VerifyConfig v;
    v.connect = "127.0.0.1:" + std::to_string(server.port());
    v.server_name = "localhost";
    v.settle = 150ms;
    v.deadline = 10s;
    c.verify = v;
  }
  r::NginxReloaderConfig n;
  n.command = server.reload_command();
  n.error_log = server.error_log();
  c.settings = n;
  return c;
}

std::unique_ptr<r::Reloader> make(boost::asio::io_context& ioc, const config::ReloaderConfig& c) {
  auto made = certagent::agent::make_reloader(c, r::ReloaderContext{ioc.get_executor()});
  if (!made) throw std::runtime_error(made.error().message);
  return std::move(*made);
}

// Breaks the key of the current generation so that loading it fails (even for root, which
// ignores file modes: the path becomes a directory).
void break_current_key(const fs::path& live) {
  auto key = fs::canonical(live / "key.pem");
  fs::remove(key);
  fs::create_directory(key);
}

class NginxReloaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gens_ = std::make_unique<Generations>(tmp_ / "live");
    gens_->commit(ca_.issue(0x1001));
    server_ = std::make_unique<NginxServer>(tmp_ / "nginx", free_tcp_port(), tmp_ / "live" / "fullchain.pem",
                                            tmp_ / "live" / "key.pem");
    ASSERT_EQ(served_serial(server_->port()), "1001");
  }

  r::ReloadOutcome reload(r::Reloader& reloader, std::uint64_t serial, bool commit = true) {
    auto m = ca_.issue(serial);
    if (commit) gens_->commit(m);
    return run_on(ioc_, reloader.reload(event_for("web", m, tmp_ / "live")));
  }

  TempDir tmp_{"certagent-nginx"};
  TestCa ca_;
  boost::asio::io_context ioc_;
  std::unique_ptr<Generations> gens_;
  std::unique_ptr<NginxServer> server_;
};

TEST_F(NginxReloaderTest, RotationIsVerifiedAfterOldWorkersStop) {
  auto reloader = make(ioc_, nginx_config(*server_));
  for (std::uint64_t serial : {0x1002, 0x1003}) {
    auto out = reload(*reloader, serial);
    EXPECT_EQ(out.result, r::ReloadResult::success) << out.detail;
    EXPECT_NE(out.detail.find("served stably"), std::string::npos) << out.detail;
    EXPECT_EQ(served_serial(server_->port()), hex_serial(serial));
    auto* base = dynamic_cast<r::ReloaderBase*>(reloader.get());
    ASSERT_NE(base, nullptr);
    ASSERT_TRUE(base->last_probe());
    EXPECT_TRUE(base->last_probe()->verified);
    EXPECT_GE(base->last_probe()->elapsed, 150ms);
  }
}

TEST_F(NginxReloaderTest, UnloadableKeyFailsThePreCheck) {
  auto reloader = make(ioc_, nginx_config(*server_));
  auto m = ca_.issue(0x1002);
  gens_->commit(m);
  break_current_key(tmp_ / "live");
  auto out = run_on(ioc_, reloader->reload(event_for("web", m, tmp_ / "live")));
  EXPECT_EQ(out.result, r::ReloadResult::failure) << out.detail;
  EXPECT_NE(out.detail.find("configuration test failed"), std::string::npos) << out.detail;
  EXPECT_NE(out.detail.find("key.pem"), std::string::npos) << out.detail;
  EXPECT_EQ(served_serial(server_->port()), "1001");
}

TEST_F(NginxReloaderTest, UnloadableKeyWithoutPreCheckFailsOnTheExitCode) {
  auto c = nginx_config(*server_);
  edit_settings<r::NginxReloaderConfig>(c, [&](auto& s) { s.test_command = {"true"}; });
  auto reloader = make(ioc_, c);
  auto m = ca_.issue(0x1002);
  gens_->commit(m);
  break_current_key(tmp_ / "live");
  auto out = run_on(ioc_, reloader->reload(event_for("web", m, tmp_ / "live")));
  EXPECT_EQ(out.result, r::ReloadResult::failure) << out.detail;
  EXPECT_NE(out.detail.find("reload command failed (exit code 1)"), std::string::npos) << out.detail;
  EXPECT_EQ(served_serial(server_->port()), "1001");
}

// `kill -HUP` (like any signal) exits 0 whatever the master then does: only the error log
// tells. With verification the [emerg] line stops the probe at once.
TEST_F(NginxReloaderTest, MasterFailureIsReadFromTheErrorLog) {
  for (bool verify : {true, false}) {
    SCOPED_TRACE(verify ? "with verification" : "without verification");
    auto c = nginx_config(*server_, verify);
    auto n = c.settings.as<r::NginxReloaderConfig>();
    n.command = {require_program("kill").string(), "-HUP", std::to_string(server_->master_pid())};
    n.test_command = {"true"};
    c.settings = n;
    auto reloader = make(ioc_, c);
    auto m = ca_.issue(verify ? 0x1002 : 0x1003);
    gens_->commit(m);
    break_current_key(tmp_ / "live");
    const auto start = std::chrono::steady_clock::now();
    auto out = run_on(ioc_, reloader->reload(event_for("web", m, tmp_ / "live")));
    EXPECT_EQ(out.result, r::ReloadResult::failure) << out.detail;
    EXPECT_NE(out.detail.find("nginx master failed the reload"), std::string::npos) << out.detail;
    EXPECT_NE(out.detail.find("[emerg]"), std::string::npos) << out.detail;
    // Detected from the log, well before the 10 s verification deadline.
    EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
    EXPECT_EQ(served_serial(server_->port()), "1001");
    EXPECT_TRUE(server_->running());
  }
}

TEST_F(NginxReloaderTest, BrokenConfigIsAFailureWithAndWithoutPreCheck) {
  auto conf = read_file(server_->conf());
  write_file(server_->conf(), conf + "\nthis_is_not_a_directive on;\n");
  for (bool precheck : {true, false}) {
    SCOPED_TRACE(precheck ? "default pre-check" : "no pre-check");
    auto c = nginx_config(*server_);
    if (!precheck) edit_settings<r::NginxReloaderConfig>(c, [&](auto& s) { s.test_command = {"true"}; });
    auto reloader = make(ioc_, c);
    auto out = reload(*reloader, precheck ? 0x1002 : 0x1003);
    EXPECT_EQ(out.result, r::ReloadResult::failure) << out.detail;
    EXPECT_NE(out.detail.find("this_is_not_a_directive"), std::string::npos) << out.detail;
    EXPECT_EQ(served_serial(server_->port()), "1001");
  }
}

TEST_F(NginxReloaderTest, ServingAnotherCertificateIsUnverified) {
  auto c = nginx_config(*server_);
  c.verify->deadline = 700ms;
  auto reloader = make(ioc_, c);
  // Reload succeeds, but the files on disk are not the material announced in the event.
  auto out = reload(*reloader, 0x2002, /*commit=*/false);
  EXPECT_EQ(out.result, r::ReloadResult::unverified) << out.detail;
  EXPECT_NE(out.detail.find("last served serial 1001"), std::string::npos) << out.detail;
}

// Two certificates served by the same nginx: their reloads are serialized process-wide.
TEST_F(NginxReloaderTest, ReloadsOfTheSameNginxNeverOverlap) {
  const fs::path trace = tmp_ / "trace";
  std::string reload_cmd;
  for (const auto& a : server_->reload_command()) reload_cmd += "'" + a + "' ";
  auto c = nginx_config(*server_, /*verify=*/false);
  auto n = c.settings.as<r::NginxReloaderConfig>();
  n.test_command = {"true"};
  // The reload command records its start and end; a sleep widens the window for an overlap.
  n.command = {"sh", "-c", "echo start >> " + trace.string() + "; sleep 0.3; " + reload_cmd +
                               "; rc=$?; echo end >> " + trace.string() + "; exit $rc"};
  c.settings = n;
  auto first = make(ioc_, c);
  auto second = make(ioc_, c);
  auto m1 = ca_.issue(0x1002);
  auto m2 = ca_.issue(0x1003);
  gens_->commit(m2);
  // reload() takes the event by reference: it must outlive the coroutine.
  const auto e1 = event_for("web", m1, tmp_ / "live");
  const auto e2 = event_for("web", m2, tmp_ / "live");
  std::vector<r::ReloadOutcome> outcomes;
  int exceptions = 0;
  for (auto [rl, ev] : {std::pair{first.get(), &e1}, std::pair{second.get(), &e2}}) {
    boost::asio::co_spawn(ioc_, rl->reload(*ev), [&](std::exception_ptr e, r::ReloadOutcome o) {
      exceptions += e != nullptr;
      outcomes.push_back(std::move(o));
    });
  }
  ioc_.run();
  EXPECT_EQ(exceptions, 0);
  ASSERT_EQ(outcomes.size(), 2u);
  for (const auto& o : outcomes) EXPECT_EQ(o.result, r::ReloadResult::success) << o.detail;
  EXPECT_EQ(read_file(trace), "start\nend\nstart\nend\n");
}

TEST(NginxReloaderCommand, DefaultPreCheckKeepsTheInstanceOptions) {
  using r::NginxReloader;
  EXPECT_EQ(NginxReloader::default_test_command({"nginx", "-s", "reload"}),
            (std::vector<std::string>{"nginx", "-t", "-q"}));
  EXPECT_EQ(NginxReloader::default_test_command(
                {"/usr/sbin/nginx", "-p", "/srv", "-c", "/srv/n.conf", "-g", "daemon off;", "-e", "/l", "-s", "reload"}),
            (std::vector<std::string>{"/usr/sbin/nginx", "-t", "-q", "-p", "/srv", "-c", "/srv/n.conf", "-g",
                                      "daemon off;", "-e", "/l"}));
  EXPECT_EQ(NginxReloader::default_test_command({"nginx", "-c/x.conf", "-s", "reload"}),
            (std::vector<std::string>{"nginx", "-t", "-q", "-c/x.conf"}));
  EXPECT_TRUE(NginxReloader::default_test_command({"kill", "-HUP", "12"}).empty());
  EXPECT_EQ(NginxReloader::instance_key({"nginx", "-c", "/a", "-s", "reload"}),
            NginxReloader::instance_key({"nginx", "-c", "/a", "-e", "/log", "-s", "reload"}));
  EXPECT_NE(NginxReloader::instance_key({"nginx", "-c", "/a", "-s", "reload"}),
            NginxReloader::instance_key({"nginx", "-c", "/b", "-s", "reload"}));
}

}  // namespace
}  // namespace certagent::test::reloaders
