// nginx under wrk load while certificates rotate every second, each reload verified:
// no errors at all with `Connection: close`; with keep-alive at most nginx's own floor (a busy
// keep-alive connection may lose one request when its old worker exits, so ≤ connections per
// reload).

#include "agent/builtin_plugins.h"
#include "reloaders/nginx_config.h"
#include "tests/integration/reloaders/reloader_fixtures.h"

#include <gtest/gtest.h>

#include <cstdio>

namespace certagent::test::reloaders {
namespace {

namespace r = certagent::reloaders;

constexpr int kConnections = 50;

class NginxLoadTest : public ::testing::TestWithParam<bool> {};

TEST_P(NginxLoadTest, RotationsUnderWrk) {
  const bool close = GetParam();
  TempDir tmp("certagent-nginx-load");
  TestCa ca;
  boost::asio::io_context ioc;
  Generations gens(tmp / "live");
  std::uint64_t serial = 0x5001;
  gens.commit(ca.issue(serial++));
  NginxServer server(tmp / "nginx", free_tcp_port(), tmp / "live" / "fullchain.pem", tmp / "live" / "key.pem");

  config::ReloaderConfig c;
  c.type = "nginx";
  c.timeout = 15s;
  config::VerifyConfig v;
  v.connect = "127.0.0.1:" + std::to_string(server.port());
  v.server_name = "localhost";
  v.settle = 150ms;
  v.deadline = 10s;
  c.verify = v;
  r::NginxReloaderConfig n;
  n.command = server.reload_command();
  n.error_log = server.error_log();
  c.settings = n;
  auto made = certagent::agent::make_reloader(c, r::ReloaderContext{ioc.get_executor()});
  ASSERT_TRUE(made) << made.error().message;

  auto run = rotate_under_load(ioc, **made, gens, ca, server.port(), 20s, 1000ms, close, serial, kConnections);
  ASSERT_TRUE(run.wrk.parsed) << run.wrk.output;
  std::printf("nginx %s: %ld requests, errors connect=%ld read=%ld write=%ld timeout=%ld non2xx=%ld, "
              "%d reloads (%d verified), %.2f errors per reload\n",
              close ? "Connection: close" : "keep-alive", run.wrk.requests, run.wrk.connect_errors,
              run.wrk.read_errors, run.wrk.write_errors, run.wrk.timeouts, run.wrk.non_2xx, run.reloads,
              run.successes, run.reloads ? double(run.wrk.errors()) / run.reloads : 0.0);
  EXPECT_GE(run.reloads, 15);
  EXPECT_EQ(run.successes, run.reloads);
  for (const auto& f : run.failures) ADD_FAILURE() << f;
  EXPECT_GT(run.wrk.requests, 1000);
  if (close) {
    EXPECT_EQ(run.wrk.errors(), 0) << run.wrk.output;
  } else {
    EXPECT_LE(run.wrk.errors(), static_cast<long>(kConnections) * run.reloads) << run.wrk.output;
  }
}

INSTANTIATE_TEST_SUITE_P(Patterns, NginxLoadTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "ConnectionClose" : "KeepAlive"; });

}  // namespace
}  // namespace certagent::test::reloaders
