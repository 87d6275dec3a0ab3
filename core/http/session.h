#pragma once
// Internal to the HTTP server (server.cpp and session.cpp): the state the server shares with its
// connections, and how an accepted connection is handed over. Not for other code.

#include "core/http/server.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <cstddef>
#include <list>
#include <memory>
#include <string_view>
#include <vector>

namespace certagent::http::detail {

using local = asio::local::stream_protocol;
using tcp = asio::ip::tcp;

// A connection as the server sees it: a response stream it can shut down at stop().
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

// Serves one accepted connection until it closes: reads requests in a loop, answers each, or
// turns into a chunked stream. The session registers itself with `core` and owns itself.
void start_session(std::shared_ptr<ServerCore> core, local::socket socket, Peer peer);
void start_session(std::shared_ptr<ServerCore> core, tcp::socket socket, Peer peer);

}  // namespace certagent::http::detail
