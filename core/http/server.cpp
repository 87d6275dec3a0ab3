#include "core/http/server.h"

#include "core/logging.h"

#include <openssl/crypto.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <deque>
#include <exception>
#include <list>
#include <optional>

namespace certagent::http {

namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
using local = asio::local::stream_protocol;
using tcp = asio::ip::tcp;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

// After an error answer the client may still be sending (a 413 body): read and drop up to this
// much for up to this long, so closing does not reset the connection before it read the answer.
constexpr std::size_t kLingerBytes = 1 << 20;
constexpr auto kLingerTime = 1s;
// Pause after accept() fails for lack of descriptors or memory, instead of spinning.
constexpr auto kAcceptBackoff = 100ms;

spdlog::logger* logger() {
  static const auto l = log::get("http.server");
  return l.get();
}

// Wipes a response body holding key material when it goes out of scope, whatever path the
// coroutine leaves by (sent, failed, or destroyed with the io_context).
class BodyWipe {
 public:
  explicit BodyWipe(Reply& reply) : reply_(reply) {}
  BodyWipe(const BodyWipe&) = delete;
  BodyWipe& operator=(const BodyWipe&) = delete;
  ~BodyWipe() {
    auto& body = reply_.response.body();
    if (reply_.sensitive && !body.empty()) OPENSSL_cleanse(body.data(), body.size());
  }

 private:
  Reply& reply_;
};

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

// ---- server state shared with the connections ----------------------------------------------

namespace detail {

class SessionBase : public ResponseStream {
 public:
  virtual void shutdown() = 0;
};

class ServerCore {
 public:
  ServerCore(asio::io_context& io, Limits limits, Handler handler, Hooks hooks)
      : io(io), limits(limits), handler(std::move(handler)), hooks(std::move(hooks)) {}

  using SessionList = std::list<SessionBase*>;

  SessionList::iterator add(SessionBase* session) {
    auto it = sessions.insert(sessions.end(), session);
    if (hooks.connections) hooks.connections(sessions.size());
    return it;
  }
  void remove(SessionList::iterator it) {
    sessions.erase(it);
    if (hooks.connections) hooks.connections(sessions.size());
  }
  void reject(std::string_view reason) {
    if (hooks.rejected) hooks.rejected(reason);
  }

  asio::io_context& io;
  Limits limits;
  Handler handler;
  Hooks hooks;
  bool stopped{false};
  SessionList sessions;
  std::size_t streams{0};  // sessions that have turned into streams
  std::vector<std::unique_ptr<local::acceptor>> local_acceptors;
  std::vector<std::unique_ptr<tcp::acceptor>> tcp_acceptors;
};

}  // namespace detail

namespace {

using detail::ServerCore;
using detail::SessionBase;

// One connection: reads requests in a loop, answers each, or turns into a chunked stream.
// A watchdog timer enforces the deadline of whatever the connection is doing.
template <class Protocol>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<Protocol>> {
 public:
  using Socket = typename Protocol::socket;

  Session(std::shared_ptr<ServerCore> core, Socket socket, Peer peer)
      : core_(std::move(core)),
        socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        wake_(socket_.get_executor()),
        peer_(std::move(peer)) {}

  void start() {
    it_ = core_->add(this);
    arm(Phase::reading, core_->limits.request_timeout);
    watch_deadline();
    asio::co_spawn(socket_.get_executor(), run(this->shared_from_this()), asio::detached);
  }

  // ResponseStream
  bool write(Chunk chunk) override {
    if (closed_ || finishing_) return false;
    if (!chunk || chunk->empty()) return true;  // an empty chunk would end the stream
    if (queue_.size() >= core_->limits.max_queued_chunks) {
      logger()->debug("stream client too slow, closing pid={} uid={}", peer_.pid, peer_.uid);
      core_->reject("slow_consumer");
      close();
      return false;
    }
    queue_.push_back(std::move(chunk));
    // Otherwise the writer is busy with the queue, or has been woken to finish a partial write.
    if (!writing_ && queue_.size() == 1) write_now();
    return true;
  }
  void finish() override {
    if (closed_ || finishing_) return;
    finishing_ = true;
    wake_.cancel();
  }
  bool closed() const override { return closed_; }
  void on_close(std::function<void()> callback) override {
    if (closed_) {
      if (callback) callback();
      return;
    }
    on_close_ = std::move(callback);
  }
  const Peer& peer() const override { return peer_; }

  void shutdown() override { close(); }

 private:
  enum class Phase { idle, reading, writing };

  // Sets the deadline of the current step. The watchdog timer sleeps until the deadline it
  // armed and is woken only when the new one is earlier, so the common case (a later deadline)
  // costs no timer work.
  void arm(Phase phase, SteadyClock::duration d) {
    phase_ = phase;
    deadline_ = SteadyClock::now() + d;
    if (deadline_ < armed_) timer_.cancel();
  }
  void disarm() {
    phase_ = Phase::idle;
    deadline_ = SteadyClock::time_point::max();
  }

  void watch_deadline() {
    armed_ = deadline_;
    timer_.expires_at(armed_);
    timer_.async_wait([self = this->shared_from_this()](boost::system::error_code) {
      self->on_deadline();
    });
  }

  // The timer fired or was cancelled: act if the current deadline has passed, else sleep again.
  void on_deadline() {
    if (closed_) return;
    if (deadline_ <= SteadyClock::now()) {
      if (phase_ != Phase::reading) {
        close();
        return;
      }
      // Stop the read and let run() answer 408 (or close, if nothing came).
      timed_out_ = true;
      boost::system::error_code ec;
      socket_.cancel(ec);
      disarm();
    }
    watch_deadline();
  }

  bool gone() const { return closed_ || core_->stopped; }

  asio::awaitable<void> run(std::shared_ptr<Session> self) {
    const auto& limits = core_->limits;
    bool served_any = false;
    for (;;) {
      std::optional<bhttp::request_parser<bhttp::string_body>> parser(std::in_place);
      parser->header_limit(static_cast<std::uint32_t>(
          std::min<std::size_t>(limits.max_header_bytes, UINT32_MAX)));
      parser->body_limit(limits.max_body_bytes);
      timed_out_ = false;
      arm(Phase::reading, limits.request_timeout);
      auto [ec, n] = co_await bhttp::async_read(socket_, buffer_, *parser, kUseTuple);
      disarm();
      if (gone()) break;
      if (ec) {
        const bool got_bytes = parser->got_some() || buffer_.size() > 0;
        co_await on_read_error(ec, got_bytes, served_any);
        break;
      }
      served_any = true;
      Request request = parser->release();
      parser.reset();
      Reply reply = call_handler(request);
      if (gone()) break;
      if (reply.stream) {
        co_await serve_stream(self, std::move(reply), request.version());
        co_return;
      }
      BodyWipe wipe(reply);
      const bool keep_alive = request.keep_alive();
      const unsigned version = request.version();
      request = {};
      if (!co_await send(reply.response, version, keep_alive)) break;
      if (!keep_alive) {
        boost::system::error_code ignored;
        socket_.shutdown(asio::socket_base::shutdown_send, ignored);
        break;
      }
    }
    close();
  }

  Reply call_handler(const Request& request) {
    try {
      return core_->handler(request, peer_);
    } catch (const std::exception& e) {
      logger()->error("handler failed target={} error={}", log::quote(request.target()),
                      log::quote(e.what()));
      return error_reply(bhttp::status::internal_server_error, "internal_error");
    }
  }

  asio::awaitable<bool> send(Response& response, unsigned version, bool keep_alive) {
    response.version(version);
    response.keep_alive(keep_alive);
    response.prepare_payload();
    arm(Phase::writing, core_->limits.request_timeout);
    auto [ec, n] = co_await bhttp::async_write(socket_, response, kUseTuple);
    disarm();
    co_return !ec && !closed_;
  }

  asio::awaitable<void> on_read_error(boost::system::error_code ec, bool got_bytes,
                                      bool served_any) {
    if (timed_out_) {
      // A client that never sent a byte, or an idle kept-alive one, is simply closed.
      if (got_bytes || !served_any) core_->reject("timeout");
      if (got_bytes) co_await answer_error(bhttp::status::request_timeout, "request_timeout");
      co_return;
    }
    if (ec.category() != bhttp::make_error_code(bhttp::error::end_of_stream).category() ||
        ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message) {
      co_return;  // closed or reset by the client: nobody to answer
    }
    if (ec == bhttp::error::header_limit) {
      core_->reject("header_too_large");
      co_await answer_error(bhttp::status::request_header_fields_too_large, "header_too_large");
    } else if (ec == bhttp::error::body_limit) {
      core_->reject("body_too_large");
      co_await answer_error(bhttp::status::payload_too_large, "body_too_large");
    } else {
      core_->reject("bad_request");
      logger()->debug("bad request pid={} uid={} error={}", peer_.pid, peer_.uid,
                      log::quote(ec.message()));
      co_await answer_error(bhttp::status::bad_request, "bad_request");
    }
  }

  // Answers an error, then drains what the client still sends for a short while before the
  // connection is closed (see kLingerBytes).
  asio::awaitable<void> answer_error(bhttp::status status, std::string_view code) {
    Reply reply = error_reply(status, code);
    if (!co_await send(reply.response, 11, false)) co_return;
    boost::system::error_code ec;
    socket_.shutdown(asio::socket_base::shutdown_send, ec);
    buffer_.clear();
    std::array<char, 2048> scratch;
    std::size_t drained = 0;
    arm(Phase::writing, kLingerTime);  // the watchdog closes the socket at the deadline
    while (!closed_ && drained < kLingerBytes) {
      auto [rec, n] = co_await socket_.async_read_some(asio::buffer(scratch), kUseTuple);
      if (rec) break;
      drained += n;
    }
    disarm();
  }

  asio::awaitable<void> serve_stream(std::shared_ptr<Session> self, Reply reply,
                                     unsigned version) {
    bhttp::response<bhttp::empty_body> header(std::move(reply.response.base()));
    header.version(version);
    header.keep_alive(false);
    header.chunked(true);
    bhttp::response_serializer<bhttp::empty_body> serializer(header);
    arm(Phase::writing, core_->limits.request_timeout);
    auto [ec, n] = co_await bhttp::async_write_header(socket_, serializer, kUseTuple);
    disarm();
    if (ec || gone()) {
      close();
      co_return;
    }
    streaming_ = true;
    ++core_->streams;
    // A watcher may stay for days: give back what reading the request took.
    buffer_.clear();
    buffer_.shrink_to_fit();
    // For write_now(): a send that would block returns at once instead.
    boost::system::error_code nb;
    socket_.non_blocking(true, nb);
    asio::co_spawn(socket_.get_executor(), watch_peer(self), asio::detached);
    auto callback = std::move(reply.stream);
    reply = Reply{};
    try {
      callback(self);
    } catch (const std::exception& e) {
      logger()->error("stream handler failed error={}", log::quote(e.what()));
      close();
    }
    callback = nullptr;
    co_await write_chunks();
    close();
  }

  using ChunkBuffers = std::array<asio::const_buffer, 3>;

  // The front chunk in chunked framing: size line, data, CRLF.
  ChunkBuffers frame_front() {
    static constexpr std::string_view kCrlf = "\r\n";
    const Chunk& chunk = queue_.front();
    const int len = std::snprintf(size_line_.data(), size_line_.size(), "%zx\r\n", chunk->size());
    return {asio::buffer(size_line_.data(), static_cast<std::size_t>(len)),
            asio::buffer(chunk->data(), chunk->size()), asio::buffer(kCrlf)};
  }

  // The writer is idle and one chunk is queued: most chunks fit the socket's buffer, so send it
  // now with one non-blocking send instead of a round trip through the writer coroutine. What
  // does not fit is left to the writer.
  void write_now() {
    const ChunkBuffers buffers = frame_front();
    boost::system::error_code ec;
    const std::size_t n = socket_.write_some(buffers, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      ec = {};
    } else if (ec) {
      close();
      return;
    }
    if (n == asio::buffer_size(buffers)) {
      queue_.pop_front();
      return;
    }
    front_sent_ = n;
    wake_.cancel();
  }

  asio::awaitable<void> write_chunks() {
    static constexpr std::string_view kLast = "0\r\n\r\n";
    while (!closed_) {
      if (queue_.empty()) {
        if (finishing_) {
          writing_ = true;
          arm(Phase::writing, core_->limits.request_timeout);
          co_await asio::async_write(socket_, asio::buffer(kLast), kUseTuple);
          disarm();
          writing_ = false;
          boost::system::error_code ignored;
          socket_.shutdown(asio::socket_base::shutdown_send, ignored);
          break;
        }
        wake_.expires_at(SteadyClock::time_point::max());
        co_await wake_.async_wait(kUseTuple);
        continue;
      }
      const Chunk chunk = queue_.front();  // held: close() may clear the queue meanwhile
      boost::beast::buffers_suffix<ChunkBuffers> rest(frame_front());
      rest.consume(front_sent_);
      writing_ = true;
      arm(Phase::writing, core_->limits.request_timeout);
      auto [ec, n] = co_await asio::async_write(socket_, rest, kUseTuple);
      disarm();
      writing_ = false;
      if (ec || closed_) break;
      front_sent_ = 0;
      queue_.pop_front();
    }
  }

  // A streaming client sends nothing more; end of file or an error means it has gone.
  asio::awaitable<void> watch_peer([[maybe_unused]] std::shared_ptr<Session> self) {
    std::array<char, 64> scratch;
    for (;;) {
      auto [ec, n] = co_await socket_.async_read_some(asio::buffer(scratch), kUseTuple);
      if (ec || closed_) break;
    }
    close();
  }

  void close() {
    if (closed_) return;
    auto self = this->shared_from_this();  // callbacks below may drop other owners
    closed_ = true;
    boost::system::error_code ec;
    socket_.close(ec);
    timer_.cancel();
    wake_.cancel();
    queue_.clear();
    if (streaming_) --core_->streams;
    core_->remove(it_);
    if (on_close_) {
      auto callback = std::move(on_close_);
      on_close_ = nullptr;
      callback();
    }
  }

  std::shared_ptr<ServerCore> core_;
  Socket socket_;
  asio::steady_timer timer_;  // the watchdog
  asio::steady_timer wake_;   // wakes the stream writer
  Peer peer_;
  boost::beast::flat_buffer buffer_;
  ServerCore::SessionList::iterator it_;

  Phase phase_{Phase::idle};
  SteadyClock::time_point deadline_{SteadyClock::time_point::max()};
  SteadyClock::time_point armed_{SteadyClock::time_point::max()};
  bool timed_out_{false};
  bool closed_{false};
  bool finishing_{false};
  bool streaming_{false};
  bool writing_{false};          // the writer coroutine has a write in flight
  std::size_t front_sent_{0};    // bytes of the front chunk's framing already sent
  std::array<char, 24> size_line_{};
  std::deque<Chunk> queue_;
  std::function<void()> on_close_;
};

template <class Protocol>
asio::awaitable<void> accept_loop(std::shared_ptr<ServerCore> core,
                                  typename Protocol::acceptor* acceptor) {
  for (;;) {
    auto [ec, socket] = co_await acceptor->async_accept(kUseTuple);
    if (core->stopped) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      logger()->warn("accept failed error={}", log::quote(ec.message()));
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
    auto session = std::make_shared<Session<Protocol>>(core, std::move(socket), std::move(peer));
    session->start();
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
