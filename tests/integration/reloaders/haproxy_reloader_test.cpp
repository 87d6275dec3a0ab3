// The haproxy reloader against a real haproxy 2.6 (master-worker, admin socket): verified
// runtime-API swaps, a wrong name reported with what haproxy lists and the transaction
// aborted, a refused commit aborted, .issuer/.ocsp carried so stapling survives.

#include "agent/builtin_plugins.h"
#include "reloaders/haproxy_config.h"
#include "reloaders/haproxy_reloader.h"
#include "tests/integration/reloaders/reloader_fixtures.h"

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>

namespace certagent::test::reloaders {
namespace {

namespace r = certagent::reloaders;

class HaproxyReloaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gens_ = std::make_unique<Generations>(tmp_ / "live");
    gens_->commit(ca_.issue(0x1001));
    server_ = std::make_unique<HaproxyServer>(tmp_ / "haproxy", free_tcp_port(), bundle());
    ASSERT_EQ(served_serial(server_->port()), "1001");
  }

  fs::path bundle() const { return tmp_ / "live" / "bundle.pem"; }

  config::ReloaderConfig haproxy_config(bool verify = true) const {
    config::ReloaderConfig c;
    c.type = "haproxy";
    c.timeout = 15s;
    if (verify) {
      config::VerifyConfig v;
      v.connect = "127.0.0.1:" + std::to_string(server_->port());
      v.server_name = "localhost";
      v.settle = 50ms;
      v.deadline = 5s;
      c.verify = v;
    }
    r::HaproxyReloaderConfig h;
    h.admin_socket = server_->admin_socket();
    h.cert = bundle().string();
    c.settings = h;
    return c;
  }

  std::unique_ptr<r::Reloader> make(const config::ReloaderConfig& c) {
    auto made = certagent::agent::make_reloader(c, r::ReloaderContext{ioc_.get_executor()});
    if (!made) throw std::runtime_error(made.error().message);
    return std::move(*made);
  }

  r::ReloadOutcome reload(r::Reloader& reloader, const Material& m) {
    return run_on(ioc_, reloader.reload(event_for("web", m, tmp_ / "live")));
  }

  bool transaction_open() const { return server_->admin("show ssl cert").find('*') != std::string::npos; }

  TempDir tmp_{"certagent-haproxy"};
  TestCa ca_;
  boost::asio::io_context ioc_;
  std::unique_ptr<Generations> gens_;
  std::unique_ptr<HaproxyServer> server_;
};

TEST_F(HaproxyReloaderTest, RuntimeApiSwapIsVerified) {
  auto reloader = make(haproxy_config());
  for (std::uint64_t serial : {0x1002, 0x1003, 0x1004}) {
    auto m = ca_.issue(serial);
    gens_->commit(m);
    auto out = reload(*reloader, m);
    EXPECT_EQ(out.result, r::ReloadResult::success) << out.detail;
    EXPECT_NE(out.detail.find("committed"), std::string::npos) << out.detail;
    EXPECT_EQ(served_serial(server_->port()), hex_serial(serial));
    auto* base = dynamic_cast<r::ReloaderBase*>(reloader.get());
    ASSERT_TRUE(base && base->last_probe());
    // The API swap is immediate: the very first probe handshake shows the new serial.
    EXPECT_EQ(base->last_probe()->old_served, 0) << base->last_probe()->describe();
  }
  EXPECT_FALSE(transaction_open());
}

TEST_F(HaproxyReloaderTest, WrongNameIsAFailureNamingWhatHaproxyLists) {
  auto c = haproxy_config();
  edit_settings<r::HaproxyReloaderConfig>(c, [&](auto& s) { s.cert = (tmp_ / "live" / "fullchain.pem").string(); });
  auto reloader = make(c);
  auto m = ca_.issue(0x1002);
  gens_->commit(m);
  auto out = reload(*reloader, m);
  EXPECT_EQ(out.result, r::ReloadResult::failure) << out.detail;
  EXPECT_NE(out.detail.find("has no certificate named"), std::string::npos) << out.detail;
  EXPECT_NE(out.detail.find("show ssl cert lists: " + bundle().string()), std::string::npos) << out.detail;
  EXPECT_FALSE(transaction_open());
  EXPECT_EQ(served_serial(server_->port()), "1001");
  // Nothing left open: the right name goes through at once.
  auto right = make(haproxy_config());
  EXPECT_EQ(reload(*right, m).result, r::ReloadResult::success);
}

TEST_F(HaproxyReloaderTest, RefusedCommitIsAbortedAndReported) {
  auto reloader = make(haproxy_config());
  auto good = ca_.issue(0x1002);
  auto other = ca_.issue(0x1003);
  good.key_pem = other.key_pem.clone();  // leaf and key do not match
  auto out = reload(*reloader, good);
  EXPECT_EQ(out.result, r::ReloadResult::failure) << out.detail;
  EXPECT_NE(out.detail.find("commit ssl cert"), std::string::npos) << out.detail;
  EXPECT_NE(out.detail.find("inconsistencies"), std::string::npos) << out.detail;
  EXPECT_EQ(out.detail.find("PRIVATE KEY"), std::string::npos);
  EXPECT_FALSE(transaction_open());
  EXPECT_EQ(served_serial(server_->port()), "1001");
}

TEST_F(HaproxyReloaderTest, IssuerAndOcspAreCarriedSoStaplingSurvives) {
  auto c = haproxy_config();
  auto h = c.settings.as<r::HaproxyReloaderConfig>();
  h.issuer_file = tmp_ / "issuer.pem";
  h.ocsp_file = tmp_ / "bundle.pem.ocsp";
  write_file(h.issuer_file, ca_.cert_pem());
  c.settings = h;
  auto reloader = make(c);
  auto openssl = require_program("openssl").string();
  for (std::uint64_t serial : {0x1002, 0x1003}) {
    auto m = ca_.issue(serial);
    write_file(h.ocsp_file, ca_.ocsp_response_der(m, tmp_ / "ocsp"));
    gens_->commit(m);
    auto out = reload(*reloader, m);
    ASSERT_EQ(out.result, r::ReloadResult::success) << out.detail;
    EXPECT_NE(out.detail.find("with .issuer; with .ocsp"), std::string::npos) << out.detail;
    auto status = run({"sh", "-c",
                       "echo | " + openssl + " s_client -status -servername localhost -connect 127.0.0.1:" +
                           std::to_string(server_->port()) + " 2>/dev/null"},
                      10s);
    EXPECT_NE(status.out.find("OCSP Response Status: successful"), std::string::npos) << status.out;
    EXPECT_NE(status.out.find("Cert Status: good"), std::string::npos) << status.out;
    EXPECT_NE(status.out.find("Serial Number: " + hex_serial(serial)), std::string::npos) << status.out;
  }
}

TEST_F(HaproxyReloaderTest, MissingAdminSocketIsAFailure) {
  auto c = haproxy_config();
  edit_settings<r::HaproxyReloaderConfig>(c, [&](auto& s) { s.admin_socket = tmp_ / "nope.sock"; });
  auto reloader = make(c);
  auto out = reload(*reloader, ca_.issue(0x1002));
  EXPECT_EQ(out.result, r::ReloadResult::failure) << out.detail;
  EXPECT_NE(out.detail.find("cannot connect to admin socket"), std::string::npos) << out.detail;
}

TEST_F(HaproxyReloaderTest, ProbeAgainstAClosedPortIsUnverified) {
  auto c = haproxy_config();
  c.verify->connect = "127.0.0.1:" + std::to_string(free_tcp_port());
  c.verify->deadline = 500ms;
  auto reloader = make(c);
  auto m = ca_.issue(0x1002);
  gens_->commit(m);
  auto out = reload(*reloader, m);
  EXPECT_EQ(out.result, r::ReloadResult::unverified) << out.detail;
  EXPECT_NE(out.detail.find("connect"), std::string::npos) << out.detail;
  EXPECT_EQ(served_serial(server_->port()), "1002");  // the swap itself happened
}

// A socket that accepts (backlog) but never answers: the reload ends at its timeout (plus the
// short grace for the abort), reported as a timeout.
TEST(HaproxyHungSocket, TimesOut) {
  TempDir tmp("certagent-haproxy-hung");
  const auto path = tmp / "admin.sock";
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  boost::asio::io_context ioc;
  config::ReloaderConfig c;
  c.type = "haproxy";
  c.timeout = 300ms;
  r::HaproxyReloaderConfig h;
  h.admin_socket = path;
  h.cert = "/etc/site.pem";
  c.settings = h;
  auto made = certagent::agent::make_reloader(c, r::ReloaderContext{ioc.get_executor()});
  ASSERT_TRUE(made);
  TestCa ca;
  const auto start = std::chrono::steady_clock::now();
  auto out = run_on(ioc, (*made)->reload(event_for("web", ca.issue(0x1002))));
  const auto took = std::chrono::steady_clock::now() - start;
  ::close(fd);
  EXPECT_EQ(out.result, r::ReloadResult::timeout) << out.detail;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 1500ms);
}

TEST(HaproxyPayload, HasNoBlankLinesAndEndsWithoutNewline) {
  Material m;
  m.cert_pem = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\n";
  m.chain_pem = "\n-----BEGIN CERTIFICATE-----\r\nBBB\r\n-----END CERTIFICATE-----\n";
  m.key_pem = Secret("-----BEGIN PRIVATE KEY-----\nCCC\n   \n-----END PRIVATE KEY-----\n");
  auto p = r::haproxy_payload(m);
  EXPECT_EQ(std::string(p.view()),
            "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"
            "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n"
            "-----BEGIN PRIVATE KEY-----\nCCC\n-----END PRIVATE KEY-----");
  EXPECT_EQ(r::parse_show_ssl_cert("# transaction\n*/a.pem\n# filename\n/a.pem\n/b.pem\n\n"),
            (std::vector<std::string>{"/a.pem", "/a.pem", "/b.pem"}));
  // Found by fuzz_formats: a lone '*' gave an empty name.
  EXPECT_EQ(r::parse_show_ssl_cert("*\n* \r\n/a.pem\n"), (std::vector<std::string>{"/a.pem"}));
}

}  // namespace
}  // namespace certagent::test::reloaders
