#pragma once
// The sidecar API (DESIGN.md "Sidecar API over gRPC"): Envoy SDS v3 and the SPIFFE Workload API
// over gRPC on workload_api.path, beside the HTTP socket API. docs/sidecar-api.md is the user's
// description; this is how it works.
//
// gRPC over HTTP/2 (h2c with prior knowledge, as gRPC clients speak it on a Unix socket) is
// served here, on the daemon's io_context thread, by our own HTTP/2 server framing (h2_frames.h,
// hpack.h: what a gRPC server needs of RFC 9113 and RFC 7541 — HEADERS/CONTINUATION with HPACK
// decoding, DATA with flow control both ways, SETTINGS, PING, RST_STREAM, GOAWAY, and the limits
// against floods, rapid resets and CONTINUATION floods that nghttp2 sets). This file also does
// gRPC's mapping (request headers, 5-byte message framing, trailers and Trailers-Only statuses)
// and the two APIs. The module starts no thread.
//
// The daemon accepts each connection itself and reads SO_PEERCRED/SO_PEERGROUPS before reading a
// byte; the connection keeps that caller, so authorization comes from the kernel, never from
// what the client sends.
//
// What a push costs: one serialisation per distinct content (shared by every stream that gets
// it; SDS adds its per-stream version and nonce as a small tail) and one sendmsg(2) per
// connection whose DATA frames point into those shared bytes (nothing copied unless the kernel
// will not take it all). Memory per stream: the call's state and the connection's (no frame
// buffer, no HPACK encoder table; the decoder's table holds what the client indexed); read and
// write buffers are shared by every connection.
//
// The daemon never links this: it loads it as the module certagent-sidecar.so (module.cpp,
// loader.h) only when workload_api.path is set. Tests and the benchmark link it directly.

#include "agent/sidecar/endpoint.h"
#include "core/http/server.h"

#include <boost/asio/local/stream_protocol.hpp>

#include <memory>

namespace certagent::sidecar {

class SidecarServer final : public Endpoint {
 public:
  // Everything referenced must outlive the server.
  SidecarServer(boost::asio::io_context& io, const config::WorkloadApiConfig& config,
                CertificateStore& store, Metrics& metrics, const Clock& clock);
  ~SidecarServer() override;  // stop()
  SidecarServer(const SidecarServer&) = delete;
  SidecarServer& operator=(const SidecarServer&) = delete;

  [[nodiscard]] Result<> start() override;
  void stop() override;
  std::size_t streams() const override;
  // Open connections.
  std::size_t connections() const;
  // Serves a connection accepted elsewhere as `peer`'s (the fuzz harness: one end of a
  // socketpair, as a caller that may not have every key). On the io_context thread, after
  // start(); the same limits as an accepted connection.
  void serve(boost::asio::local::stream_protocol::socket socket, http::Peer peer);

  class Impl;  // in the .cpp

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace certagent::sidecar
