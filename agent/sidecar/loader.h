#pragma once
// Loads the sidecar API module (certagent-sidecar.so, agent/sidecar/endpoint.h) for the daemon.
// The daemon links no HTTP/2 or protobuf code: only a configured workload_api.path loads the
// module, and with it libnghttp2 and protobuf (no thread). Loaded once, never unloaded
// (protobuf's globals outlive any one endpoint).

#include "agent/sidecar/endpoint.h"

#include <filesystem>
#include <memory>

namespace certagent::sidecar {

// Where the daemon looks for the module: beside the executable's install prefix
// (<bin>/../lib/certagent/certagent-sidecar.so; the build tree has the same layout).
std::filesystem::path module_path();

// A new endpoint from the module, or an error that names the file and what went wrong (not
// installed, unreadable, another version, a missing symbol).
[[nodiscard]] Result<std::unique_ptr<Endpoint>> load_endpoint(
    boost::asio::io_context& io, const config::WorkloadApiConfig& config, CertificateStore& store,
    Metrics& metrics, const Clock& clock);

}  // namespace certagent::sidecar
