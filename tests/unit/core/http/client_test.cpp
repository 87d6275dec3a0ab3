// The broker HTTP client against a real TLS server on loopback (tests/fakes/test_https_server).

#include "core/http/client.h"
#include "tests/support/run_sync.h"
#include "tests/support/test_https_server.h"
#include "tests/support/test_pki.h"
#include "tests/support/test_support.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <gtest/gtest.h>

#include <atomic>

namespace certagent::http {
namespace {

using test::CertSpec;
using test::TestCert;
using test::TestHttpsServer;
using namespace std::chrono_literals;

struct Pki {
  TestCert ca = test::make_cert(CertSpec{.common_name = "Test Broker CA", .is_ca = true});
  TestCert leaf = test::make_cert(
      CertSpec{.common_name = "localhost", .dns_names = {"localhost"}, .ip_addresses = {"127.0.0.1"}}, &ca);
};

class ClientTest : public ::testing::Test {
 protected:
  Pki pki;
  test::TempDir dir{"http-client"};
  boost::asio::io_context ioc;

  std::filesystem::path write_ca() {
    auto path = dir / "ca.pem";
    test::write_file(path, pki.ca.cert_pem());
    return path;
  }
  std::unique_ptr<Client> make_client(ClientOptions options = {}) {
    if (options.ca_bundle.empty()) options.ca_bundle = write_ca();
    auto c = Client::create(ioc.get_executor(), std::move(options));
    EXPECT_TRUE(c) << (c ? "" : c.error().message);
    return std::move(*c);
  }
  Result<Response> get(Client& client, const std::string& url) { return test::run_sync(ioc, client.get(url)); }
  // A GET from a server that answers every request with these raw bytes.
  Result<Response> get_raw_answer(std::string raw) {
    TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), [raw](const TestHttpsServer::Request&) {
      return TestHttpsServer::Reply{.raw = raw};
    });
    auto client = make_client();
    return get(*client, server.url() + "/");
  }
};

TestHttpsServer::Handler hello() {
  return [](const TestHttpsServer::Request& r) {
    return TestHttpsServer::Reply{.status = 200, .headers = {{"X-Target", r.target}}, .body = "hello"};
  };
}

TEST(ParseUrl, Forms) {
  auto u = parse_url("https://Example.org:8443/a/b?c=d#frag");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->scheme, "https");
  EXPECT_EQ(u->host, "Example.org");
  EXPECT_EQ(u->port, "8443");
  EXPECT_EQ(u->target, "/a/b?c=d");
  u = parse_url("HTTP://[::1]/x");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, "80");
  EXPECT_EQ(u->origin(), "http://[::1]:80");
  u = parse_url("https://h");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->target, "/");
  EXPECT_EQ(u->port, "443");
  EXPECT_FALSE(parse_url("ftp://h/"));
  EXPECT_FALSE(parse_url("/relative"));
  EXPECT_FALSE(parse_url("https://user@h/"));
  EXPECT_FALSE(parse_url("https://h:0/"));
  EXPECT_FALSE(parse_url("https://h:99999/"));
  EXPECT_FALSE(parse_url("https://:443/"));
}

// Found by fuzz_formats: "https://k::1]:8443/" parsed with host "k::1]", whose origin
// ("https://[k::1]]:8443") no longer parsed; a URL from a broker (a Location or Link header) could
// also carry CR/LF into the Host header or the request line.
TEST(ParseUrl, HostsAndPathsThatWouldBreakTheRequestAreRefused) {
  EXPECT_FALSE(parse_url("https://k::1]:8443/acme"));
  EXPECT_FALSE(parse_url("https://[k::1]:8443/acme"));
  EXPECT_FALSE(parse_url("https://a]b/"));
  constexpr char kNul[] = "https://ca\0.example/";
  EXPECT_FALSE(parse_url(std::string_view(kNul, sizeof kNul - 1)));
  EXPECT_FALSE(parse_url("https://ca.example\r\nX-Evil: 1/"));
  EXPECT_FALSE(parse_url("https://ca.example/a b"));
  EXPECT_FALSE(parse_url("https://ca.example/a\r\nX-Evil: 1"));
  // Found by fuzz_acme: URLs are ASCII (a Location with other bytes became a JWS's kid).
  EXPECT_FALSE(parse_url("https://ca.example/acct/\xff" "1"));
  EXPECT_FALSE(parse_url("https://ca.example/caf\xc3\xa9?x=1"));
  EXPECT_TRUE(parse_url("https://ca.example/caf%C3%A9"));
  for (const char* ok : {"https://ca.example/acme/dir", "https://[::1]:14000/dir", "http://127.0.0.1:8000/x",
                         "https://xn--bcher-kva.example/", "https://under_score.internal/"}) {
    auto u = parse_url(ok);
    ASSERT_TRUE(u) << ok;
    auto origin = parse_url(u->origin());
    ASSERT_TRUE(origin) << u->origin();
    EXPECT_EQ(origin->host, u->host);
  }
}

// Found by fuzz_formats: a date after 2262 overflowed std::chrono::system_clock::from_time_t
// (undefined behaviour; in practice a date in the past, so "retry now").
TEST(RetryAfter, DatesBeyondSystemTimeMeanWaitingLong) {
  auto now = std::chrono::system_clock::from_time_t(784111777);
  auto after = parse_retry_after("Wed, 21 Oct 4030 07:28:00 GMT", now);
  ASSERT_TRUE(after);
  EXPECT_GT(*after, std::chrono::hours(24 * 365 * 200));
}

TEST(RetryAfter, SecondsAndDates) {
  auto now = std::chrono::system_clock::from_time_t(784111777);  // Sun, 06 Nov 1994 08:49:37 GMT
  EXPECT_EQ(parse_retry_after("120", now), 120s);
  EXPECT_EQ(parse_retry_after(" 0 ", now), 0s);
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now), 120s);
  EXPECT_EQ(parse_retry_after("Sunday, 06-Nov-94 08:50:37 GMT", now), 60s);
  EXPECT_EQ(parse_retry_after("Sun Nov  6 08:49:47 1994", now), 10s);
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), 0s);  // past
  EXPECT_EQ(parse_retry_after("soon", now), std::nullopt);
  EXPECT_EQ(parse_retry_after("-5", now), std::nullopt);
  EXPECT_EQ(parse_retry_after("", now), std::nullopt);
  EXPECT_EQ(parse_retry_after("1.5", now), std::nullopt);
}

TEST_F(ClientTest, KeepsOneConnectionAlive) {
  TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), hello());
  auto client = make_client();
  for (int i = 0; i < 5; ++i) {
    auto r = get(*client, server.url() + "/path?i=" + std::to_string(i));
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, 200u);
    EXPECT_EQ(r->body, "hello");
    EXPECT_EQ(r->header("x-target"), "/path?i=" + std::to_string(i));
  }
  EXPECT_EQ(server.connections(), 1);
  EXPECT_EQ(client->stats().connections, 1u);
  EXPECT_EQ(client->stats().requests, 5u);
}

TEST_F(ClientTest, ConcurrentRequestsShareTheConnection) {
  TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), [](const TestHttpsServer::Request&) {
    return TestHttpsServer::Reply{.body = "ok", .delay = 5ms};
  });
  auto client = make_client();
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    boost::asio::co_spawn(
        ioc,
        [&]() -> boost::asio::awaitable<void> {
          auto r = co_await client->get(server.url() + "/");
          if (r && r->body == "ok") ++ok;
        },
        boost::asio::detached);
  }
  ioc.run();
  EXPECT_EQ(ok.load(), 8);
  EXPECT_EQ(server.connections(), 1);
}

TEST_F(ClientTest, ReconnectsWhenTheServerDroppedTheIdleConnection) {
  TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), [](const TestHttpsServer::Request&) {
    return TestHttpsServer::Reply{.body = "once", .drop_after = true};
  });
  auto client = make_client();
  for (int i = 0; i < 3; ++i) {
    auto r = get(*client, server.url() + "/");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->body, "once");
  }
  EXPECT_EQ(server.connections(), 3);
  // The second and third connections were TLS resumptions of the first session.
  EXPECT_GE(client->stats().resumed, 1u);
}

TEST_F(ClientTest, HonoursConnectionClose) {
  TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), [](const TestHttpsServer::Request&) {
    return TestHttpsServer::Reply{.body = "bye", .close = true};
  });
  auto client = make_client();
  for (int i = 0; i < 2; ++i) {
    auto r = get(*client, server.url() + "/");
    ASSERT_TRUE(r) << r.error().message;
  }
  EXPECT_EQ(server.connections(), 2);
  EXPECT_EQ(client->stats().resumed, 1u);  // the second handshake resumed the first session
}

TEST_F(ClientTest, VerifiesTheServerName) {
  TestCert other = test::make_cert(CertSpec{.common_name = "other.example", .dns_names = {"other.example"}}, &pki.ca);
  TestHttpsServer server(other.cert_pem(), other.key_pem(), hello());
  auto client = make_client();
  auto r = get(*client, server.url() + "/");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("TLS handshake"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("mismatch"), std::string::npos) << r.error().message;
  // By name: "localhost" is in the certificate, so that works with SNI.
  auto r2 = get(*client, "https://localhost:" + std::to_string(server.port()) + "/");
  EXPECT_FALSE(r2);  // the other.example certificate still does not name localhost
  TestHttpsServer good(pki.leaf.cert_pem(), pki.leaf.key_pem(), hello());
  auto r3 = get(*client, "https://localhost:" + std::to_string(good.port()) + "/");
  EXPECT_TRUE(r3) << r3.error().message;
}

TEST_F(ClientTest, RejectsAServerFromAnotherCa) {
  TestCert rogue_ca = test::make_cert(CertSpec{.common_name = "Rogue CA", .is_ca = true});
  TestCert rogue = test::make_cert(CertSpec{.common_name = "localhost", .ip_addresses = {"127.0.0.1"}}, &rogue_ca);
  TestHttpsServer server(rogue.cert_pem(), rogue.key_pem(), hello());
  auto client = make_client();
  auto r = get(*client, server.url() + "/");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("unable to get local issuer certificate"), std::string::npos)
      << r.error().message;
}

TEST_F(ClientTest, ReloadsTheCaBundleWhenTheFileChanges) {
  TestCert ca2 = test::make_cert(CertSpec{.common_name = "Second CA", .is_ca = true});
  TestCert leaf2 = test::make_cert(CertSpec{.common_name = "localhost", .ip_addresses = {"127.0.0.1"}}, &ca2);
  TestHttpsServer server(leaf2.cert_pem(), leaf2.key_pem(), hello());
  auto ca_path = write_ca();
  auto client = make_client(ClientOptions{.ca_bundle = ca_path});
  ASSERT_FALSE(get(*client, server.url() + "/"));
  test::write_file(dir / "ca.new", pki.ca.cert_pem() + ca2.cert_pem());
  std::filesystem::rename(dir / "ca.new", ca_path);
  auto r = get(*client, server.url() + "/");
  EXPECT_TRUE(r) << r.error().message;
}

TEST_F(ClientTest, BadCaBundleFailsAtCreate) {
  test::write_file(dir / "empty.pem", "");
  auto c = Client::create(ioc.get_executor(), ClientOptions{.ca_bundle = dir / "empty.pem"});
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("no certificate"), std::string::npos) << c.error().message;
  auto missing = Client::create(ioc.get_executor(), ClientOptions{.ca_bundle = dir / "missing.pem"});
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("missing.pem"), std::string::npos);
}

TEST_F(ClientTest, LimitsTheBody) {
  TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), [](const TestHttpsServer::Request&) {
    return TestHttpsServer::Reply{.body = std::string(2 * 1024 * 1024, 'x')};
  });
  auto client = make_client();
  auto r = get(*client, server.url() + "/");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("larger than 1048576 bytes"), std::string::npos) << r.error().message;
}

TEST_F(ClientTest, TimesOut) {
  TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), [](const TestHttpsServer::Request&) {
    return TestHttpsServer::Reply{.body = "late", .delay = 2s};
  });
  auto client = make_client(ClientOptions{.timeout = 200ms});
  auto start = std::chrono::steady_clock::now();
  auto r = get(*client, server.url() + "/");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("timed out after 200ms"), std::string::npos) << r.error().message;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1500ms);
}

TEST_F(ClientTest, TruncatedResponseIsAnError) {
  auto r = get_raw_answer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("read"), std::string::npos) << r.error().message;
}

TEST_F(ClientTest, NotHttpIsAnError) {
  EXPECT_FALSE(get_raw_answer("<html>garbage</html>\r\n\r\n"));
}

// fuzz_broker_answers: "HTTP/1.1 082 OK" came back as a response with status 82.
TEST_F(ClientTest, AStatusBelow100IsAnError) {
  auto r = get_raw_answer("HTTP/1.1 082 OK\r\nContent-Length: 2\r\n\r\n{}");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("read"), std::string::npos) << r.error().message;
}

TEST_F(ClientTest, ConnectionRefused) {
  int port = test::free_tcp_port();
  auto client = make_client(ClientOptions{.timeout = 2s});
  auto r = get(*client, "https://127.0.0.1:" + std::to_string(port) + "/");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("connect"), std::string::npos) << r.error().message;
}

TEST_F(ClientTest, RetryAfterAndHead) {
  TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), [](const TestHttpsServer::Request& req) {
    if (req.method == "HEAD") return TestHttpsServer::Reply{.status = 200, .headers = {{"Replay-Nonce", "abc"}}};
    return TestHttpsServer::Reply{.status = 429, .headers = {{"Retry-After", "7"}}, .body = "slow down"};
  });
  auto client = make_client();
  auto r = get(*client, server.url() + "/");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, 429u);
  EXPECT_EQ(r->retry_after(std::chrono::system_clock::now()), 7s);
  auto h = test::run_sync(ioc, client->send(Request{.method = "HEAD", .url = server.url() + "/nonce"}));
  ASSERT_TRUE(h) << h.error().message;
  EXPECT_EQ(h->header("replay-nonce"), "abc");
  EXPECT_TRUE(h->body.empty());
  // The connection survives a HEAD (no body expected).
  auto again = get(*client, server.url() + "/");
  ASSERT_TRUE(again);
  EXPECT_EQ(server.connections(), 1);
}

TEST_F(ClientTest, PlainHttp) {
  TestHttpsServer server("", "", hello());
  auto client = make_client();
  auto r = get(*client, server.url() + "/x");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->body, "hello");
}

TEST_F(ClientTest, PostsBodies) {
  TestHttpsServer server(pki.leaf.cert_pem(), pki.leaf.key_pem(), [](const TestHttpsServer::Request& req) {
    return TestHttpsServer::Reply{.body = req.method + ":" + req.headers.at("content-type") + ":" + req.body};
  });
  auto client = make_client();
  auto r = test::run_sync(ioc, client->send(Request{.method = "POST",
                                                    .url = server.url() + "/p",
                                                    .headers = {{"Content-Type", "application/json"}},
                                                    .body = "{\"a\":1}"}));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->body, "POST:application/json:{\"a\":1}");
}

}  // namespace
}  // namespace certagent::http
