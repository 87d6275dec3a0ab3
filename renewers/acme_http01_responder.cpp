#include "renewers/acme_http01_responder.h"

#include "core/logging.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <charconv>
#include <list>
#include <map>

namespace certagent::renewers::acme {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using asio::ip::tcp;
using boost::system::error_code;

namespace {
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);
constexpr std::string_view kPrefix = "/.well-known/acme-challenge/";
constexpr int kMaxConnections = 64;
constexpr auto kConnectionTimeout = std::chrono::seconds(10);
constexpr int kMaxRequestsPerConnection = 16;

bool valid_token(std::string_view t) {
  if (t.empty() || t.size() > 256) return false;
  for (char c : t)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) return false;
  return true;
}
}  // namespace

struct Http01Responder::State : std::enable_shared_from_this<Http01Responder::State> {
  explicit State(asio::any_io_executor ex) : acceptor(ex) {}
  tcp::acceptor acceptor;
  std::map<std::string, std::string, std::less<>> tokens;
  std::list<beast::tcp_stream*> open;  // to close them at stop
  std::uint16_t port{0};
  std::uint64_t served{0};
  bool stopped{false};

  asio::awaitable<void> accept_loop() {
    auto self = shared_from_this();
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(kTuple);
      if (stopped) co_return;
      if (ec) {
        if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) co_return;
        continue;  // EMFILE and friends: keep serving
      }
      if (static_cast<int>(open.size()) >= kMaxConnections) {
        error_code ignored;
        socket.close(ignored);
        continue;
      }
      asio::co_spawn(acceptor.get_executor(), session(std::move(socket)), asio::detached);
    }
  }

  asio::awaitable<void> session(tcp::socket socket) {
    auto self = shared_from_this();
    beast::tcp_stream stream(std::move(socket));
    auto it = open.insert(open.end(), &stream);
    beast::flat_buffer buffer(8192);
    for (int n = 0; n < kMaxRequestsPerConnection && !stopped; ++n) {
      bhttp::request_parser<bhttp::empty_body> parser;
      parser.header_limit(4096);
      parser.body_limit(0);
      stream.expires_after(kConnectionTimeout);
      auto [rec, read] = co_await bhttp::async_read(stream, buffer, parser, kTuple);
      (void)read;
      if (rec || stopped) break;
      const auto& req = parser.get();
      bhttp::response<bhttp::string_body> res{bhttp::status::not_found, req.version()};
      res.set(bhttp::field::content_type, "text/plain");
      std::string_view target(req.target().data(), req.target().size());
      if (req.method() == bhttp::verb::get && target.substr(0, kPrefix.size()) == kPrefix) {
        std::string_view token = target.substr(kPrefix.size());
        if (valid_token(token)) {
          if (auto t = tokens.find(token); t != tokens.end()) {
            res.result(bhttp::status::ok);
            res.body() = t->second;
            ++served;
          }
        }
      }
      log::get("renewer.acme")->debug("event=http01_request target={} status={}", log::quote(target.substr(0, 128)),
                                      res.result_int());
      res.keep_alive(req.keep_alive());
      res.prepare_payload();
      auto [wec, written] = co_await bhttp::async_write(stream, res, kTuple);
      (void)written;
      if (wec || !res.keep_alive()) break;
    }
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.socket().close(ignored);
    open.erase(it);
  }

  void stop() {
    stopped = true;
    error_code ignored;
    acceptor.close(ignored);
    for (auto* s : open) s->socket().close(ignored);
  }
};

Result<std::unique_ptr<Http01Responder>> Http01Responder::start(asio::any_io_executor executor,
                                                                const std::string& listen) {
  auto colon = listen.rfind(':');
  if (colon == std::string::npos)
    return Error{"http-01 listen " + log::quote(listen) + ": expected host:port", {}, true};
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  unsigned port = 0;
  std::string_view port_text = std::string_view(listen).substr(colon + 1);
  auto [p, pec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (pec != std::errc{} || p != port_text.data() + port_text.size() || port > 65535)
    return Error{"http-01 listen " + log::quote(listen) + ": bad port", {}, true};
  error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) return Error{"http-01 listen " + log::quote(listen) + ": not an IP address", {}, true};

  auto state = std::make_shared<State>(executor);
  tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  state->acceptor.open(endpoint.protocol(), ec);
  if (!ec) state->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) state->acceptor.bind(endpoint, ec);
  if (!ec) state->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::string hint = ec == asio::error::access_denied
                           ? " (a port below 1024 needs CAP_NET_BIND_SERVICE, or use a high port behind a proxy)"
                           : "";
    return Error{"http-01 responder cannot listen on " + listen + ": " + ec.message() + hint, {}, true};
  }
  state->port = state->acceptor.local_endpoint().port();
  asio::co_spawn(executor, state->accept_loop(), asio::detached);
  log::get("renewer.acme")->info("event=http01_listening listen={} port={}", listen, state->port);
  return std::unique_ptr<Http01Responder>(new Http01Responder(std::move(state)));
}

Http01Responder::~Http01Responder() {
  if (state_) state_->stop();
}

void Http01Responder::add(const std::string& token, const std::string& key_authorization) {
  state_->tokens[token] = key_authorization;
}

void Http01Responder::remove(const std::string& token) { state_->tokens.erase(token); }
std::uint16_t Http01Responder::port() const { return state_->port; }
std::uint64_t Http01Responder::served() const { return state_->served; }

}  // namespace certagent::renewers::acme
