// haproxy under wrk load while certificates rotate through the runtime API every 0.5 s, each
// swap verified: zero errors with keep-alive and with `Connection: close`.

#include "agent/builtin_plugins.h"
#include "reloaders/haproxy_config.h"
#include "tests/integration/reloaders/reloader_fixtures.h"

#include <gtest/gtest.h>

#include <cstdio>

namespace certagent::test::reloaders {
namespace {

namespace r = certagent::reloaders;

class HaproxyLoadTest : public ::testing::TestWithParam<bool> {};

TEST_P(HaproxyLoadTest, RotationsUnderWrk) {
  const bool close = GetParam();
  TempDir tmp("certagent-haproxy-load");
  TestCa ca;
  boost::asio::io_context ioc;
  Generations gens(tmp / "live");
  std::uint64_t serial = 0x6001;
  gens.commit(ca.issue(serial++));
  HaproxyServer server(tmp / "haproxy", free_tcp_port(), tmp / "live" / "bundle.pem");

  config::ReloaderConfig c;
  c.type = "haproxy";
  c.timeout = 10s;
  config::VerifyConfig v;
  v.connect = "127.0.0.1:" + std::to_string(server.port());
  v.server_name = "localhost";
  v.settle = 150ms;
  v.deadline = 5s;
  c.verify = v;
  r::HaproxyReloaderConfig h;
  h.admin_socket = server.admin_socket();
  h.cert = (tmp / "live" / "bundle.pem").string();
  c.settings = h;
  auto made = certagent::agent::make_reloader(c, r::ReloaderContext{ioc.get_executor()});
  ASSERT_TRUE(made) << made.error().message;

  auto run = rotate_under_load(ioc, **made, gens, ca, server.port(), 20s, 500ms, close, serial);
  ASSERT_TRUE(run.wrk.parsed) << run.wrk.output;
  std::printf("haproxy %s: %ld requests, errors connect=%ld read=%ld write=%ld timeout=%ld non2xx=%ld, "
              "%d reloads (%d verified)\n",
              close ? "Connection: close" : "keep-alive", run.wrk.requests, run.wrk.connect_errors,
              run.wrk.read_errors, run.wrk.write_errors, run.wrk.timeouts, run.wrk.non_2xx, run.reloads,
              run.successes);
  EXPECT_GE(run.reloads, 30);
  EXPECT_EQ(run.successes, run.reloads);
  for (const auto& f : run.failures) ADD_FAILURE() << f;
  EXPECT_GT(run.wrk.requests, 1000);
  EXPECT_EQ(run.wrk.errors(), 0) << run.wrk.output;
}

INSTANTIATE_TEST_SUITE_P(Patterns, HaproxyLoadTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "ConnectionClose" : "KeepAlive"; });

}  // namespace
}  // namespace certagent::test::reloaders
