#pragma once
// The sidecar API (DESIGN.md "Sidecar API over gRPC"): Envoy SDS v3 and the SPIFFE Workload API
// over gRPC on workload_api.path, beside the HTTP socket API. docs/sidecar-api.md is the user's
// description; this is how it works.
//
// The daemon accepts each connection itself, reads SO_PEERCRED/SO_PEERGROUPS, and only then hands
// the file descriptor to gRPC (grpc::AddInsecureChannelFromFd). A call finds its caller through
// the connection it arrived on (ServerContext::peer() is "fd:<n>" for such a connection), so
// authorization comes from the kernel, never from what the client sends.
//
// Threads: gRPC runs its reactions on its own threads; they only take a stream's lock and post
// to the daemon's io_context, where the store lives and every decision is made. Nothing of gRPC
// is started (no threads, no grpc_init) unless workload_api.path is set.

#include "agent/metrics.h"
#include "agent/store.h"
#include "core/clock.h"
#include "core/config/config.h"
#include "core/result.h"

#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <memory>

namespace certagent::sidecar {

class SidecarServer {
 public:
  // Everything referenced must outlive the server.
  SidecarServer(boost::asio::io_context& io, const config::WorkloadApiConfig& config,
                CertificateStore& store, Metrics& metrics, const Clock& clock);
  ~SidecarServer();  // stop()
  SidecarServer(const SidecarServer&) = delete;
  SidecarServer& operator=(const SidecarServer&) = delete;

  // Creates workload_api.path (as socket.path is created) and starts gRPC. An empty path:
  // nothing to serve, returns success.
  [[nodiscard]] Result<> start();
  // Ends every stream (UNAVAILABLE), stops gRPC and removes the socket file. Blocks until gRPC
  // has let go of every call.
  void stop();

  // Open streams (SDS and Workload API), as the io_context thread sees them.
  std::size_t streams() const;

  class Impl;  // in the .cpp

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace certagent::sidecar
