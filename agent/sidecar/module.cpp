// certagent-sidecar.so: the sidecar API as a module the daemon loads only when workload_api.path
// is set. Its undefined symbols (the store, metrics, logging, Asio's compiled part) resolve to
// the daemon's own copies, which the certagent executable exports for it (agent/CMakeLists.txt),
// so there is one store, one logger registry and one locked-memory pool in the process.

#include "agent/sidecar/endpoint.h"
#include "agent/sidecar/sidecar_server.h"

extern "C" {

__attribute__((visibility("default"))) extern const char certagent_sidecar_module_version[] =
    CERTAGENT_VERSION;

__attribute__((visibility("default"))) certagent::sidecar::Endpoint* certagent_sidecar_create_v1(
    boost::asio::io_context& io, const certagent::config::WorkloadApiConfig& config,
    certagent::CertificateStore& store, certagent::Metrics& metrics,
    const certagent::Clock& clock) {
  return new certagent::sidecar::SidecarServer(io, config, store, metrics, clock);
}

}  // extern "C"

// The loader casts the symbol to this type: keep them one.
static_assert(std::is_same_v<decltype(&certagent_sidecar_create_v1),
                             certagent::sidecar::CreateFunction>);
