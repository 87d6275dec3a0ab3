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
// to the daemon's io_context, where the store lives and every decision is made.
//
// The daemon never links this: it loads it as the module certagent-sidecar.so (module.cpp,
// loader.h) only when workload_api.path is set. Tests and the benchmark link it directly.

#include "agent/sidecar/endpoint.h"

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

  class Impl;  // in the .cpp

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace certagent::sidecar
