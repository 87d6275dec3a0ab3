// The socket API as a client sees it: a real SocketServer (HTTP/1.1 request parser, router,
// fetch, list, renew, health, metrics and the watch stream) on a real Unix socket, driven on this
// thread. Each input is sent as the bytes of one connection (keep-alive: it may hold several
// requests, chunked bodies, a watch), then the client half-closes and reads until the server
// closes.
// The same bytes then go to the metrics listener (metrics.listen: the same HTTP server code
// on TCP, with /metrics, /healthz and /readyz only).
// Invariants: the server closes the connection within the deadline; everything it sends parses
// as HTTP/1.1 responses with an expected status; a private key only ever travels in a 200 on
// the socket, and never from the metrics listener, which serves no certificate either; when
// the connection is gone, no session or watcher is left behind.

#include "agent/metrics.h"
#include "agent/socket_server.h"
#include "agent/store.h"
#include "core/clock.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "renewers/local_renewer.h"
#include "tests/fuzz/fuzz_material.h"
#include "tests/fuzz/fuzz_util.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

namespace fs = std::filesystem;
namespace bhttp = boost::beast::http;
using namespace std::chrono_literals;
using namespace certagent;

namespace {

struct Harness {
  fs::path dir;
  ManualClock clock{std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now())};
  CertificateStore store;
  Metrics metrics;
  boost::asio::io_context io;
  std::unique_ptr<SocketServer> server;
  std::unique_ptr<MetricsListener> metrics_listener;
  fs::path path;
  sockaddr_in metrics_addr{};
};
Harness* harness = nullptr;

void remove_dir() {
  std::error_code ec;
  if (harness) fs::remove_all(harness->dir, ec);
}

// Everything the server sent, as HTTP/1.1 responses.
void check_responses(std::string_view out, bool metrics_listener) {
  static const std::set<unsigned> kExpected = {200, 202, 400, 403, 404, 405, 408, 413, 431, 500, 503};
  if (metrics_listener) {
    FUZZ_REQUIRE(out.find("PRIVATE KEY") == std::string_view::npos, "a key from the metrics listener");
    FUZZ_REQUIRE(out.find("BEGIN CERTIFICATE") == std::string_view::npos, "a certificate from the metrics listener");
  }
  while (!out.empty()) {
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(16 * 1024 * 1024);
    boost::system::error_code ec;
    std::size_t used = 0;
    while (!parser.is_done()) {
      const std::size_t n = parser.put(boost::asio::buffer(out.data() + used, out.size() - used), ec);
      used += n;
      if (ec) break;  // need_more: everything left was offered
    }
    if (!parser.is_done() && (!ec || ec == bhttp::error::need_more)) parser.put_eof(ec);
    // A watch stream ends without its last chunk when the client leaves (this client half-closes
    // after sending): the only response that may be cut short.
    const bool cut_stream = ec == bhttp::error::partial_message && parser.is_header_done() && parser.chunked();
    FUZZ_REQUIRE(!ec || cut_stream,
                 "the server sent something that is not an HTTP response: " + ec.message() + "\n" +
                     std::to_string(used) + "/" + std::to_string(out.size()) + " bytes:\n" + std::string(out.substr(0, 400)));
    const auto& res = parser.get();
    FUZZ_REQUIRE(kExpected.count(res.result_int()) == 1, "unexpected status " + std::to_string(res.result_int()));
    FUZZ_REQUIRE(!metrics_listener || (res.result_int() != 202 && res.result_int() != 403),
                 "the metrics listener answered " + std::to_string(res.result_int()));
    if (res.result_int() != 200) {
      FUZZ_REQUIRE(res.body().find("PRIVATE KEY") == std::string::npos, "a key in an error answer");
    }
    if (used == 0 || cut_stream) break;  // a cut stream was the last thing on the connection
    out.remove_prefix(used);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logging();
  harness = new Harness;
  std::string dir = (fs::temp_directory_path() / "certagent-fuzz-socket-XXXXXX").string();
  FUZZ_REQUIRE(::mkdtemp(dir.data()) != nullptr, "mkdtemp");
  harness->dir = dir;
  std::atexit(remove_dir);

  harness->store.configure({certagent::fuzz::cert_config("web", {4242}), certagent::fuzz::cert_config("db", {})});
  harness->store.set_renewal_handler([](const std::string&) {});
  harness->store.commit("web", certagent::fuzz::make_material(harness->dir / "ca", harness->clock, "web"), harness->clock.now());

  config::SocketConfig config;
  config.path = harness->dir / "agent.sock";
  config.mode = 0600;
  config.admin_uids = {4242};
  config.max_connections = 8;
  config.max_watchers = 4;
  config.max_header_bytes = 8192;
  config.request_timeout = 2s;
  harness->server = std::make_unique<SocketServer>(harness->io, config, harness->store, harness->metrics,
                                                   harness->clock, [] { return true; });
  auto started = harness->server->start();
  FUZZ_REQUIRE(started.has_value(), started ? "" : started.error().message);
  harness->path = config.path;

  harness->metrics_listener = std::make_unique<MetricsListener>(harness->io, "127.0.0.1:0", harness->store,
                                                                harness->metrics, harness->clock, [] { return true; });
  auto listening = harness->metrics_listener->start();
  FUZZ_REQUIRE(listening.has_value(), listening ? "" : listening.error().message);
  FUZZ_REQUIRE(harness->metrics_listener->endpoint().has_value(), "metrics endpoint");
  harness->metrics_addr.sin_family = AF_INET;
  harness->metrics_addr.sin_port = htons(harness->metrics_listener->endpoint()->port());
  harness->metrics_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return 0;
}

// Sends the input as one connection's bytes, half-closes, and returns all the server sent.
static std::string exchange(const std::uint8_t* data, std::size_t size, bool metrics_listener) {
  const int fd = ::socket(metrics_listener ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  FUZZ_REQUIRE(fd >= 0, "socket");
  if (metrics_listener) {
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&harness->metrics_addr), sizeof harness->metrics_addr);
    FUZZ_REQUIRE(rc == 0 || errno == EINPROGRESS, "connect to the metrics listener");
  } else {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, harness->path.c_str(), sizeof addr.sun_path - 1);
    FUZZ_REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0, "connect");
  }

  std::string out;
  std::size_t sent = 0;
  bool sending = true;
  bool eof = false;
  fuzz::IdleLimit limit;
  char buf[16384];
  while (!eof) {
    bool progress = false;
    if (sending && sent < size) {
      const ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<std::size_t>(n);
        progress = true;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINPROGRESS && errno != ENOTCONN) {
        sending = false;
      }
    }
    if (sending && sent == size) {
      if (::shutdown(fd, SHUT_WR) == 0 || errno != ENOTCONN) sending = false;
    }
    harness->io.restart();
    if (harness->io.poll() != 0 || harness->io.run_one_for(1ms) != 0) progress = true;
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        out.append(buf, static_cast<std::size_t>(n));
        progress = true;
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN)) eof = true;
      break;
    }
    FUZZ_REQUIRE(limit.round(progress), "the server kept the connection open, doing nothing");
  }
  ::close(fd);
  return out;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 128 * 1024) return 0;
  const std::string out = exchange(data, size, false);
  // Let the server notice and clean up.
  for (int i = 0; i < 100 && (harness->server->connections() != 0 || harness->server->watchers() != 0); ++i) {
    harness->io.restart();
    if (harness->io.poll() == 0) harness->io.run_one_for(1ms);
  }
  FUZZ_REQUIRE(harness->server->connections() == 0, "a session outlived its connection");
  FUZZ_REQUIRE(harness->server->watchers() == 0, "a watcher outlived its connection");
  check_responses(out, false);

  const std::string metrics_out = exchange(data, size, true);
  for (int i = 0; i < 100 && harness->metrics_listener->connections() != 0; ++i) {
    harness->io.restart();
    if (harness->io.poll() == 0) harness->io.run_one_for(1ms);
  }
  FUZZ_REQUIRE(harness->metrics_listener->connections() == 0, "a metrics session outlived its connection");
  check_responses(metrics_out, true);
  return 0;
}
