// The sidecar API's gRPC server as a client sees it: a real SidecarServer (its own HTTP/2 and HPACK,
// gRPC framing, protobuf requests, SDS and the Workload API) driven on this thread. Each input is
// the bytes of one connection (from the HTTP/2 preface on: the seed corpus holds what python3-grpcio
// and grpc-go send), written into one end of a socketpair whose other end the server serves as
// uid 4242, which may have "web" and not "db". Then the client half-closes and reads until the
// server closes.
// Invariants: the server closes the connection within the deadline; what it sends is HTTP/2 (a
// SETTINGS frame first, then well-formed frames whose header blocks HPACK-decode, with a gRPC
// status or HTTP 415 where there is one; no more DATA, nor larger frames, than the client's
// windows and SETTINGS let through); db's private key never travels (PEM or DER); once the
// connection is gone, no stream or connection is left behind.

#include "agent/metrics.h"
#include "agent/sidecar/content.h"
#include "agent/sidecar/sidecar_server.h"
#include "agent/store.h"
#include "core/clock.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "renewers/local_renewer.h"
#include "tests/fuzz/fuzz_material.h"
#include "tests/fuzz/fuzz_util.h"

#include <nghttp2/nghttp2.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace certagent;

namespace {

struct Harness {
  fs::path dir;
  ManualClock clock{std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now())};
  CertificateStore store;
  Metrics metrics;
  boost::asio::io_context io;
  std::unique_ptr<sidecar::SidecarServer> server;
  std::string db_key_pem;  // what uid 4242 may never receive
  std::string db_key_der;
  std::string web_key_line, db_key_line;  // a line of each key's base64: never in a status
};
Harness* harness = nullptr;

void remove_dir() {
  std::error_code ec;
  if (harness) fs::remove_all(harness->dir, ec);
}

// Handlers run: a round of polling, or of waiting up to 1 ms for one.
std::size_t run_io() {
  harness->io.restart();
  const std::size_t n = harness->io.poll();
  return n != 0 ? n : harness->io.run_one_for(1ms);
}

std::uint32_t be(const unsigned char* p, int n) {
  std::uint32_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | p[i];
  return v;
}

// What the client's frames let the server send (an upper bound: the largest initial window any
// SETTINGS named, plus every WINDOW_UPDATE), and the largest frame it allowed.
struct ClientWindows {
  std::uint64_t initial{65535};
  std::uint32_t max_frame{16384};
  std::map<std::uint32_t, std::uint64_t> increments;  // stream (0: the connection) -> sum
};

ClientWindows client_windows(std::string_view in) {
  ClientWindows w;
  constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  if (in.substr(0, kPreface.size()) != kPreface) return w;
  std::size_t at = kPreface.size();
  while (in.size() - at >= 9) {
    const auto* h = reinterpret_cast<const unsigned char*>(in.data() + at);
    const std::uint32_t len = be(h, 3);
    const std::uint32_t stream = be(h + 5, 4) & 0x7fffffffu;
    if (in.size() - at - 9 < len) break;
    const auto* p = h + 9;
    if (h[3] == NGHTTP2_SETTINGS && !(h[4] & NGHTTP2_FLAG_ACK)) {
      for (std::uint32_t i = 0; i + 6 <= len; i += 6) {
        const std::uint32_t id = be(p + i, 2);
        const std::uint32_t value = be(p + i + 2, 4);
        if (id == NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE) w.initial = std::max<std::uint64_t>(w.initial, value);
        if (id == NGHTTP2_SETTINGS_MAX_FRAME_SIZE) w.max_frame = std::max(w.max_frame, value);
      }
    } else if (h[3] == NGHTTP2_WINDOW_UPDATE && len == 4) {
      w.increments[stream] += be(p, 4) & 0x7fffffffu;
    }
    at += 9 + len;
  }
  return w;
}

// Everything the server sent: HTTP/2 frames, header blocks that decode, DATA per stream within
// the client's flow-control windows.
void check_output(std::string_view out, const ClientWindows& windows) {
  nghttp2_hd_inflater* inflater = nullptr;
  FUZZ_REQUIRE(nghttp2_hd_inflate_new(&inflater) == 0, "inflater");
  std::map<std::uint32_t, std::string> data;  // stream -> DATA payloads, in order
  std::string block;                            // a header block being gathered (CONTINUATION)
  std::uint32_t block_stream = 0;
  bool first = true;
  std::size_t at = 0;
  while (out.size() - at >= 9) {
    const auto* h = reinterpret_cast<const unsigned char*>(out.data() + at);
    const std::uint32_t len = be(h, 3);
    const unsigned type = h[3];
    const unsigned flags = h[4];
    const std::uint32_t stream = be(h + 5, 4) & 0x7fffffffu;
    if (out.size() - at - 9 < len) break;  // cut off by the close: only the last frame may be
    std::string_view payload(out.data() + at + 9, len);
    at += 9 + len;
    if (first) {
      FUZZ_REQUIRE(type == NGHTTP2_SETTINGS && stream == 0 && !(flags & NGHTTP2_FLAG_ACK),
                   "the server's first frame is not its SETTINGS");
      first = false;
    }
    FUZZ_REQUIRE(type <= NGHTTP2_CONTINUATION, "an unknown frame type " + std::to_string(type));
    FUZZ_REQUIRE(block.empty() || (type == NGHTTP2_CONTINUATION && stream == block_stream),
                 "a header block interrupted");
    switch (type) {
      case NGHTTP2_DATA:
      case NGHTTP2_HEADERS: {
        FUZZ_REQUIRE(stream != 0 && stream % 2 == 1, "a response on stream " + std::to_string(stream));
        std::size_t pad = 0;
        if (flags & NGHTTP2_FLAG_PADDED) {
          FUZZ_REQUIRE(!payload.empty(), "padding");
          pad = static_cast<unsigned char>(payload[0]);
          payload.remove_prefix(1);
          FUZZ_REQUIRE(pad <= payload.size(), "padding longer than the frame");
          payload.remove_suffix(pad);
        }
        if (type == NGHTTP2_DATA) {
          FUZZ_REQUIRE(len <= windows.max_frame, "a DATA frame larger than the client allows");
          data[stream].append(payload);
          break;
        }
        if (flags & NGHTTP2_FLAG_PRIORITY) {
          FUZZ_REQUIRE(payload.size() >= 5, "priority");
          payload.remove_prefix(5);
        }
        block.assign(payload);
        block_stream = stream;
        [[fallthrough]];
      }
      case NGHTTP2_CONTINUATION: {
        if (type == NGHTTP2_CONTINUATION) {
          FUZZ_REQUIRE(stream == block_stream && block_stream != 0, "a CONTINUATION out of place");
          block.append(payload);
        }
        if (!(flags & NGHTTP2_FLAG_END_HEADERS)) break;
        const auto* in = reinterpret_cast<const std::uint8_t*>(block.data());
        std::size_t left = block.size();
        std::map<std::string, std::string> headers;
        for (;;) {
          nghttp2_nv nv;
          int inflate_flags = 0;
          const auto n = nghttp2_hd_inflate_hd2(inflater, &nv, &inflate_flags, in, left, 1);
          FUZZ_REQUIRE(n >= 0, "a header block that does not decode");
          in += n;
          left -= static_cast<std::size_t>(n);
          if (inflate_flags & NGHTTP2_HD_INFLATE_EMIT) {
            headers[std::string(reinterpret_cast<const char*>(nv.name), nv.namelen)] =
                std::string(reinterpret_cast<const char*>(nv.value), nv.valuelen);
          }
          if (inflate_flags & NGHTTP2_HD_INFLATE_FINAL) {
            nghttp2_hd_inflate_end_headers(inflater);
            break;
          }
          if (n == 0 && left == 0) break;
        }
        if (auto it = headers.find(":status"); it != headers.end()) {
          FUZZ_REQUIRE(it->second == "200" || it->second == "415", "status " + it->second);
        }
        if (auto it = headers.find("grpc-status"); it != headers.end()) {
          const int code = std::atoi(it->second.c_str());
          FUZZ_REQUIRE(code >= 0 && code <= 16 && std::to_string(code) == it->second,
                       "grpc-status " + it->second);
        }
        if (auto it = headers.find("grpc-message"); it != headers.end()) {
          // Key material never goes into a status (the client's own bytes may be quoted back).
          for (const auto& key : {harness->web_key_line, harness->db_key_line}) {
            FUZZ_REQUIRE(it->second.find(key) == std::string::npos, "a key in a status");
          }
        }
        block.clear();
        block_stream = 0;
        break;
      }
      case NGHTTP2_SETTINGS:
      case NGHTTP2_PING:
      case NGHTTP2_GOAWAY:
        FUZZ_REQUIRE(stream == 0, "a connection frame on a stream");
        break;
      case NGHTTP2_RST_STREAM:
      case NGHTTP2_WINDOW_UPDATE:
      case NGHTTP2_PRIORITY:
        break;
      case NGHTTP2_PUSH_PROMISE:
        FUZZ_REQUIRE(false, "a server push");
        break;
    }
  }
  nghttp2_hd_inflate_del(inflater);
  std::uint64_t total = 0;
  for (const auto& [stream, bytes] : data) {
    total += bytes.size();
    const auto inc = windows.increments.find(stream);
    FUZZ_REQUIRE(bytes.size() <= windows.initial + (inc == windows.increments.end() ? 0 : inc->second),
                 "more DATA on a stream than its window let through");
    FUZZ_REQUIRE(bytes.find(harness->db_key_pem) == std::string::npos, "db's key (PEM) was sent");
    FUZZ_REQUIRE(bytes.find(harness->db_key_der) == std::string::npos, "db's key (DER) was sent");
  }
  const auto conn = windows.increments.find(0);
  FUZZ_REQUIRE(total <= 65535 + (conn == windows.increments.end() ? 0 : conn->second),
               "more DATA than the connection's window let through");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logging();
  harness = new Harness;
  std::string dir = (fs::temp_directory_path() / "certagent-fuzz-sidecar-XXXXXX").string();
  FUZZ_REQUIRE(::mkdtemp(dir.data()) != nullptr, "mkdtemp");
  harness->dir = dir;
  std::atexit(remove_dir);

  harness->store.configure({certagent::fuzz::cert_config("web", {4242}, "spiffe://example.org/web"),
                            certagent::fuzz::cert_config("db", {}, "spiffe://example.org/db")});
  auto web = certagent::fuzz::make_material(harness->dir / "ca", harness->clock, "web");
  auto db = certagent::fuzz::make_material(harness->dir / "ca", harness->clock, "db");
  harness->db_key_pem = std::string(db->key_pem.view());
  auto second_line = [](std::string_view pem) {
    const auto a = pem.find('\n') + 1;
    return std::string(pem.substr(a, pem.find('\n', a) - a));
  };
  harness->web_key_line = second_line(web->key_pem.view());
  harness->db_key_line = second_line(db->key_pem.view());
  auto der = sidecar::pem_key_to_der(db->key_pem.view());
  FUZZ_REQUIRE(der.has_value(), "db key DER");
  harness->db_key_der = std::string(der->view());
  harness->store.find("web")->trust_bundle_pem = web->cert_pem;
  harness->store.find("db")->trust_bundle_pem = db->cert_pem;
  harness->store.commit("web", web, harness->clock.now());
  harness->store.commit("db", db, harness->clock.now());

  config::WorkloadApiConfig config;
  config.path = harness->dir / "workload.sock";
  config.mode = 0600;
  config.max_connections = 8;
  config.max_streams_per_uid = 32;
  config.calls_per_second = 1'000'000;
  harness->server = std::make_unique<sidecar::SidecarServer>(harness->io, config, harness->store,
                                                            harness->metrics, harness->clock);
  auto started = harness->server->start();
  FUZZ_REQUIRE(started.has_value(), started ? "" : started.error().message);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 128 * 1024) return 0;
  int fds[2];
  FUZZ_REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0, "socketpair");
  const int fd = fds[0];
  http::Peer peer;
  peer.known = true;
  peer.pid = ::getpid();
  peer.uid = 4242;
  peer.gid = 4242;
  harness->server->serve(
      boost::asio::local::stream_protocol::socket(harness->io, boost::asio::local::stream_protocol(), fds[1]),
      peer);

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
      } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        sending = false;  // the server closed
      }
    }
    if (sending && sent == size) {
      ::shutdown(fd, SHUT_WR);
      sending = false;
    }
    if (run_io() != 0) progress = true;
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        out.append(buf, static_cast<std::size_t>(n));
        progress = true;
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) eof = true;
      break;
    }
    FUZZ_REQUIRE(limit.round(progress), "the server kept the connection open, doing nothing");
  }
  ::close(fd);
  for (int i = 0; i < 100 && (harness->server->connections() != 0 || harness->server->streams() != 0); ++i) {
    run_io();
  }
  FUZZ_REQUIRE(harness->server->connections() == 0, "a connection outlived its socket");
  FUZZ_REQUIRE(harness->server->streams() == 0, "a stream outlived its connection");
  check_output(out, client_windows(std::string_view(reinterpret_cast<const char*>(data), size)));
  return 0;
}
