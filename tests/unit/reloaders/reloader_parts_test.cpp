// The registry, the envoy SDS directory swap (layout on disk and the inotify events Envoy
// reacts to), the async mutex, the nginx error-log watch and the probe's small parsers.

#include "agent/builtin_plugins.h"
#include "core/async/async_mutex.h"
#include "reloaders/envoy_reloader.h"
#include "reloaders/exec_config.h"
#include "reloaders/haproxy_config.h"
#include "reloaders/nginx_reloader.h"
#include "reloaders/serving_probe.h"
#include "reloaders/signal_config.h"
#include "reloaders/systemd_config.h"
#include "tests/support/test_support.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>

#include <gtest/gtest.h>

#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>

namespace certagent::reloaders {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using test::TempDir;
namespace fs = std::filesystem;

Material fake_material(const std::string& serial) {
  Material m;
  m.cert_pem = "-----BEGIN CERTIFICATE-----\nLEAF" + serial + "\n-----END CERTIFICATE-----\n";
  m.chain_pem = "-----BEGIN CERTIFICATE-----\nINTERMEDIATE\n-----END CERTIFICATE-----\n";
  m.key_pem = Secret("-----BEGIN PRIVATE KEY-----\nKEY" + serial + "\n-----END PRIVATE KEY-----\n");
  m.serial_hex = serial;
  return m;
}

std::vector<std::string> generations(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (name.rfind("..", 0) == 0 && name != "..data" && e.is_directory() && !e.is_symlink()) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ---- registry ---------------------------------------------------------------------------------

TEST(Registry, KnownTypesAndResultNames) {
  std::vector<std::string> types;
  for (const auto& t : agent::builtin_plugins().reloaders) types.push_back(t.config.name);
  EXPECT_EQ(types, (std::vector<std::string>{"exec", "signal", "systemd", "nginx", "haproxy", "envoy"}));
  EXPECT_EQ(to_string(ReloadResult::success), "success");
  EXPECT_EQ(to_string(ReloadResult::failure), "failure");
  EXPECT_EQ(to_string(ReloadResult::unverified), "unverified");
  EXPECT_EQ(to_string(ReloadResult::timeout), "timeout");
}

TEST(Registry, BuildsEachTypeAndRejectsIncompleteSettings) {
  asio::io_context ioc;
  ReloaderContext ctx{ioc.get_executor()};
  struct Case {
    std::string name;       // the entry's type
    config::SettingsSlot settings;
    bool ok;                // built, or the error contains error_part
    std::string error_part;
  };
  ExecReloaderConfig exec_ok{{"true"}};
  SignalReloaderConfig sig_ok;
  sig_ok.pid = 1;
  SystemdReloaderConfig sd_ok;
  sd_ok.unit = "x.service";
  SystemdReloaderConfig sd_bad = sd_ok;
  sd_bad.action = "stop";
  HaproxyReloaderConfig hp_ok{"/run/haproxy.sock", "/etc/site.pem"};
  EnvoyReloaderConfig env_ok{"/tmp/sds"};
  std::vector<Case> cases = {
      {"exec", exec_ok, true, ""},
      {"exec", ExecReloaderConfig{}, false, "command must not be empty"},
      {"signal", sig_ok, true, ""},
      {"signal", SignalReloaderConfig{}, false, "pid_file or a positive pid"},
      {"systemd", sd_ok, true, ""},
      {"systemd", SystemdReloaderConfig{}, false, "unit must not be empty"},
      {"systemd", sd_bad, false, "action 'stop'"},
      {"nginx", NginxReloaderConfig{}, true, ""},
      {"haproxy", hp_ok, true, ""},
      {"haproxy", HaproxyReloaderConfig{}, false, "admin_socket"},
      {"haproxy", HaproxyReloaderConfig{"/run/haproxy.sock", "a b"}, false, "white space"},
      {"envoy", env_ok, true, ""},
      {"envoy", EnvoyReloaderConfig{}, false, "sds_dir"},
      // Settings of another type than the entry's: an error, never a crash.
      {"envoy", exec_ok, false, "no envoy settings"},
  };
  for (const auto& c : cases) {
    config::ReloaderConfig rc;
    rc.type = c.name;
    rc.settings = c.settings;
    auto r = agent::make_reloader(rc, ctx);
    if (!c.ok) {
      ASSERT_FALSE(r) << c.error_part;
      EXPECT_NE(r.error().message.find(c.error_part), std::string::npos) << r.error().message;
    } else {
      ASSERT_TRUE(r) << r.error().message;
      EXPECT_EQ((*r)->type(), c.name);
    }
  }
  config::ReloaderConfig bad_verify;
  bad_verify.type = "exec";
  bad_verify.settings = exec_ok;
  bad_verify.verify = config::VerifyConfig{"no-port-here"};
  auto r = agent::make_reloader(bad_verify, ctx);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("verify.connect"), std::string::npos) << r.error().message;
}

// ---- envoy ------------------------------------------------------------------------------------

TEST(EnvoyReloader, SwapsAGenerationDirectoryAndKeepsThePreviousOne) {
  TempDir tmp;
  const auto sds = tmp / "sds" / "web";
  asio::io_context ioc;
  config::ReloaderConfig c;
  c.type = "envoy";
  c.settings = EnvoyReloaderConfig{sds};
  auto made = agent::make_reloader(c, ReloaderContext{ioc.get_executor()});
  ASSERT_TRUE(made);
  auto& reloader = **made;

  // Envoy's watched_directory reacts to IN_MOVED_TO in the directory.
  std::vector<std::string> current_gens;
  for (int i = 1; i <= 3; ++i) {
    const std::string serial = "abc" + std::to_string(i);
    ReloadEvent e;
    e.cert_name = "web";
    e.material = std::make_shared<Material>(fake_material(serial));
    int ino = -1;
    int wd = -1;
    if (fs::exists(sds)) {
      ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
      wd = inotify_add_watch(ino, sds.c_str(), IN_MOVED_TO | IN_CREATE | IN_CLOSE_WRITE);
      ASSERT_GE(wd, 0);
    }
    std::optional<ReloadOutcome> out;
    asio::co_spawn(ioc, reloader.reload(e), [&](std::exception_ptr, ReloadOutcome o) { out = std::move(o); });
    ioc.restart();
    ioc.run();
    ASSERT_TRUE(out);
    ASSERT_EQ(out->result, ReloadResult::success) << out->detail;

    // ..data -> the new generation; sds.json -> ..data/sds.json
    const auto target = fs::read_symlink(sds / "..data").string();
    EXPECT_NE(target.find(serial), std::string::npos) << target;
    EXPECT_EQ(target.find('/'), std::string::npos) << "relative link expected: " << target;
    EXPECT_EQ(fs::read_symlink(sds / "sds.json"), fs::path("..data/sds.json"));
    struct stat st {};
    ASSERT_EQ(::stat((sds / target / "sds.json").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);

    auto doc = boost::json::parse(test::read_file(sds / "sds.json"));
    const auto& res = doc.at("resources").at(0);
    EXPECT_EQ(res.at("@type").as_string(), "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
    EXPECT_EQ(res.at("name").as_string(), "web");
    const auto& tls = res.at("tls_certificate");
    EXPECT_EQ(tls.at("certificate_chain").at("inline_string").as_string(), e.material->fullchain_pem());
    EXPECT_EQ(tls.at("private_key").at("inline_string").as_string(), e.material->key_pem.view());

    if (ino >= 0) {
      std::set<std::string> moved;
      alignas(inotify_event) char buf[8192];
      ssize_t n;
      while ((n = ::read(ino, buf, sizeof buf)) > 0) {
        for (char* p = buf; p < buf + n;) {
          auto* ev = reinterpret_cast<inotify_event*>(p);
          if ((ev->mask & IN_MOVED_TO) && ev->len) moved.insert(ev->name);
          p += sizeof(inotify_event) + ev->len;
        }
      }
      ::close(ino);
      EXPECT_TRUE(moved.count("..data")) << "no IN_MOVED_TO for ..data";
      EXPECT_TRUE(moved.count("sds.json")) << "no IN_MOVED_TO for sds.json";
    }
    current_gens.push_back(target);
    auto gens = generations(sds);
    // The current and the previous generation stay; older ones are pruned.
    std::vector<std::string> expected(current_gens.end() - std::min<std::size_t>(2, current_gens.size()),
                                      current_gens.end());
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(gens, expected);
  }
  for (const auto& e : fs::directory_iterator(sds)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  }
}

TEST(EnvoyReloader, JsonEscapingOfNames) {
  auto doc = sds_document("we\"ird\\name", fake_material("1"));
  auto parsed = boost::json::parse(std::string(doc.view()));
  EXPECT_EQ(parsed.at("resources").at(0).at("name").as_string(), "we\"ird\\name");
}

// ---- async mutex ------------------------------------------------------------------------------

TEST(AsyncMutex, ExclusiveAndFifo) {
  asio::io_context ioc;
  AsyncMutex m;
  std::vector<std::string> trace;
  for (int i = 0; i < 3; ++i) {
    asio::co_spawn(
        ioc,
        [&, i]() -> asio::awaitable<void> {
          auto g = co_await m.lock_until(std::chrono::steady_clock::now() + 5s);
          EXPECT_TRUE(g);
          trace.push_back("in" + std::to_string(i));
          asio::steady_timer t(ioc, 20ms);
          co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
          trace.push_back("out" + std::to_string(i));
        },
        asio::detached);
  }
  ioc.run();
  EXPECT_EQ(trace, (std::vector<std::string>{"in0", "out0", "in1", "out1", "in2", "out2"}));
  EXPECT_FALSE(m.locked());
}

TEST(AsyncMutex, GivesUpAtTheDeadline) {
  asio::io_context ioc;
  AsyncMutex m;
  ASSERT_TRUE(m.try_lock());
  bool gave_up = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto g = co_await m.lock_until(std::chrono::steady_clock::now() + 50ms);
        gave_up = !g;
      },
      asio::detached);
  ioc.run();
  EXPECT_TRUE(gave_up);
  m.unlock();
  EXPECT_FALSE(m.locked());
  EXPECT_EQ(named_mutex("a"), named_mutex("a"));
  EXPECT_NE(named_mutex("a"), named_mutex("b"));
}

// ---- nginx error log watch --------------------------------------------------------------------

TEST(ErrorLogWatch, SeesOnlyEmergLinesAppendedAfterStart) {
  TempDir tmp;
  const auto log = tmp / "error.log";
  test::write_file(log, "2026/01/01 10:00:00 [emerg] 1#1: old failure\n");
  ErrorLogWatch w(log);
  w.start();
  EXPECT_FALSE(w.check());
  test::write_file(log, test::read_file(log) + "2026/01/01 10:00:01 [notice] 1#1: signal process started\n");
  EXPECT_FALSE(w.check());
  test::write_file(log, test::read_file(log) + "2026/01/01 10:00:01 [emerg] 7#7: cannot load certif");
  EXPECT_FALSE(w.check()) << "a partial line is not judged yet";
  test::write_file(log, test::read_file(log) + "icate key \"/k.pem\"\n");
  auto found = w.check();
  ASSERT_TRUE(found);
  EXPECT_EQ(*found, "2026/01/01 10:00:01 [emerg] 7#7: cannot load certificate key \"/k.pem\"");

  w.start();
  EXPECT_FALSE(w.check());
  test::write_file(log, "2026/01/01 10:00:02 [emerg] 9#9: after rotation\n");  // shorter: truncated or rotated
  ASSERT_TRUE(w.check());

  ErrorLogWatch missing(tmp / "nope.log");
  missing.start();
  EXPECT_FALSE(missing.check());
}

// Found writing fuzz_nginx_log, confirmed on nginx 1.22: any line holding "[emerg]"
// counted, so a client that asked the served site for /[emerg] while a reload was watched
// (nginx logs "[error] ... open() "/srv/[emerg]" failed ... request: "GET /%5Bemerg%5D ...")
// made certagent report a failed reload (the log is the last word, even over a probe).
TEST(ErrorLogWatch, OnlyTheLevelFieldMakesAnEmergLine) {
  // Real lines from nginx 1.22 (a reload with a missing certificate, a request for /[emerg] x).
  EXPECT_TRUE(is_nginx_emerg_line(
      "2026/12/06 09:17:26 [emerg] 24498#24498: cannot load certificate \"/nonexistent/cert.pem\": "
      "BIO_new_file() failed"));
  EXPECT_FALSE(is_nginx_emerg_line(
      "2026/12/06 09:17:26 [error] 24491#24491: *1 open() \"/tmp/hx/ngx/html/[emerg] x\" failed (2: No such "
      "file or directory), client: 127.0.0.1, server: , request: \"GET /%5Bemerg%5D%20x HTTP/1.1\""));
  EXPECT_FALSE(is_nginx_emerg_line("[emerg] 1#1: no time"));
  EXPECT_FALSE(is_nginx_emerg_line("nginx: [emerg] a message on stderr, not in the log"));
  EXPECT_FALSE(is_nginx_emerg_line("2026/12/06 09:17:26 [emerg] no pid"));
  EXPECT_FALSE(is_nginx_emerg_line("2026/12/06 09:17:26 [emerg]"));

  TempDir tmp;
  const auto log = tmp / "error.log";
  test::write_file(log, "");
  ErrorLogWatch w(log);
  w.start();
  test::write_file(log, "2026/12/06 09:17:26 [error] 1#1: *1 open() \"/srv/[emerg] x\" failed, request: "
                        "\"GET /%5Bemerg%5D%20x HTTP/1.1\"\n");
  EXPECT_FALSE(w.check());
}

// Also found writing fuzz_nginx_log: only whole lines count. The end of a line cut by start(), or
// left after a line too long to hold, was read as a line of its own.
TEST(ErrorLogWatch, TheRestOfACutLineIsNoLine) {
  TempDir tmp;
  const auto log = tmp / "error.log";
  const std::string fake = "2026/12/06 09:17:26 [emerg] 1#1: forged\n";
  test::write_file(log, "2026/12/06 09:17:25 [error] 1#1: *1 request: \"GET /");
  ErrorLogWatch w(log);
  w.start();  // in the middle of a line
  test::write_file(log, test::read_file(log) + fake);
  EXPECT_FALSE(w.check());
  test::write_file(log, test::read_file(log) + "2026/12/06 09:17:27 [emerg] 2#2: real\n");
  ASSERT_TRUE(w.check());
  EXPECT_EQ(*w.check(), "2026/12/06 09:17:27 [emerg] 2#2: real");

  ErrorLogWatch w2(log);
  w2.start();
  // A line longer than the watch holds, read in two parts: its end is no line either.
  test::write_file(log, test::read_file(log) + "2026/12/06 09:17:28 [error] 3#3: " + std::string(2000, 'x'));
  EXPECT_FALSE(w2.check());
  test::write_file(log, test::read_file(log) + fake);
  EXPECT_FALSE(w2.check());
}

// ---- probe parsers ----------------------------------------------------------------------------

TEST(ServingProbe, SerialNormalization) {
  EXPECT_EQ(normalize_serial("0A1B"), "a1b");
  EXPECT_EQ(normalize_serial("0a:1b"), "a1b");
  EXPECT_EQ(normalize_serial("00"), "0");
  EXPECT_EQ(normalize_serial("ABCDEF"), "abcdef");
  EXPECT_EQ(normalize_serial(""), "");
}

TEST(ServingProbe, HostPort) {
  auto a = split_host_port("127.0.0.1:443");
  ASSERT_TRUE(a);
  EXPECT_EQ(*a, std::make_pair(std::string("127.0.0.1"), std::string("443")));
  auto b = split_host_port("[::1]:8443");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->first, "::1");
  EXPECT_TRUE(split_host_port("localhost:1"));
  for (auto bad : {"", "host", ":443", "host:", "host:0", "host:65536", "::1:443", "[::1]443", "h:12a"}) {
    EXPECT_FALSE(split_host_port(bad)) << bad;
  }
}

TEST(ServingProbe, DeadlineOnAClosedPortIsUnverified) {
  asio::io_context ioc;
  ProbeOptions o;
  o.connect = "127.0.0.1:" + std::to_string(test::free_tcp_port());
  o.deadline = 200ms;
  std::optional<ProbeReport> report;
  asio::co_spawn(ioc, probe_serving(o, "1", std::chrono::steady_clock::now() + 10s),
                 [&](std::exception_ptr, ProbeReport r) { report = std::move(r); });
  ioc.run();
  ASSERT_TRUE(report);
  EXPECT_FALSE(report->verified);
  EXPECT_GT(report->errors, 0);
  EXPECT_GE(report->elapsed, 200ms);
  EXPECT_LT(report->elapsed, 2s);
  EXPECT_NE(report->describe().find("Connection refused"), std::string::npos) << report->describe();
}

}  // namespace
}  // namespace certagent::reloaders
