// The HTTP server over a real Unix socket and real TCP, driven by plain-socket clients: peer
// credentials, keep-alive, limits (431, 413, 400, timeouts, max connections), streaming, stop.

#include "core/http/server.h"

#include "tests/support/test_support.h"
#include "tests/unit/core/http/test_clients.h"

#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>

namespace certagent::http {
namespace {

using namespace std::chrono_literals;
using test::RawClient;
using test::TempDir;
using test::wait_until;
namespace fs = std::filesystem;
using local = asio::local::stream_protocol;

class ServerTest : public ::testing::Test {
 protected:
  void start(Limits limits) {
    server_ = std::make_unique<Server>(
        io_, limits,
        [this](const Request& req, const Peer& peer) { return handle(req, peer); },
        Hooks{[this](std::size_t n) { open_ = n; },
              [this](std::string_view reason) {
                std::lock_guard lock(mutex_);
                ++rejected_[std::string(reason)];
              }});
    socket_path_ = dir_ / "http.sock";
    local::acceptor acceptor(io_, local::endpoint(socket_path_.string()));
    server_->serve(std::move(acceptor));
    auto tcp = listen_tcp(io_, "127.0.0.1:0");
    ASSERT_TRUE(tcp) << tcp.error().message;
    tcp_port_ = tcp->local_endpoint().port();
    server_->serve(std::move(*tcp));
    thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    if (server_) on_io([&] { server_->stop(); });
    guard_.reset();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  }

  template <class F>
  void on_io(F f) {
    std::promise<void> done;
    asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

  int rejected(const std::string& reason) {
    std::lock_guard lock(mutex_);
    return rejected_[reason];
  }

  Reply handle(const Request& req, const Peer& peer) {
    const std::string target(req.target());
    if (target == "/hello") {
      return make_reply(bhttp::status::ok, "text/plain",
                        "known=" + std::to_string(peer.known) + " pid=" + std::to_string(peer.pid) +
                            " uid=" + std::to_string(peer.uid) + " gid=" + std::to_string(peer.gid));
    }
    if (target == "/echo") return make_reply(bhttp::status::ok, "text/plain", req.body());
    if (target == "/secret") {
      Reply r = make_reply(bhttp::status::ok, "text/plain", "-----BEGIN PRIVATE KEY-----");
      r.sensitive = true;
      return r;
    }
    if (target == "/locked") {  // a bundle sent from where it lies, without its last byte
      Reply r = json_reply(bhttp::status::ok, {});
      r.secret_body = std::make_shared<const Secret>(std::string("{\"key\":\"PRIVATE\"}\n"));
      r.secret_body_size = r.secret_body->size() - 1;
      return r;
    }
    if (target == "/stream") {
      Reply r = make_reply(bhttp::status::ok, "application/x-ndjson", {});
      r.stream = [this](std::shared_ptr<ResponseStream> s) {
        s->write(std::make_shared<const Secret>(std::string("first\n")));
        s->on_close([this] { ++stream_closed_; });
        stream_ = std::move(s);
      };
      return r;
    }
    return error_reply(bhttp::status::not_found, "not_found");
  }

  TempDir dir_{"http-server"};
  fs::path socket_path_;
  int tcp_port_{0};
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_{io_.get_executor()};
  std::unique_ptr<Server> server_;
  std::thread thread_;
  std::atomic<std::size_t> open_{0};
  std::mutex mutex_;
  std::map<std::string, int> rejected_;
  std::shared_ptr<ResponseStream> stream_;  // io thread only
  std::atomic<int> stream_closed_{0};
};

Limits test_limits() {
  Limits l;
  l.max_connections = 8;
  l.max_header_bytes = 1024;
  l.max_body_bytes = 4096;
  l.request_timeout = 400ms;
  return l;
}

TEST_F(ServerTest, UnixSocketHandsPeerCredentialsToTheHandler) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(RawClient::get("/hello")));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "known=1 pid=" + std::to_string(::getpid()) + " uid=" +
                         std::to_string(::getuid()) + " gid=" + std::to_string(::getgid()));
}

TEST_F(ServerTest, TcpRunsTheSameCodeWithoutCredentials) {
  start(test_limits());
  auto c = RawClient::tcp(tcp_port_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(RawClient::get("/hello")));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body.rfind("known=0 ", 0), 0u) << r->body;
}

TEST_F(ServerTest, KeepAliveAndPipelinedRequestsShareOneConnection) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.send(RawClient::get("/hello")));
  auto r1 = c.read_response();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->status, 200);
  // Two requests in one write.
  ASSERT_TRUE(c.send(RawClient::get("/secret") + RawClient::get("/nope", false)));
  auto r2 = c.read_response();
  auto r3 = c.read_response();
  ASSERT_TRUE(r2 && r3);
  EXPECT_EQ(r2->status, 200);
  EXPECT_EQ(r2->body, "-----BEGIN PRIVATE KEY-----");
  EXPECT_EQ(r3->status, 404);
  EXPECT_EQ(r3->header("connection"), "close");
  EXPECT_TRUE(c.wait_closed(2s));
}

TEST_F(ServerTest, SecretBodyIsSentFromItsChunkWithItsOwnLength) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.send(RawClient::get("/locked") + RawClient::get("/hello")));
  auto r1 = c.read_response();
  auto r2 = c.read_response();
  ASSERT_TRUE(r1 && r2);
  EXPECT_EQ(r1->status, 200);
  EXPECT_EQ(r1->header("content-length"), "17");
  EXPECT_EQ(r1->header("content-type"), "application/json");
  EXPECT_EQ(r1->body, "{\"key\":\"PRIVATE\"}");
  EXPECT_EQ(r2->status, 200);  // the connection carries on after it
}

TEST_F(ServerTest, PostBodyWithinTheLimitIsRead) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  const std::string body(3000, 'x');
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n" + body));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, body);
}

TEST_F(ServerTest, GarbageGets400AndTheServerCarriesOn) {
  start(test_limits());
  // A TLS ClientHello's first bytes (NULs included: the length is the array's, not strlen's).
  static constexpr char kTlsHello[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n";
  for (const std::string& garbage :
       {std::string(kTlsHello, sizeof kTlsHello - 1),
        std::string("GET / HTTP/9.9\r\n\r\n"), std::string("GET /x HTTP/1.1\r\nBad Header\r\n\r\n"),
        std::string("POST /echo HTTP/1.1\r\nContent-Length: -5\r\n\r\n")}) {
    auto c = RawClient::unix_socket(socket_path_);
    ASSERT_TRUE(c.send(garbage));
    auto r = c.read_response();
    ASSERT_TRUE(r) << "no answer to " << testing::PrintToString(garbage);
    EXPECT_EQ(r->status, 400);
    EXPECT_TRUE(c.wait_closed(2s));
  }
  EXPECT_EQ(rejected("bad_request"), 4);
  auto ok = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(ok.send(RawClient::get("/hello")));
  auto r = ok.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerTest, OversizedHeaderGets431) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.send("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4000, 'a') +
                     "\r\n\r\n"));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 431);
  EXPECT_TRUE(c.wait_closed(3s));
  EXPECT_EQ(rejected("header_too_large"), 1);
}

TEST_F(ServerTest, OversizedBodyGets413BeforeItIsRead) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" +
                     std::string(8192, 'b')));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_TRUE(c.wait_closed(3s));
  EXPECT_EQ(rejected("body_too_large"), 1);
}

TEST_F(ServerTest, SilentClientIsCutAtTheRequestTimeout) {
  start(test_limits());
  const auto t0 = std::chrono::steady_clock::now();
  auto silent = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(silent.connected());
  // Others are served meanwhile.
  auto other = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(other.send(RawClient::get("/hello")));
  ASSERT_TRUE(other.read_response());
  EXPECT_TRUE(silent.wait_closed(3s));
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(elapsed, 350ms);
  EXPECT_LT(elapsed, 2s);
  EXPECT_TRUE(silent.buffered().empty()) << "a client that sent nothing gets no answer";
  EXPECT_TRUE(wait_until([&] { return rejected("timeout") == 1; }, 2s));
}

TEST_F(ServerTest, SlowClientGets408) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  const std::string request = RawClient::get("/hello");
  const auto t0 = std::chrono::steady_clock::now();
  bool cut = false;
  for (char ch : request) {  // 1 byte per 100 ms: the whole request would take ~3.5 s
    if (!c.send(std::string_view(&ch, 1))) {
      cut = true;
      break;
    }
    if (c.wait_closed(100ms)) {
      cut = true;
      break;
    }
  }
  EXPECT_TRUE(cut);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms);
  EXPECT_NE(c.buffered().find("HTTP/1.1 408"), std::string::npos) << c.buffered();
  EXPECT_EQ(rejected("timeout"), 1);
}

TEST_F(ServerTest, IdleKeepAliveConnectionIsClosedQuietly) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.send(RawClient::get("/hello")));
  ASSERT_TRUE(c.read_response());
  EXPECT_TRUE(c.wait_closed(3s));
  EXPECT_TRUE(c.buffered().empty());
  EXPECT_EQ(rejected("timeout"), 0);
}

TEST_F(ServerTest, ConnectionsBeyondTheLimitGet503AndClose) {
  Limits limits = test_limits();
  limits.max_connections = 3;
  limits.request_timeout = 10s;
  start(limits);
  std::vector<RawClient> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(RawClient::unix_socket(socket_path_));
    ASSERT_TRUE(held.back().connected());
  }
  ASSERT_TRUE(wait_until([&] { return open_ == 3; }, 2s));
  auto extra = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(extra.connected());
  auto r = extra.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_TRUE(extra.wait_closed(2s));
  EXPECT_TRUE(wait_until([&] { return rejected("max_connections") == 1; }, 2s));
  // A held connection still works, and one freed slot admits a new client.
  ASSERT_TRUE(held[0].send(RawClient::get("/hello")));
  ASSERT_TRUE(held[0].read_response());
  held.pop_back();
  ASSERT_TRUE(wait_until([&] { return open_ == 2; }, 2s));
  auto next = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(next.send(RawClient::get("/hello")));
  auto ok = next.read_response();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
}

TEST_F(ServerTest, StreamsDoNotCountAgainstMaxConnections) {
  Limits limits = test_limits();
  limits.max_connections = 2;
  limits.request_timeout = 10s;
  start(limits);
  std::vector<RawClient> streams;
  for (int i = 0; i < 4; ++i) {
    streams.push_back(RawClient::unix_socket(socket_path_));
    ASSERT_TRUE(streams.back().send(RawClient::get("/stream")));
    ASSERT_TRUE(streams.back().read_head());
    ASSERT_EQ(streams.back().next_line(), "first");
  }
  std::vector<RawClient> plain;
  for (int i = 0; i < 2; ++i) {
    plain.push_back(RawClient::unix_socket(socket_path_));
    ASSERT_TRUE(plain.back().send(RawClient::get("/hello")));
    auto r = plain.back().read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(open_, 6u);
  auto extra = RawClient::unix_socket(socket_path_);
  auto r = extra.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  on_io([&] { stream_.reset(); });
}

TEST_F(ServerTest, StreamDeliversLinesAndReportsTheClientLeaving) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.send(RawClient::get("/stream")));
  auto head = c.read_head();
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->header("transfer-encoding"), "chunked");
  EXPECT_EQ(c.next_line(), "first");
  // Idle far longer than the request timeout: a stream has no deadline while nothing is sent.
  std::this_thread::sleep_for(600ms);
  on_io([&] {
    ASSERT_TRUE(stream_);
    EXPECT_TRUE(stream_->write(std::make_shared<const Secret>(std::string("second\n"))));
    EXPECT_TRUE(stream_->write(std::make_shared<const Secret>(std::string("third\n"))));
  });
  EXPECT_EQ(c.next_line(), "second");
  EXPECT_EQ(c.next_line(), "third");
  c.close();
  EXPECT_TRUE(wait_until([&] { return stream_closed_ == 1; }, 2s));
  on_io([&] {
    EXPECT_TRUE(stream_->closed());
    EXPECT_FALSE(stream_->write(std::make_shared<const Secret>(std::string("late\n"))));
    stream_.reset();
  });
  EXPECT_TRUE(wait_until([&] { return open_ == 0; }, 2s));
}

TEST_F(ServerTest, FinishEndsTheStream) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.send(RawClient::get("/stream")));
  ASSERT_TRUE(c.read_head());
  EXPECT_EQ(c.next_line(), "first");
  on_io([&] {
    stream_->write(std::make_shared<const Secret>(std::string("bye\n")));
    stream_->finish();
  });
  EXPECT_EQ(c.next_line(), "bye");
  EXPECT_FALSE(c.next_line(1s));  // the last chunk
  EXPECT_TRUE(c.wait_closed(2s));
  EXPECT_TRUE(wait_until([&] { return stream_closed_ == 1; }, 2s));
  on_io([&] { stream_.reset(); });
}

TEST_F(ServerTest, StreamClientThatDoesNotReadIsDisconnected) {
  start(test_limits());
  auto c = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(c.send(RawClient::get("/stream")));
  ASSERT_TRUE(c.read_head());
  ASSERT_EQ(c.next_line(), "first");  // the handler has the stream now
  // The client reads nothing more: the socket buffers fill, the queue grows past its bound (or a
  // write misses its deadline) and the server lets go of it.
  const auto big = std::make_shared<const Secret>(std::string(1 << 20, 'z') + "\n");
  for (int i = 0; i < 40 && stream_closed_ == 0; ++i) {
    on_io([&] { stream_->write(big); });
  }
  EXPECT_TRUE(wait_until([&] { return stream_closed_ == 1; }, 3s));
  on_io([&] { stream_.reset(); });
  EXPECT_TRUE(wait_until([&] { return open_ == 0; }, 2s));
}

TEST_F(ServerTest, StopClosesListenersConnectionsAndStreams) {
  Limits limits = test_limits();
  limits.request_timeout = 10s;
  start(limits);
  auto idle = RawClient::unix_socket(socket_path_);
  auto watcher = RawClient::unix_socket(socket_path_);
  ASSERT_TRUE(watcher.send(RawClient::get("/stream")));
  ASSERT_TRUE(watcher.read_head());
  ASSERT_EQ(watcher.next_line(), "first");
  ASSERT_TRUE(wait_until([&] { return open_ == 2; }, 2s));
  on_io([&] { server_->stop(); });
  EXPECT_EQ(stream_closed_, 1);
  EXPECT_EQ(open_, 0u);
  EXPECT_TRUE(idle.wait_closed(2s));
  EXPECT_TRUE(watcher.wait_closed(2s));
  auto late = RawClient::tcp(tcp_port_);
  EXPECT_FALSE(late.connected());
  on_io([&] { stream_.reset(); });
}

TEST(ListenTcp, RejectsBadAddressesClearly) {
  asio::io_context io;
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", "[::1]9464", ":80"}) {
    auto r = listen_tcp(io, bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find("listen address"), std::string::npos) << r.error().message;
  }
  auto ok = listen_tcp(io, "localhost:0");
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_NE(ok->local_endpoint().port(), 0);
}

}  // namespace
}  // namespace certagent::http
