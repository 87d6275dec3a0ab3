// The Unix socket API end to end: a real SocketServer on a real socket with the store on its
// io_context thread, and real clients — plain sockets, curl run as other users with setpriv, and
// the CLI functions. Covers the contract of DESIGN.md "Unix socket API", fail-closed, limits.

#include "agent/cli_client.h"
#include "agent/socket_server.h"

#include "core/crypto/x509.h"
#include "tests/support/test_pki.h"
#include "tests/support/test_support.h"
#include "tests/unit/core/http/test_clients.h"

#include <grp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <sstream>
#include <thread>

namespace certagent {
namespace {

using namespace std::chrono_literals;
using test::RawClient;
using test::TempDir;
using test::wait_until;
namespace fs = std::filesystem;
namespace json = boost::json;
namespace asio = boost::asio;

// A real self-signed P-256 certificate and key from the test PKI, made once.
struct WebCert {
  std::string cert_pem;
  std::string key_pem;
  std::string serial;
};

WebCert make_web_cert(const std::string& cn) {
  const test::TestCert c = test::make_cert(test::CertSpec{.common_name = cn, .lifetime = 48h});
  return WebCert{c.cert_pem(), c.key_pem(), crypto::describe(c.cert.get()).serial_hex};
}

const WebCert& web_cert() {
  static const WebCert cert = make_web_cert("web.internal");
  return cert;
}

config::CertificateConfig cert_config(const std::string& name, std::vector<std::uint32_t> uids,
                                      std::vector<std::uint32_t> gids) {
  config::CertificateConfig c;
  c.name = name;
  c.broker = "dev";
  c.common_name = name + ".internal";
  c.socket.allow_uids = std::move(uids);
  c.socket.allow_gids = std::move(gids);
  return c;
}

class SocketApiTest : public ::testing::Test {
 protected:
  SocketApiTest() : clock_(std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now())) {}

  config::SocketConfig socket_config() {
    config::SocketConfig c;
    c.path = dir_ / "run" / "agent.sock";  // "run" does not exist yet
    c.mode = 0666;                        // other users connect; authorization is per request
    c.admin_uids = {4242};
    c.max_connections = 64;  // watchers are bounded by max_watchers, not by this
    c.max_watchers = 1100;
    c.request_timeout = 1s;
    return c;
  }

  void start(config::SocketConfig config) {
    store_.configure({cert_config("web", {4242}, {}), cert_config("api", {}, {4343}),
                      cert_config("db", {}, {})});
    store_.find("web")->trust_bundle_pem = "-----BEGIN CERTIFICATE-----\nTRUST\n-----END CERTIFICATE-----\n";
    store_.set_renewal_handler([this](const std::string& name) {
      std::lock_guard lock(mutex_);
      renewals_.push_back(name);
    });
    commit("web", material(web_cert().serial));
    commit("api", material("a1"));
    server_ = std::make_unique<SocketServer>(io_, config, store_, metrics_, clock_,
                                             [this] { return healthy_.load(); });
    auto r = server_->start();
    ASSERT_TRUE(r) << r.error().message;
    path_ = config.path;
    thread_ = std::thread([this] { io_.run(); });
  }
  void start() { start(socket_config()); }

  void TearDown() override {
    if (thread_.joinable()) {
      on_io([&] { server_->stop(); });
      guard_.reset();
      thread_.join();
    }
    server_.reset();
  }

  template <class F>
  auto on_io(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto result = task.get_future();
    asio::post(io_, [&] { task(); });
    return result.get();
  }

  MaterialPtr material(const std::string& serial, SystemTime not_after = {}) {
    auto m = std::make_shared<Material>();
    m->cert_pem = web_cert().cert_pem;
    m->key_pem = Secret(web_cert().key_pem);
    m->serial_hex = serial;
    m->not_before = clock_.now() - 1h;
    m->not_after = not_after == SystemTime{} ? clock_.now() + 24h : not_after;
    m->broker = "dev";
    return m;
  }

  // Before start() directly; afterwards on the io thread, as the daemon does.
  void commit(const std::string& name, MaterialPtr m) {
    if (!thread_.joinable()) {
      store_.commit(name, std::move(m), clock_.now());
      return;
    }
    on_io([&] { store_.commit(name, std::move(m), clock_.now()); });
  }

  std::optional<test::RawResponse> request(const std::string& raw) {
    auto c = RawClient::unix_socket(path_);
    if (!c.connected() || !c.send(raw)) return std::nullopt;
    return c.read_response();
  }
  std::optional<test::RawResponse> get(const std::string& target) {
    return request(RawClient::get(target, false));
  }

  // curl over the socket as another user; returns {status, body}.
  std::pair<int, std::string> curl_as(const std::vector<std::string>& ids, const std::string& target,
                                      const std::string& method = "GET") {
    std::vector<std::string> argv = {test::require_program("setpriv").string()};
    argv.insert(argv.end(), ids.begin(), ids.end());
    argv.insert(argv.end(), {test::require_program("curl").string(), "-s", "-X", method,
                             "--unix-socket", path_.string(), "-w", "\n%{http_code}",
                             "http://localhost" + target});
    const auto r = test::run(argv, 20s);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const auto nl = r.out.rfind('\n');
    if (nl == std::string::npos) return {0, r.out};
    return {std::atoi(r.out.c_str() + nl + 1), r.out.substr(0, nl)};
  }

  double metric(std::string_view name, const Metrics::Labels& labels = {}) {
    return metrics_.value(name, labels);
  }

  TempDir dir_{"socket-api"};
  fs::path path_;
  ManualClock clock_;
  CertificateStore store_;
  Metrics metrics_;
  std::atomic<bool> healthy_{true};
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_{io_.get_executor()};
  std::unique_ptr<SocketServer> server_;
  std::thread thread_;
  std::mutex mutex_;
  std::vector<std::string> renewals_;
};

json::object parse_object(const std::string& body) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  EXPECT_FALSE(ec) << body;
  return !ec && v.is_object() ? v.as_object() : json::object{};
}

// A JSON value as text: strings as they are, anything else serialized.
std::string s(const json::value& v) {
  return v.is_string() ? std::string(v.as_string()) : json::serialize(v);
}

std::string serial_marker(const std::string& serial) { return "\"serial\":\"" + serial + "\""; }

// ---- the socket file -----------------------------------------------------------------------

TEST_F(SocketApiTest, SocketFileHasTheConfiguredModeAndIsRemovedOnStop) {
  start();
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0666u);
  struct stat parent {};
  ASSERT_EQ(::stat(path_.parent_path().c_str(), &parent), 0);
  EXPECT_EQ(parent.st_mode & 07777, 0755u);
  // Nothing left behind from the private bind directory.
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(path_.parent_path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1u);
  on_io([&] { server_->stop(); });
  EXPECT_FALSE(fs::exists(fs::symlink_status(path_)));
}

TEST(SocketFile, GroupIsAppliedAndAMissingGroupIsAClearError) {
  TempDir dir("socket-file");
  asio::io_context io;
  CertificateStore store;
  Metrics metrics;
  SystemClock clock;
  config::SocketConfig c;
  c.path = dir / "agent.sock";
  c.group = "nogroup";
  {
    SocketServer server(io, c, store, metrics, clock, nullptr);
    auto r = server.start();
    ASSERT_TRUE(r) << r.error().message;
    struct stat st {};
    ASSERT_EQ(::lstat(c.path.c_str(), &st), 0);
    EXPECT_EQ(st.st_gid, ::getgrnam("nogroup")->gr_gid);
    EXPECT_EQ(st.st_mode & 07777, 0660u);
  }
  EXPECT_FALSE(fs::exists(fs::symlink_status(c.path)));
  c.group = "certagent-no-such-group";
  SocketServer server(io, c, store, metrics, clock, nullptr);
  auto r = server.start();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("'certagent-no-such-group' does not exist"), std::string::npos)
      << r.error().message;
  EXPECT_FALSE(fs::exists(fs::symlink_status(c.path)));
}

TEST(SocketFile, StaleSocketIsReplacedButALiveOneOrARegularFileIsNot) {
  TempDir dir("socket-file");
  asio::io_context io;
  CertificateStore store;
  Metrics metrics;
  SystemClock clock;
  config::SocketConfig c;
  c.path = dir / "agent.sock";

  // A regular file: refused and left as it was.
  test::write_file(c.path, "precious");
  {
    SocketServer server(io, c, store, metrics, clock, nullptr);
    auto r = server.start();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("is not a socket"), std::string::npos) << r.error().message;
  }
  EXPECT_EQ(test::read_file(c.path), "precious");
  fs::remove(c.path);

  // A live socket (someone listens): refused, still there.
  {
    asio::local::stream_protocol::acceptor live(io, asio::local::stream_protocol::endpoint(c.path.string()));
    SocketServer server(io, c, store, metrics, clock, nullptr);
    auto r = server.start();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("in use"), std::string::npos) << r.error().message;
    EXPECT_TRUE(fs::is_socket(c.path));
  }

  // The live one has closed: its file is stale now and gets replaced.
  ASSERT_TRUE(fs::is_socket(c.path));
  SocketServer server(io, c, store, metrics, clock, nullptr);
  auto r = server.start();
  ASSERT_TRUE(r) << r.error().message;
  auto client = RawClient::unix_socket(c.path);
  EXPECT_TRUE(client.connected());
}

TEST(SocketFile, PathTooLongIsAClearError) {
  TempDir dir("socket-file");
  asio::io_context io;
  CertificateStore store;
  Metrics metrics;
  SystemClock clock;
  config::SocketConfig c;
  c.path = dir / std::string(120, 'x');
  SocketServer server(io, c, store, metrics, clock, nullptr);
  auto r = server.start();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("too long"), std::string::npos) << r.error().message;
}

// ---- list, fetch, authorization -----------------------------------------------------------

TEST_F(SocketApiTest, ListShowsEveryCertificateAndNeverAKey) {
  start();
  auto r = get("/v1/certificates");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body.find("PRIVATE KEY"), std::string::npos);
  EXPECT_EQ(r->body.find("private_key"), std::string::npos);
  EXPECT_EQ(r->body.find("BEGIN"), std::string::npos);
  auto list = parse_object(r->body);
  const auto& certs = list.at("certificates").as_array();
  ASSERT_EQ(certs.size(), 3u);
  std::map<std::string, json::object> by_name;
  for (const auto& c : certs) by_name[std::string(c.at("name").as_string())] = c.as_object();
  EXPECT_EQ(s(by_name["web"].at("state")), "valid");
  EXPECT_EQ(s(by_name["web"].at("serial")), web_cert().serial);
  EXPECT_EQ(s(by_name["web"].at("not_after")), format_rfc3339(clock_.now() + 24h));
  EXPECT_EQ(s(by_name["db"].at("state")), "not_issued");
  EXPECT_TRUE(by_name["db"].at("serial").is_null());
  // Any local user may list.
  auto [status, body] = curl_as({"--reuid=65534", "--regid=65534", "--clear-groups"}, "/v1/certificates");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(body.find("PRIVATE KEY"), std::string::npos);
}

TEST_F(SocketApiTest, FetchHandsTheBundleToRoot) {
  start();
  auto r = get("/v1/certificates/web");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->header("content-type"), "application/json");
  EXPECT_EQ(r->header("cache-control"), "no-store");
  auto b = parse_object(r->body);
  EXPECT_EQ(s(b.at("certificate_pem")), web_cert().cert_pem);
  EXPECT_EQ(s(b.at("private_key_pem")), web_cert().key_pem);
  EXPECT_EQ(s(b.at("chain_pem")), "");
  EXPECT_EQ(s(b.at("trust_bundle_pem")), store_.find("web")->trust_bundle_pem);
  EXPECT_EQ(s(b.at("serial")), web_cert().serial);
  EXPECT_EQ(s(b.at("not_before")), format_rfc3339(clock_.now() - 1h));
  EXPECT_EQ(s(b.at("not_after")), format_rfc3339(clock_.now() + 24h));
}

TEST_F(SocketApiTest, KeysOnlyForAllowedUidsAndGroups) {
  start();
  // Not in allow_uids: 403, and no key in the answer.
  auto [s1, b1] = curl_as({"--reuid=65534", "--regid=65534", "--clear-groups"}, "/v1/certificates/web");
  EXPECT_EQ(s1, 403);
  EXPECT_EQ(b1, R"({"error":"forbidden"})");
  // allow_uids.
  auto [s2, b2] = curl_as({"--reuid=4242", "--regid=4242", "--clear-groups"}, "/v1/certificates/web");
  EXPECT_EQ(s2, 200);
  EXPECT_NE(b2.find("PRIVATE KEY"), std::string::npos);
  // allow_gids, as the primary group and as a supplementary one.
  auto [s3, b3] = curl_as({"--reuid=5000", "--regid=4343", "--clear-groups"}, "/v1/certificates/api");
  EXPECT_EQ(s3, 200);
  auto [s4, b4] = curl_as({"--reuid=5000", "--regid=5000", "--groups=4343"}, "/v1/certificates/api");
  EXPECT_EQ(s4, 200);
  auto [s5, b5] = curl_as({"--reuid=5000", "--regid=5000", "--clear-groups"}, "/v1/certificates/api");
  EXPECT_EQ(s5, 403);
  // Another certificate's allowed uid gets nothing here.
  auto [s6, b6] = curl_as({"--reuid=4242", "--regid=4242", "--clear-groups"}, "/v1/certificates/api");
  EXPECT_EQ(s6, 403);
  // Watching needs the same right.
  auto [s7, b7] = curl_as({"--reuid=65534", "--regid=65534", "--clear-groups"},
                          "/v1/certificates/web?watch=1");
  EXPECT_EQ(s7, 403);
  EXPECT_EQ(metric(metric::kSocketRejected, {{"reason", "forbidden"}}), 4);
}

TEST_F(SocketApiTest, UnknownCertificatesAndPathsAre404AndWrongMethods405) {
  start();
  EXPECT_EQ(get("/v1/certificates/nope")->status, 404);
  EXPECT_EQ(get("/v1/certificates/WEB")->status, 404);
  EXPECT_EQ(get("/v1/certificates/web/../web")->status, 404);
  EXPECT_EQ(get("/v1/certificates/web/other")->status, 404);
  EXPECT_EQ(get("/v1/certificates/")->status, 404);
  EXPECT_EQ(get("/")->status, 404);
  EXPECT_EQ(get("/v2/certificates")->status, 404);
  auto post = request("POST /v1/certificates/web HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
  EXPECT_EQ(post->header("allow"), "GET");
  EXPECT_EQ(get("/v1/certificates/web/renew")->status, 405);
  EXPECT_EQ(request("DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")->status, 405);
  EXPECT_EQ(request("FOO /v1/certificates HTTP/1.1\r\nHost: x\r\n\r\n")->status, 405);
}

// ---- fail-closed ---------------------------------------------------------------------------

TEST_F(SocketApiTest, NothingInvalidIsEverHandedOut) {
  start();
  auto r = get("/v1/certificates/db");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, R"({"error":"not_issued"})");

  // Past not_after by the clock, before the store has even noticed: already 503.
  on_io([&] { clock_.advance(25h); });
  r = get("/v1/certificates/web");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, R"({"error":"expired"})");
  EXPECT_EQ(r->body.find("PRIVATE"), std::string::npos);
  on_io([&] { store_.mark_expired("web"); });
  r = get("/v1/certificates/web");
  EXPECT_EQ(r->status, 503);
  auto list = get("/v1/certificates");
  EXPECT_NE(list->body.find(R"("name":"web","state":"expired")"), std::string::npos) << list->body;

  // Material committed already expired (a late broker answer) is not handed out either.
  commit("api", material("a2", clock_.now() - 1s));
  EXPECT_EQ(get("/v1/certificates/api")->body, R"({"error":"expired"})");
  // A fresh commit recovers without anything else.
  commit("web", material("0b"));
  EXPECT_EQ(get("/v1/certificates/web")->status, 200);
}

TEST_F(SocketApiTest, ALeafNotValidYetIsNamedSoAndNotHandedOut) {
  start();
  auto early = std::make_shared<Material>();
  early->cert_pem = web_cert().cert_pem;
  early->key_pem = Secret(web_cert().key_pem);
  early->serial_hex = "e1";
  early->not_before = clock_.now() + 10min;  // a broker whose clock runs ahead of ours
  early->not_after = clock_.now() + 24h;
  early->broker = "dev";
  commit("api", early);
  auto r = get("/v1/certificates/api");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, R"({"error":"not_yet_valid"})");
  EXPECT_EQ(r->body.find("PRIVATE"), std::string::npos);
  EXPECT_NE(get("/v1/certificates")->body.find(R"("name":"api","state":"not_yet_valid")"), std::string::npos);
  // Valid once the clock reaches not_before, even before the loop has told the store.
  on_io([&] { clock_.advance(10min); });
  EXPECT_EQ(get("/v1/certificates/api")->status, 200);
}

// ---- watch ---------------------------------------------------------------------------------

TEST_F(SocketApiTest, WatchGetsTheBundleEveryRotationAndTheExpiry) {
  start();
  auto c = RawClient::unix_socket(path_);
  ASSERT_TRUE(c.send(RawClient::get("/v1/certificates/web?watch=1")));
  auto head = c.read_head();
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->header("transfer-encoding"), "chunked");
  EXPECT_EQ(head->header("content-type"), "application/x-ndjson");
  auto first = c.next_line();
  ASSERT_TRUE(first);
  auto b1 = parse_object(*first);
  EXPECT_EQ(s(b1.at("serial")), web_cert().serial);
  EXPECT_EQ(s(b1.at("private_key_pem")), web_cert().key_pem);
  ASSERT_TRUE(wait_until([&] { return metric(metric::kSocketWatchers) == 1; }, 2s));

  commit("web", material("0c"));
  auto second = c.next_line();
  ASSERT_TRUE(second);
  EXPECT_EQ(s(parse_object(*second).at("serial")), "0c");

  // Other events that change nothing send nothing.
  on_io([&] { store_.touch("web"); });
  commit("web", material("0d"));
  EXPECT_EQ(s(parse_object(*c.next_line()).at("serial")), "0d");

  on_io([&] {
    clock_.advance(25h);
    store_.mark_expired("web");
  });
  EXPECT_EQ(c.next_line(), R"({"error":"expired"})");
  // Still connected: the next bundle arrives as soon as it is committed.
  commit("web", material("0e"));
  EXPECT_EQ(s(parse_object(*c.next_line()).at("serial")), "0e");

  c.close();
  EXPECT_TRUE(wait_until([&] { return metric(metric::kSocketWatchers) == 0; }, 2s));
  EXPECT_EQ(on_io([&] { return server_->watchers(); }), 0u);
}

TEST_F(SocketApiTest, WatchersOfACertificateRemovedByAReloadAreToldAndClosed) {
  start();
  auto gone = RawClient::unix_socket(path_);
  auto kept = RawClient::unix_socket(path_);
  ASSERT_TRUE(gone.send(RawClient::get("/v1/certificates/api?watch=1")));
  ASSERT_TRUE(kept.send(RawClient::get("/v1/certificates/web?watch=1")));
  ASSERT_TRUE(gone.read_head() && gone.next_line());
  ASSERT_TRUE(kept.read_head() && kept.next_line());
  ASSERT_TRUE(wait_until([&] { return metric(metric::kSocketWatchers) == 2; }, 2s));

  // A config reload without "api".
  on_io([&] { store_.configure({cert_config("web", {4242}, {}), cert_config("db", {}, {})}); });
  EXPECT_EQ(gone.next_line(), R"({"error":"removed"})");
  EXPECT_TRUE(gone.wait_closed(2s));
  EXPECT_TRUE(wait_until([&] { return metric(metric::kSocketWatchers) == 1; }, 2s));
  EXPECT_EQ(get("/v1/certificates/api")->status, 404);
  // The other watcher carries on.
  commit("web", material("0f"));
  EXPECT_EQ(s(parse_object(*kept.next_line()).at("serial")), "0f");
}

TEST_F(SocketApiTest, CurlCanWatch) {
  start();
  // The README's sidecar example reads the stream with curl -N.
  const auto r = test::run({test::require_program("curl").string(), "-sN", "--max-time", "1",
                            "--unix-socket", path_.string(),
                            "http://localhost/v1/certificates/web?watch=1"},
                           10s);
  EXPECT_EQ(r.exit_code, 28) << r.err;  // cut by --max-time while still watching
  const auto nl = r.out.find('\n');
  ASSERT_NE(nl, std::string::npos) << r.out;
  EXPECT_EQ(s(parse_object(r.out.substr(0, nl)).at("serial")), web_cert().serial);
}

TEST_F(SocketApiTest, WatchBeforeIssuanceStartsWithAnErrorLineThenTheBundle) {
  start();
  auto c = RawClient::unix_socket(path_);
  ASSERT_TRUE(c.send(RawClient::get("/v1/certificates/db?watch=1")));
  ASSERT_TRUE(c.read_head());
  EXPECT_EQ(c.next_line(), R"({"error":"not_issued"})");
  commit("db", material("d1"));
  EXPECT_EQ(s(parse_object(*c.next_line()).at("serial")), "d1");
}

TEST_F(SocketApiTest, WatchersBeyondTheLimitGet503) {
  auto config = socket_config();
  config.max_watchers = 2;
  start(config);
  RawClient w1 = RawClient::unix_socket(path_), w2 = RawClient::unix_socket(path_);
  for (auto* w : {&w1, &w2}) {
    ASSERT_TRUE(w->send(RawClient::get("/v1/certificates/web?watch=1")));
    ASSERT_TRUE(w->read_head());
    ASSERT_TRUE(w->next_line());
  }
  auto r = get("/v1/certificates/web?watch=1");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, R"({"error":"too_many_watchers"})");
  EXPECT_EQ(metric(metric::kSocketRejected, {{"reason", "max_watchers"}}), 1);
  EXPECT_EQ(get("/v1/certificates/web")->status, 200);  // plain fetches are unaffected
  w1.close();
  ASSERT_TRUE(wait_until([&] { return metric(metric::kSocketWatchers) == 1; }, 2s));
  auto w3 = RawClient::unix_socket(path_);
  ASSERT_TRUE(w3.send(RawClient::get("/v1/certificates/web?watch=1")));
  EXPECT_EQ(w3.read_head()->status, 200);
}

TEST_F(SocketApiTest, StopEndsWatchStreams) {
  start();
  auto c = RawClient::unix_socket(path_);
  ASSERT_TRUE(c.send(RawClient::get("/v1/certificates/web?watch=1")));
  ASSERT_TRUE(c.read_head());
  ASSERT_TRUE(c.next_line());
  on_io([&] { server_->stop(); });
  EXPECT_TRUE(c.wait_closed(2s));
  EXPECT_EQ(metric(metric::kSocketWatchers), 0);
}

// ---- renew, health, readiness, metrics ------------------------------------------------------

TEST_F(SocketApiTest, RenewOnlyForRootAndAdmins) {
  start();
  auto r = request("POST /v1/certificates/web/renew HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 202);
  auto [s1, b1] = curl_as({"--reuid=65534", "--regid=65534", "--clear-groups"},
                          "/v1/certificates/web/renew", "POST");
  EXPECT_EQ(s1, 403);
  auto [s2, b2] = curl_as({"--reuid=4242", "--regid=4242", "--clear-groups"},
                          "/v1/certificates/api/renew", "POST");
  EXPECT_EQ(s2, 202);
  auto unknown = request("POST /v1/certificates/nope/renew HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(unknown->status, 404);
  std::lock_guard lock(mutex_);
  EXPECT_EQ(renewals_, (std::vector<std::string>{"web", "api"}));
}

TEST_F(SocketApiTest, HealthReadinessAndMetrics) {
  start();
  EXPECT_EQ(get("/healthz")->status, 200);
  healthy_ = false;
  EXPECT_EQ(get("/healthz")->status, 503);
  healthy_ = true;

  auto ready = get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  auto o = parse_object(ready->body);
  EXPECT_EQ(o.at("ready"), false);
  EXPECT_EQ(o.at("reasons").as_array().size(), 1u);
  EXPECT_NE(ready->body.find("db"), std::string::npos);
  commit("db", material("d1"));
  EXPECT_EQ(get("/readyz")->status, 200);

  auto m = get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_EQ(m->header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(m->body.find("certagent_socket_watchers"), std::string::npos);
  EXPECT_NE(m->body.find("certagent_socket_connections"), std::string::npos);
}

TEST_F(SocketApiTest, MetricsListenerServesOnlyHealthReadinessAndMetrics) {
  start();
  MetricsListener listener(io_, "127.0.0.1:0", store_, metrics_, clock_, [this] { return healthy_.load(); });
  ASSERT_TRUE(on_io([&] { return bool(listener.start()); }));
  const int port = listener.endpoint()->port();
  auto fetch = [&](const std::string& target) {
    auto c = RawClient::tcp(port);
    EXPECT_TRUE(c.send(RawClient::get(target, false)));
    return c.read_response();
  };
  EXPECT_EQ(fetch("/metrics")->status, 200);
  EXPECT_EQ(fetch("/healthz")->status, 200);
  EXPECT_EQ(fetch("/readyz")->status, 503);
  auto keys = fetch("/v1/certificates/web");
  EXPECT_EQ(keys->status, 404);
  EXPECT_EQ(keys->body.find("PRIVATE"), std::string::npos);
  EXPECT_EQ(fetch("/v1/certificates")->status, 404);
  on_io([&] { listener.stop(); });
  auto bad = MetricsListener(io_, "127.0.0.1:99999", store_, metrics_, clock_, nullptr).start();
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("metrics.listen"), std::string::npos);
}

// ---- hostile and broken clients -------------------------------------------------------------

TEST_F(SocketApiTest, MalformedRequestsGet4xxAndCostNothingElse) {
  start();
  EXPECT_EQ(request("\x01\x02garbage\r\n\r\n")->status, 400);
  EXPECT_EQ(request("GET /v1/certificates HTTP/1.1\r\nHost: x\r\nX: " + std::string(10000, 'h') +
                    "\r\n\r\n")->status,
            431);
  EXPECT_EQ(request("POST /v1/certificates/web/renew HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" +
                    std::string(70000, 'b'))->status,
            413);
  EXPECT_EQ(metric(metric::kSocketRejected, {{"reason", "bad_request"}}), 1);
  EXPECT_EQ(metric(metric::kSocketRejected, {{"reason", "header_too_large"}}), 1);
  EXPECT_EQ(metric(metric::kSocketRejected, {{"reason", "body_too_large"}}), 1);
  EXPECT_EQ(get("/v1/certificates/web")->status, 200);
  std::lock_guard lock(mutex_);
  EXPECT_TRUE(renewals_.empty());
}

TEST_F(SocketApiTest, HalfOpenAndSlowClientsAreCutWhileOthersAreServed) {
  start();
  std::vector<RawClient> silent;
  for (int i = 0; i < 50; ++i) silent.push_back(RawClient::unix_socket(path_));
  auto slow = RawClient::unix_socket(path_);
  const std::string req = RawClient::get("/v1/certificates/web");
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t sent = 0;
  bool cut = false;
  while (sent < req.size()) {  // 1 byte per 100 ms
    if (!slow.send(req.substr(sent++, 1)) || slow.wait_closed(100ms)) {
      cut = true;
      break;
    }
    auto r = get("/v1/certificates/web");  // others are served meanwhile, promptly
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_TRUE(cut);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_NE(slow.buffered().find("HTTP/1.1 408"), std::string::npos);
  EXPECT_EQ(slow.buffered().find("PRIVATE"), std::string::npos);
  for (auto& s : silent) EXPECT_TRUE(s.wait_closed(2s));
  EXPECT_TRUE(wait_until([&] { return metric(metric::kSocketConnections) == 0; }, 2s));
  EXPECT_EQ(metric(metric::kSocketRejected, {{"reason", "timeout"}}), 51);
}

TEST_F(SocketApiTest, ThousandWatchersGetEachRotationAndMemoryStaysBounded) {
  rlimit nofile{};
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  if (nofile.rlim_cur < 4096) {
    nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 4096);
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  ASSERT_GE(nofile.rlim_cur, 2200u) << "raise the hard RLIMIT_NOFILE";
  start();
  ASSERT_EQ(get("/v1/certificates/web")->status, 200);  // warm up
  const std::size_t rss_before = test::resident_bytes();

  constexpr std::size_t kWatchers = 1000;
  test::WatcherFleet fleet(path_, "/v1/certificates/web?watch=1", kWatchers);
  ASSERT_EQ(fleet.size(), kWatchers);
  ASSERT_TRUE(fleet.wait_all(serial_marker(web_cert().serial), 30s)) << "initial bundles";
  EXPECT_EQ(on_io([&] { return server_->watchers(); }), kWatchers);
  EXPECT_EQ(metric(metric::kSocketWatchers), kWatchers);
  const std::size_t rss_watching = test::resident_bytes();

  // Others are served while 1,000 streams are open.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(get("/v1/certificates/web")->status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);

  for (int i = 1; i <= 10; ++i) {
    const std::string serial = "f" + std::to_string(i);
    commit("web", material(serial));
    ASSERT_TRUE(fleet.wait_all(serial_marker(serial), 10s)) << "rotation " << i;
  }
  const std::size_t rss_after = test::resident_bytes();
  EXPECT_EQ(fleet.closed(), 0u);
  const double per_watcher_kib = (double(rss_watching) - double(rss_before)) / kWatchers / 1024;
  std::printf("RSS before %.1f MiB, with %zu watchers %.1f MiB (%.1f KiB each), after 10 rotations "
              "%.1f MiB\n",
              rss_before / 1048576.0, kWatchers, rss_watching / 1048576.0, per_watcher_kib,
              rss_after / 1048576.0);
  EXPECT_LT(rss_watching - rss_before, 24u << 20);
  // Rotations allocate nothing that stays.
  EXPECT_LT(double(rss_after) - double(rss_watching), 4.0 * 1048576);
}

TEST_F(SocketApiTest, ClosedWatchersAreForgotten) {
  start();
  {
    test::WatcherFleet fleet(path_, "/v1/certificates/web?watch=1", 200);
    ASSERT_TRUE(fleet.wait_all(serial_marker(web_cert().serial), 10s));
    EXPECT_EQ(metric(metric::kSocketWatchers), 200);
  }
  EXPECT_TRUE(wait_until([&] { return on_io([&] { return server_->watchers(); }) == 0; }, 5s));
  EXPECT_EQ(metric(metric::kSocketWatchers), 0);
  EXPECT_TRUE(wait_until([&] { return metric(metric::kSocketConnections) == 0; }, 2s));
}

// ---- CLI over the socket --------------------------------------------------------------------

TEST_F(SocketApiTest, CliStatusPrintsATableAndJson) {
  start();
  std::ostringstream out, err;
  ASSERT_EQ(cli::cli_status(path_, false, out, err), 0) << err.str();
  const std::string table = out.str();
  EXPECT_EQ(table.rfind("NAME", 0), 0u) << table;
  for (const char* col : {"STATE", "SERIAL", "NOT_AFTER", "EXPIRES_IN", "NEXT_RENEWAL"}) {
    EXPECT_NE(table.find(col), std::string::npos) << col;
  }
  EXPECT_NE(table.find("web"), std::string::npos);
  EXPECT_NE(table.find("not_issued"), std::string::npos);
  EXPECT_NE(table.find(web_cert().serial), std::string::npos);
  EXPECT_NE(table.find("23h"), std::string::npos) << table;  // expires in 23h59m..24h

  std::ostringstream jout;
  ASSERT_EQ(cli::cli_status(path_, true, jout, err), 0);
  EXPECT_EQ(parse_object(jout.str()).at("certificates").as_array().size(), 3u);

  std::ostringstream eout, eerr;
  EXPECT_EQ(cli::cli_status(dir_ / "nothing.sock", false, eout, eerr), 1);
  EXPECT_NE(eerr.str().find("cannot talk to the daemon"), std::string::npos) << eerr.str();
}

TEST_F(SocketApiTest, CliFetchWritesTheFileSinkLayout) {
  start();
  const fs::path out_dir = dir_ / "live" / "web";
  std::ostringstream out, err;
  ASSERT_EQ(cli::cli_fetch(path_, "web", out_dir, out, err), 0) << err.str();
  EXPECT_NE(out.str().find(web_cert().serial), std::string::npos);
  EXPECT_TRUE(fs::is_symlink(out_dir / "..data"));
  EXPECT_EQ(test::read_file(out_dir / "cert.pem"), web_cert().cert_pem);
  EXPECT_EQ(test::read_file(out_dir / "key.pem"), web_cert().key_pem);
  struct stat st {};
  ASSERT_EQ(::stat((out_dir / "key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  std::ostringstream jout;
  ASSERT_EQ(cli::cli_fetch(path_, "web", std::nullopt, jout, err), 0);
  EXPECT_EQ(s(parse_object(jout.str()).at("private_key_pem")), web_cert().key_pem);

  std::ostringstream o2, e2;
  EXPECT_EQ(cli::cli_fetch(path_, "db", out_dir, o2, e2), 1);
  EXPECT_NE(e2.str().find("has not been issued yet"), std::string::npos) << e2.str();
  EXPECT_EQ(cli::cli_fetch(path_, "nope", std::nullopt, o2, e2), 1);
  EXPECT_NE(e2.str().find("unknown certificate 'nope'"), std::string::npos) << e2.str();
  EXPECT_EQ(cli::cli_fetch(path_, "Bad Name", std::nullopt, o2, e2), 2);
  // The files from the first fetch are intact.
  EXPECT_EQ(test::read_file(out_dir / "key.pem"), web_cert().key_pem);
}

TEST_F(SocketApiTest, CliRenew) {
  start();
  std::ostringstream out, err;
  EXPECT_EQ(cli::cli_renew(path_, "api", out, err), 0) << err.str();
  EXPECT_EQ(cli::cli_renew(path_, "nope", out, err), 1);
  EXPECT_EQ(cli::cli_renew(path_, "", out, err), 2);
  std::lock_guard lock(mutex_);
  EXPECT_EQ(renewals_, std::vector<std::string>{"api"});
}

}  // namespace
}  // namespace certagent
