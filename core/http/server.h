#pragma once
// A small HTTP/1.1 server on Boost.Beast for the daemon's Unix socket API and its TCP metrics
// listener. One implementation over both protocols (`local::stream_protocol`, `ip::tcp`), run on
// the caller's io_context: everything here, handlers included, runs on that one thread.
//
// Per connection: the whole request (header and body) must arrive within `request_timeout`
// (a slow or silent client gets 408 if it got some bytes out, else is closed); header larger than
// `max_header_bytes` -> 431; body larger than `max_body_bytes` -> 413; anything unparsable -> 400;
// after any of these the connection closes and the server carries on. Keep-alive is honoured.
// Beyond `max_connections` a new connection gets a canned 503 and is closed at once; streams
// do not count against it (the handler bounds them, e.g. socket.max_watchers).
//
// A handler answers with a plain response or with a chunked stream (watch): the stream outlives
// the handler call; the handler writes chunks later and learns when the client went away.

#include "core/result.h"
#include "core/secret.h"

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::http {

namespace detail {
class ServerCore;
}

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;

using Request = bhttp::request<bhttp::string_body>;
using Response = bhttp::response<bhttp::string_body>;

// The process on the other end of a Unix socket, from SO_PEERCRED and SO_PEERGROUPS at accept
// time (what the kernel recorded at connect(), so it cannot be spoofed by the client).
struct Peer {
  bool known{false};          // false over TCP
  pid_t pid{0};
  uid_t uid{static_cast<uid_t>(-1)};
  gid_t gid{static_cast<gid_t>(-1)};
  std::vector<gid_t> groups;  // supplementary groups

  // The effective gid or one of the supplementary groups.
  bool in_group(gid_t g) const;
};

// One piece of a streamed response. Shared between many streams (one serialization for every
// watcher) and wiped when the last holder lets go, since a bundle holds a private key.
using Chunk = std::shared_ptr<const Secret>;

// A chunked response in progress. Use it on the io_context thread only.
class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  // Queues a chunk (empty chunks are ignored). False when the stream is closed. A client that
  // lets more than Limits::max_queued_chunks pile up, or does not take a chunk within
  // request_timeout, is disconnected.
  virtual bool write(Chunk chunk) = 0;
  // Sends the last chunk after the queued ones, then closes the connection.
  virtual void finish() = 0;
  virtual bool closed() const = 0;
  // Runs once when the stream ends for any reason (client gone, write failed, finish, stop);
  // at once if it has already ended. Replaces an earlier callback.
  virtual void on_close(std::function<void()> callback) = 0;
  virtual const Peer& peer() const = 0;
};

struct Reply {
  Response response;
  bool sensitive{false};  // the body holds key material: wiped once it has been sent
  // Set: the body is the first secret_body_size bytes of this chunk (response.body() is
  // ignored), sent from where it lies: a key bundle is never copied out of locked memory.
  Chunk secret_body;
  std::size_t secret_body_size{0};
  // Set: the answer is a chunked stream. `response` gives the status and header fields (its body
  // is ignored); the callback receives the stream once the header has been sent.
  std::function<void(std::shared_ptr<ResponseStream>)> stream;
};

using Handler = std::function<Reply(const Request&, const Peer&)>;

struct Limits {
  std::size_t max_connections{256};  // open connections that are not streaming
  std::size_t max_header_bytes{8192};
  std::size_t max_body_bytes{64 * 1024};
  // Whole request (header and body) from its first byte, or from the end of the previous
  // response on a kept-alive connection; also each response write.
  std::chrono::milliseconds request_timeout{std::chrono::seconds(10)};
  std::size_t max_queued_chunks{16};
};

// Server events, for metrics. Called on the io_context thread.
struct Hooks {
  std::function<void(std::size_t open)> connections;  // the number of open connections changed
  // A connection or request refused: max_connections, bad_request, header_too_large,
  // body_too_large, timeout.
  std::function<void(std::string_view reason)> rejected;
};

class Server {
 public:
  Server(asio::io_context& io, Limits limits, Handler handler, Hooks hooks = {});
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Starts accepting on a bound, listening acceptor (several may be served).
  void serve(asio::local::stream_protocol::acceptor acceptor);
  void serve(asio::ip::tcp::acceptor acceptor);

  // Closes every acceptor and every connection; streams see on_close. Handlers are not called
  // after this returns. Idempotent.
  void stop();

  std::size_t connections() const;

 private:
  std::shared_ptr<detail::ServerCore> core_;
};

// A bound, listening TCP acceptor for "host:port" ("127.0.0.1:9464", "[::1]:9464",
// "localhost:0"); port 0 picks a free one.
[[nodiscard]] Result<asio::ip::tcp::acceptor> listen_tcp(asio::io_context& io,
                                                        std::string_view host_port);

// Response helpers: keep-alive and content length are set by the server.
Reply make_reply(bhttp::status status, std::string_view content_type, std::string body);
Reply json_reply(bhttp::status status, std::string body);
// {"error":"<code>"} with the given status.
Reply error_reply(bhttp::status status, std::string_view code);

}  // namespace certagent::http
