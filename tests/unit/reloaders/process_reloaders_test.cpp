// The child-process helper and the reloaders built on it (exec, systemd), and the signal
// reloader: environment, exit codes, timeouts that kill the whole process group, missing
// binaries, stale pid files.

#include "agent/builtin_plugins.h"
#include "reloaders/child_process.h"
#include "reloaders/exec_reloader.h"
#include "reloaders/signal_reloader.h"
#include "reloaders/systemd_reloader.h"
#include "tests/support/test_support.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <gtest/gtest.h>

#include <signal.h>

#include <sstream>

namespace certagent::reloaders {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using test::TempDir;
namespace fs = std::filesystem;

template <class T>
T run_on(asio::io_context& ioc, asio::awaitable<T> a) {
  std::optional<T> out;
  std::exception_ptr error;
  asio::co_spawn(ioc, std::move(a), [&](std::exception_ptr e, T v) {
    error = e;
    if (!e) out.emplace(std::move(v));
  });
  ioc.restart();
  ioc.run();
  if (error) std::rethrow_exception(error);
  return std::move(*out);
}

ReloadEvent make_event(bool with_dir = true, bool expired = false) {
  auto m = std::make_shared<Material>();
  m->cert_pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
  m->key_pem = Secret(std::string("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"));
  m->serial_hex = "1a2b3c";
  m->not_after = std::chrono::sys_days{std::chrono::year{2030} / 1 / 2} + 3h + 4min + 5s;
  ReloadEvent e;
  e.cert_name = "web";
  e.material = std::move(m);
  if (with_dir) e.files_dir = "/etc/certagent/live/web";
  e.expired = expired;
  return e;
}

config::ReloaderConfig exec_config(std::vector<std::string> argv, std::chrono::milliseconds timeout = 10s) {
  config::ReloaderConfig c;
  c.type = "exec";
  ExecReloaderConfig e;
  e.command = std::move(argv);
  e.timeout = timeout;
  c.settings = e;
  return c;
}

std::unique_ptr<Reloader> make(asio::io_context& ioc, const config::ReloaderConfig& c) {
  auto r = agent::make_reloader(c, ReloaderContext{ioc.get_executor()});
  if (!r) throw std::runtime_error(r.error().message);
  return std::move(*r);
}

std::map<std::string, std::string> parse_env(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

// ---- child process ----------------------------------------------------------------------------

TEST(ChildProcess, ExitCodeAndBoundedStderrTail) {
  asio::io_context ioc;
  ChildSpec spec;
  spec.argv = {"sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'last words' >&2; exit 3"};
  spec.output_limit = 1000;
  auto r = run_on(ioc, run_child(spec));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_FALSE(r->success());
  EXPECT_LE(r->stderr_tail.size(), 1000u);
  EXPECT_EQ(last_lines(r->stderr_tail, 1), "last words");
  EXPECT_EQ(r->stdout_tail, "");
}

TEST(ChildProcess, StdinIsDevNull) {
  asio::io_context ioc;
  ChildSpec spec;
  spec.argv = {"sh", "-c", "cat; echo done"};
  spec.timeout = 5s;
  auto r = run_on(ioc, run_child(spec));
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->success());
  EXPECT_EQ(r->stdout_tail, "done\n");
}

TEST(ChildProcess, TimeoutEscalatesToSigkillForTheWholeGroup) {
  TempDir tmp;
  asio::io_context ioc;
  ChildSpec spec;
  // Both the shell and its background child ignore SIGTERM (ignored signals are inherited).
  spec.argv = {"sh", "-c", "trap '' TERM; sleep 60 & echo $! > " + (tmp / "bg.pid").string() + "; sleep 60"};
  spec.timeout = 300ms;
  spec.kill_grace = 200ms;
  const auto start = std::chrono::steady_clock::now();
  auto r = run_on(ioc, run_child(spec));
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->timed_out);
  EXPECT_FALSE(r->success());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  auto bg = read_pid_file(tmp / "bg.pid");
  ASSERT_TRUE(bg) << bg.error().message;
  EXPECT_TRUE(test::wait_until([&] { return !process_alive(*bg); }, 5s)) << "background child survived";
}

TEST(ChildProcess, MissingBinaryIsAnErrorNotAnExit) {
  asio::io_context ioc;
  for (std::string prog : {"/nonexistent/hook", "certagent-no-such-program"}) {
    ChildSpec spec;
    spec.argv = {prog};
    auto r = run_on(ioc, run_child(spec));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("cannot execute " + prog), std::string::npos) << r.error().message;
  }
}

TEST(ChildProcess, WaitingDoesNotBlockTheLoop) {
  asio::io_context ioc;
  int ticks = 0;
  bool done = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer t(ioc);
        while (!done) {
          t.expires_after(10ms);
          co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
          ++ticks;
        }
      },
      asio::detached);
  ChildSpec spec;
  spec.argv = {"sleep", "0.5"};
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto r = co_await run_child(spec);
        EXPECT_TRUE(r && r->success());
        done = true;
      },
      asio::detached);
  ioc.run();
  EXPECT_GE(ticks, 20);
}

TEST(ChildProcess, LastLines) {
  EXPECT_EQ(last_lines("a\nb\n\nc\nd\n", 3), "b | c | d");
  EXPECT_EQ(last_lines("", 3), "");
  EXPECT_EQ(last_lines("only", 3), "only");
  EXPECT_EQ(last_lines(std::string(2000, 'x'), 3, 100).size(), 100u);
}

// ---- exec -------------------------------------------------------------------------------------

TEST(ExecReloader, HookSeesTheEnvironment) {
  TempDir tmp;
  asio::io_context ioc;
  const auto out = tmp / "env";
  auto reloader = make(ioc, exec_config({"sh", "-c", "env > " + out.string()}));
  EXPECT_EQ(reloader->type(), "exec");
  auto o = run_on(ioc, reloader->reload(make_event()));
  ASSERT_EQ(o.result, ReloadResult::success) << o.detail;
  auto env = parse_env(test::read_file(out));
  EXPECT_EQ(env["CERTAGENT_NAME"], "web");
  EXPECT_EQ(env["CERTAGENT_SERIAL"], "1a2b3c");
  EXPECT_EQ(env["CERTAGENT_NOT_AFTER"], "2030-01-02T03:04:05Z");
  EXPECT_EQ(env["CERTAGENT_DIR"], "/etc/certagent/live/web");
  EXPECT_EQ(env["CERTAGENT_EVENT"], "rotated");
  EXPECT_TRUE(env.count("PATH"));  // the daemon's environment is inherited

  o = run_on(ioc, reloader->reload(make_event(/*with_dir=*/false, /*expired=*/true)));
  ASSERT_EQ(o.result, ReloadResult::success) << o.detail;
  env = parse_env(test::read_file(out));
  EXPECT_EQ(env["CERTAGENT_EVENT"], "expired");
  EXPECT_FALSE(env.count("CERTAGENT_DIR"));
}

TEST(ExecReloader, NoShellUnlessAsked) {
  TempDir tmp;
  asio::io_context ioc;
  // Passed as one argv element, `$HOME; touch` is data, not shell syntax.
  auto reloader = make(ioc, exec_config({"printf", "%s", "$HOME; touch " + (tmp / "pwned").string()}));
  auto o = run_on(ioc, reloader->reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::success) << o.detail;
  EXPECT_FALSE(fs::exists(tmp / "pwned"));
}

TEST(ExecReloader, NonZeroExitIsAFailureWithStderr) {
  asio::io_context ioc;
  auto reloader = make(ioc, exec_config({"sh", "-c", "echo noise >&2; echo 'disk on fire' >&2; exit 7"}));
  auto o = run_on(ioc, reloader->reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::failure);
  EXPECT_NE(o.detail.find("exit code 7"), std::string::npos) << o.detail;
  EXPECT_NE(o.detail.find("disk on fire"), std::string::npos) << o.detail;
}

TEST(ExecReloader, TimeoutKillsTheProcessGroup) {
  TempDir tmp;
  asio::io_context ioc;
  auto reloader = make(ioc, exec_config({"sh", "-c", "sleep 60 & echo $! > " + (tmp / "bg.pid").string() + "; wait"},
                                        300ms));
  const auto start = std::chrono::steady_clock::now();
  auto o = run_on(ioc, reloader->reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::timeout) << o.detail;
  EXPECT_NE(o.detail.find("process group killed"), std::string::npos) << o.detail;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  auto bg = read_pid_file(tmp / "bg.pid");
  ASSERT_TRUE(bg) << bg.error().message;
  EXPECT_TRUE(test::wait_until([&] { return !process_alive(*bg); }, 5s));
}

TEST(ExecReloader, WholeReloadTimeoutCapsTheHookTimeout) {
  asio::io_context ioc;
  auto c = exec_config({"sleep", "30"}, 20s);
  c.timeout = 300ms;
  auto reloader = make(ioc, c);
  auto o = run_on(ioc, reloader->reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::timeout) << o.detail;
}

TEST(ExecReloader, MissingBinaryIsAFailure) {
  asio::io_context ioc;
  auto reloader = make(ioc, exec_config({"/nonexistent/on-rotate", "web"}));
  auto o = run_on(ioc, reloader->reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::failure);
  EXPECT_NE(o.detail.find("No such file or directory"), std::string::npos) << o.detail;
}

// ---- signal -----------------------------------------------------------------------------------

config::ReloaderConfig signal_config(std::filesystem::path pid_file, std::optional<int> pid = std::nullopt) {
  config::ReloaderConfig c;
  c.type = "signal";
  SignalReloaderConfig s;
  s.pid_file = std::move(pid_file);
  s.pid = pid;
  c.settings = s;
  return c;
}

TEST(SignalReloader, DeliversSighupToACountingProcess) {
  TempDir tmp;
  asio::io_context ioc;
  const auto count = tmp / "count";
  const auto ready = tmp / "ready";
  test::Process child({"sh", "-c",
                       "n=0; trap 'n=$((n+1)); echo $n > " + count.string() + "' HUP; echo ok > " +
                           ready.string() + "; while :; do sleep 0.02; done"});
  ASSERT_TRUE(test::wait_until([&] { return std::filesystem::exists(ready); }, 5s));
  test::write_file(tmp / "app.pid", std::to_string(child.pid()) + "\n");

  auto by_file = make(ioc, signal_config(tmp / "app.pid"));
  auto by_pid = make(ioc, signal_config({}, child.pid()));
  int expected = 0;
  for (auto* r : {by_file.get(), by_pid.get(), by_file.get()}) {
    auto o = run_on(ioc, r->reload(make_event()));
    ASSERT_EQ(o.result, ReloadResult::success) << o.detail;
    EXPECT_NE(o.detail.find("SIGHUP sent to " + std::to_string(child.pid())), std::string::npos) << o.detail;
    ++expected;
    EXPECT_TRUE(test::wait_until([&] { return test::read_file(count) == std::to_string(expected) + "\n"; }, 5s))
        << "count=" << test::read_file(count);
  }
}

TEST(SignalReloader, StalePidFileIsAFailure) {
  TempDir tmp;
  asio::io_context ioc;
  pid_t gone;
  {
    test::Process p({"sleep", "60"});
    gone = p.pid();
    p.stop(SIGKILL);
  }
  test::write_file(tmp / "app.pid", std::to_string(gone));
  auto o = run_on(ioc, make(ioc, signal_config(tmp / "app.pid"))->reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::failure);
  EXPECT_NE(o.detail.find("stale pid file"), std::string::npos) << o.detail;
}

TEST(SignalReloader, MalformedPidFilesAreFailures) {
  TempDir tmp;
  asio::io_context ioc;
  for (std::string content : {"", "abc", "0", "-5", "12 13", "99999999999", "  \n"}) {
    test::write_file(tmp / "app.pid", content);
    auto o = run_on(ioc, make(ioc, signal_config(tmp / "app.pid"))->reload(make_event()));
    EXPECT_EQ(o.result, ReloadResult::failure) << "'" << content << "'";
    EXPECT_NE(o.detail.find(tmp.path().string()), std::string::npos) << o.detail;
  }
  auto o = run_on(ioc, make(ioc, signal_config(tmp / "missing.pid"))->reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::failure);
  EXPECT_NE(o.detail.find("No such file"), std::string::npos) << o.detail;
  auto ok = read_pid_file([&] {
    test::write_file(tmp / "ok.pid", " 4242\n");
    return tmp / "ok.pid";
  }());
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, 4242);
}

// ---- systemd ----------------------------------------------------------------------------------

TEST(SystemdReloader, RunsSystemctlWithTheUnitAfterDoubleDash) {
  TempDir tmp;
  asio::io_context ioc;
  const auto fake = tmp / "systemctl";
  const auto args = tmp / "args";
  test::write_file(fake, "#!/bin/sh\necho \"$@\" > " + args.string() + "\n", fs::perms(0755));
  config::ReloaderConfig c;
  c.type = "systemd";
  SystemdReloaderConfig s;
  s.unit = "envoy.service";
  SystemdReloader reloader(c, s, ReloaderContext{ioc.get_executor()}, fake.string());
  auto o = run_on(ioc, reloader.reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::success) << o.detail;
  EXPECT_EQ(test::read_file(args), "--no-ask-password reload-or-restart -- envoy.service\n");

  test::write_file(fake, "#!/bin/sh\necho 'Job for envoy.service failed.' >&2\nexit 1\n", fs::perms(0755));
  o = run_on(ioc, reloader.reload(make_event()));
  EXPECT_EQ(o.result, ReloadResult::failure);
  EXPECT_NE(o.detail.find("Job for envoy.service failed."), std::string::npos) << o.detail;
}

TEST(SystemdReloader, RealSystemctlWithoutSystemdIsAFailure) {
  test::require_program("systemctl");
  asio::io_context ioc;
  config::ReloaderConfig c;
  c.type = "systemd";
  c.timeout = 20s;
  SystemdReloaderConfig s;
  s.unit = "certagent-test-no-such.service";
  c.settings = s;
  auto o = run_on(ioc, make(ioc, c)->reload(make_event()));
  // Whether or not systemd runs here, reloading a unit that does not exist never succeeds.
  EXPECT_EQ(o.result, ReloadResult::failure) << o.detail;
}

}  // namespace
}  // namespace certagent::reloaders
