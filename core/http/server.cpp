#include "core/http/server.h"

#include "core/http/session.h"
#include "core/logging.h"

#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>
#include <cerrno>
#include <charconv>

namespace certagent::http {

namespace {

using namespace std::chrono_literals;
using local = asio::local::stream_protocol;
using tcp = asio::ip::tcp;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

// Pause after accept() fails for lack of descriptors or memory, instead of spinning.
constexpr auto kAcceptBackoff = 100ms;

spdlog::logger* logger() {
  static const auto l = log::get("http.server");
  return l.get();
}

std::string busy_response() {
  const std::string body = R"({"error":"too_many_connections"})";
  return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

// Over the limit: a canned 503 written without waiting (the socket's send buffer is empty, so
// it fits) and the connection closed at once.
template <class Socket>
void refuse_busy(Socket& socket) {
  static const std::string kBusy = busy_response();
  boost::system::error_code ec;
  socket.non_blocking(true, ec);
  socket.write_some(asio::buffer(kBusy), ec);
  socket.shutdown(asio::socket_base::shutdown_send, ec);
  socket.close(ec);
}

Peer peer_of(local::socket& socket) { return peer_of_fd(socket.native_handle()); }

Peer peer_of(tcp::socket&) { return Peer{}; }

}  // namespace

Peer peer_of_fd(int fd) {
  Peer peer;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred) {
    return peer;  // unknown: denied anything that needs authorization
  }
  peer.known = true;
  peer.pid = cred.pid;
  peer.uid = cred.uid;
  peer.gid = cred.gid;
  std::array<gid_t, 32> groups{};
  socklen_t glen = sizeof groups;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
    peer.groups.assign(groups.begin(), groups.begin() + glen / sizeof(gid_t));
  } else if (errno == ERANGE) {
    std::vector<gid_t> more(glen / sizeof(gid_t) + 1);
    glen = static_cast<socklen_t>(more.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, more.data(), &glen) == 0) {
      more.resize(glen / sizeof(gid_t));
      peer.groups = std::move(more);
    }
  }
  return peer;
}

bool Peer::in_group(gid_t g) const {
  if (!known) return false;
  if (gid == g) return true;
  for (gid_t s : groups) {
    if (s == g) return true;
  }
  return false;
}

namespace {

using detail::ServerCore;

template <class Protocol>
asio::awaitable<void> accept_loop(std::shared_ptr<ServerCore> core,
                                  typename Protocol::acceptor* acceptor) {
  for (;;) {
    auto [ec, socket] = co_await acceptor->async_accept(kUseTuple);
    if (core->stopped) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      logger()->warn("event=accept_failed error={}", log::quote(ec.message()));
      asio::steady_timer pause(acceptor->get_executor(), kAcceptBackoff);
      co_await pause.async_wait(kUseTuple);
      if (core->stopped) co_return;
      continue;
    }
    if (core->sessions.size() - core->streams >= core->limits.max_connections) {
      refuse_busy(socket);
      core->reject("max_connections");
      continue;
    }
    Peer peer = peer_of(socket);
    detail::start_session(core, std::move(socket), std::move(peer));
  }
}

}  // namespace

// ---- Server --------------------------------------------------------------------------------

Server::Server(asio::io_context& io, Limits limits, Handler handler, Hooks hooks)
    : core_(std::make_shared<detail::ServerCore>(io, limits, std::move(handler),
                                                 std::move(hooks))) {}

Server::~Server() { stop(); }

void Server::serve(local::acceptor acceptor) {
  auto owned = std::make_unique<local::acceptor>(std::move(acceptor));
  auto* raw = owned.get();
  core_->local_acceptors.push_back(std::move(owned));
  if (core_->stopped) {
    boost::system::error_code ec;
    raw->close(ec);
    return;
  }
  asio::co_spawn(core_->io, accept_loop<local>(core_, raw), asio::detached);
}

void Server::serve(tcp::acceptor acceptor) {
  auto owned = std::make_unique<tcp::acceptor>(std::move(acceptor));
  auto* raw = owned.get();
  core_->tcp_acceptors.push_back(std::move(owned));
  if (core_->stopped) {
    boost::system::error_code ec;
    raw->close(ec);
    return;
  }
  asio::co_spawn(core_->io, accept_loop<tcp>(core_, raw), asio::detached);
}

void Server::stop() {
  if (!core_ || core_->stopped) return;
  core_->stopped = true;
  boost::system::error_code ec;
  for (auto& a : core_->local_acceptors) a->close(ec);
  for (auto& a : core_->tcp_acceptors) a->close(ec);
  // Each session removes itself from the list when it closes; the suspended coroutines keep
  // every listed session alive meanwhile.
  while (!core_->sessions.empty()) core_->sessions.front()->shutdown();
}

std::size_t Server::connections() const { return core_->sessions.size(); }

// ---- helpers -------------------------------------------------------------------------------

Result<tcp::acceptor> listen_tcp(asio::io_context& io, std::string_view host_port) {
  const std::string what = "listen address '" + std::string(host_port) + "'";
  std::string_view host;
  std::string_view port_text;
  if (!host_port.empty() && host_port.front() == '[') {
    const auto close = host_port.find(']');
    if (close == std::string_view::npos || close + 1 >= host_port.size() ||
        host_port[close + 1] != ':') {
      return make_error(what + ": expected [IPv6]:port");
    }
    host = host_port.substr(1, close - 1);
    port_text = host_port.substr(close + 2);
  } else {
    const auto colon = host_port.rfind(':');
    if (colon == std::string_view::npos) return make_error(what + ": expected host:port");
    host = host_port.substr(0, colon);
    port_text = host_port.substr(colon + 1);
  }
  unsigned port = 0;
  auto [end, perr] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (perr != std::errc{} || end != port_text.data() + port_text.size() || port > 65535 ||
      port_text.empty()) {
    return make_error(what + ": the port must be a number from 0 to 65535");
  }
  if (host.empty()) return make_error(what + ": the host is empty");

  boost::system::error_code ec;
  tcp::endpoint endpoint;
  const auto address = asio::ip::make_address(std::string(host), ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, static_cast<unsigned short>(port));
  } else {
    tcp::resolver resolver(io);
    auto results = resolver.resolve(std::string(host), std::to_string(port), ec);
    if (ec || results.empty()) {
      return make_error(what + ": cannot resolve '" + std::string(host) + "': " + ec.message());
    }
    endpoint = results.begin()->endpoint();
  }

  tcp::acceptor acceptor(io);
  acceptor.open(endpoint.protocol(), ec);
  if (ec) return make_error(what + ": socket: " + ec.message());
  acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  acceptor.bind(endpoint, ec);
  if (ec) return make_error(what + ": bind: " + ec.message());
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return make_error(what + ": listen: " + ec.message());
  return acceptor;
}

Reply make_reply(bhttp::status status, std::string_view content_type, std::string body) {
  Reply reply;
  reply.response.result(status);
  reply.response.set(bhttp::field::content_type, content_type);
  reply.response.body() = std::move(body);
  return reply;
}

Reply json_reply(bhttp::status status, std::string body) {
  return make_reply(status, "application/json", std::move(body));
}

Reply error_reply(bhttp::status status, std::string_view code) {
  std::string body = "{\"error\":\"";
  body += code;  // codes are fixed identifiers: nothing to escape
  body += "\"}";
  return json_reply(status, std::move(body));
}

}  // namespace certagent::http
