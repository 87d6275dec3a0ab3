#pragma once
// The sidecar API as the daemon sees it: an endpoint it starts and stops. The implementation
// (sidecar_server.*: gRPC's HTTP/2 mapping on libnghttp2, protobuf) is built as a module,
// certagent-sidecar.so, that the daemon dlopen()s only when workload_api.path is set
// (agent/sidecar/loader.h): without it, neither library is even mapped. No such header here.

#include "agent/metrics.h"
#include "agent/store.h"
#include "core/clock.h"
#include "core/config/config.h"
#include "core/result.h"

#include <boost/asio/io_context.hpp>

#include <cstddef>

namespace certagent::sidecar {

class Endpoint {
 public:
  virtual ~Endpoint() = default;
  // Creates workload_api.path (as socket.path is created) and serves it on the io_context. An
  // empty path: nothing to serve, returns success.
  [[nodiscard]] virtual Result<> start() = 0;
  // Ends every stream (UNAVAILABLE), sends each connection a GOAWAY and closes it, and removes
  // the socket file. Call on the io_context thread; it does not block.
  virtual void stop() = 0;
  // Open streams (SDS and Workload API), as the io_context thread sees them.
  virtual std::size_t streams() const = 0;
};

// What the module exports (extern "C", so dlsym finds it by this name): a new endpoint, whose
// references must outlive it. The daemon and the module are built from one tree; the module
// also exports kModuleVersionSymbol, the project version, which the loader checks first.
inline constexpr const char* kCreateSymbol = "certagent_sidecar_create_v1";
inline constexpr const char* kModuleVersionSymbol = "certagent_sidecar_module_version";
using CreateFunction = Endpoint* (*)(boost::asio::io_context& io,
                                     const config::WorkloadApiConfig& config,
                                     CertificateStore& store, Metrics& metrics,
                                     const Clock& clock);

}  // namespace certagent::sidecar
