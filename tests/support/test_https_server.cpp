#include "tests/support/test_https_server.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <cctype>
#include <ctime>
#include <mutex>

namespace certagent::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);
}

class TestHttpsServer::Impl {
 public:
  Impl(TestHttpsServer& owner, Handler handler)
      : owner_(owner), handler_(std::move(handler)), acceptor_(ioc_), tls_(asio::ssl::context::tls_server) {}

  TestHttpsServer& owner_;
  std::mutex mutex_;
  Handler handler_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  asio::ssl::context tls_;
  std::thread thread_;

  Handler handler() {
    std::lock_guard lock(mutex_);
    return handler_;
  }

  asio::awaitable<void> accept_loop(bool use_tls) {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(kTuple);
      if (ec) co_return;
      ++owner_.connections_;
      if (use_tls) {
        asio::co_spawn(ioc_, tls_session(std::move(socket)), asio::detached);
      } else {
        asio::co_spawn(ioc_, plain_session(std::move(socket)), asio::detached);
      }
    }
  }

  asio::awaitable<void> tls_session(tcp::socket socket) {
    asio::ssl::stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), tls_);
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
    auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server, kTuple);
    if (ec) co_return;
    bool graceful = co_await serve(stream);
    if (graceful) {
      // close_notify, as real servers send it: the client's session stays resumable.
      beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(1));
      co_await stream.async_shutdown(kTuple);
    }
    error_code ignored;
    beast::get_lowest_layer(stream).socket().close(ignored);
  }

  asio::awaitable<void> plain_session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    co_await serve(stream);
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.socket().close(ignored);
  }

  // Returns false when the connection should just be dropped (raw replies).
  template <class Stream>
  asio::awaitable<bool> serve(Stream& stream) {
    beast::flat_buffer buffer;
    for (;;) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.body_limit(16 * 1024 * 1024);
      beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(30));
      auto [rec, n] = co_await bhttp::async_read(stream, buffer, parser, kTuple);
      (void)n;
      if (rec) break;
      ++owner_.requests_;
      auto& req = parser.get();
      Request request;
      request.method = std::string(req.method_string());
      request.target = std::string(req.target());
      for (const auto& f : req) {
        std::string name(f.name_string());
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        request.headers[name] = std::string(f.value());
      }
      request.body = req.body();
      Reply reply = handler()(request);
      if (reply.delay.count() > 0) {
        asio::steady_timer timer(ioc_);
        timer.expires_after(reply.delay);
        co_await timer.async_wait(kTuple);
      }
      if (reply.raw) {
        co_await asio::async_write(stream, asio::buffer(*reply.raw), kTuple);
        co_return false;
      }
      bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(reply.status), 11};
      for (const auto& [k, v] : reply.headers) res.insert(k, v);
      res.body() = std::move(reply.body);
      res.keep_alive(!reply.close && req.keep_alive());
      if (request.method == "HEAD") {
        res.content_length(res.body().size());
        bhttp::response_serializer<bhttp::string_body> sr{res};
        auto [wec, w] = co_await bhttp::async_write_header(stream, sr, kTuple);
        (void)w;
        if (wec) break;
      } else {
        res.prepare_payload();
        auto [wec, w] = co_await bhttp::async_write(stream, res, kTuple);
        (void)w;
        if (wec) break;
      }
      if (reply.drop_after || !res.keep_alive()) break;
    }
    co_return true;
  }
};

TestHttpsServer::TestHttpsServer(const std::string& cert_pem, const std::string& key_pem, Handler handler)
    : impl_(std::make_unique<Impl>(*this, std::move(handler))), tls_(!cert_pem.empty()) {
  if (tls_) {
    impl_->tls_.use_certificate_chain(asio::buffer(cert_pem));
    impl_->tls_.use_private_key(asio::buffer(key_pem), asio::ssl::context::pem);
  }
  tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
  impl_->acceptor_.open(ep.protocol());
  impl_->acceptor_.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor_.bind(ep);
  impl_->acceptor_.listen();
  port_ = impl_->acceptor_.local_endpoint().port();
  asio::co_spawn(impl_->ioc_, impl_->accept_loop(tls_), asio::detached);
  impl_->thread_ = std::thread([this] { impl_->ioc_.run(); });
}

TestHttpsServer::~TestHttpsServer() {
  impl_->ioc_.stop();
  if (impl_->thread_.joinable()) impl_->thread_.join();
}

std::string TestHttpsServer::url() const {
  return std::string(tls_ ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_);
}

void TestHttpsServer::set_handler(Handler handler) {
  std::lock_guard lock(impl_->mutex_);
  impl_->handler_ = std::move(handler);
}

std::string http_date(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);  // the C locale's names
  return buf;
}

}  // namespace certagent::test
