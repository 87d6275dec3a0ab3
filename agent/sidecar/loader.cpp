#include "agent/sidecar/loader.h"

#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <system_error>

namespace certagent::sidecar {

namespace {

// The module's place relative to the executable (CMake computes it from the install layout).
constexpr const char* kRelativePath = CERTAGENT_SIDECAR_MODULE_RELPATH;

struct Loaded {
  CreateFunction create{nullptr};
  std::string error;
};

// dlopen once for the process; a failure is remembered too (the file does not appear between
// two SIGHUPs: workload_api changes take effect at restart anyway).
const Loaded& load_once() {
  static std::once_flag once;
  static Loaded loaded;
  std::call_once(once, [] {
    const auto path = module_path();
    const std::string where = "the sidecar API module " + path.string();
    // RTLD_NOW: a missing symbol is an error here, not a crash at the first call. RTLD_LOCAL:
    // gRPC's and protobuf's symbols stay out of the global scope.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* why = ::dlerror();
      std::error_code ec;
      const bool present = std::filesystem::exists(path, ec);
      loaded.error = where + (present ? " cannot be loaded: " : " is not installed: ") +
                     (why ? why : "dlopen failed") +
                     " (workload_api needs it; it ships in the certagent package)";
      return;
    }
    const auto* version = static_cast<const char*>(::dlsym(handle, kModuleVersionSymbol));
    if (!version || std::strcmp(version, CERTAGENT_VERSION) != 0) {
      loaded.error = where + " is version " + (version ? version : "unknown") +
                     ", this certagent is " + CERTAGENT_VERSION +
                     ": install the module from the same package";
      return;  // never unloaded: a half-initialised library is not worth the risk
    }
    void* create = ::dlsym(handle, kCreateSymbol);
    if (!create) {
      loaded.error = where + " has no " + kCreateSymbol;
      return;
    }
    loaded.create = reinterpret_cast<CreateFunction>(create);
  });
  return loaded;
}

}  // namespace

std::filesystem::path module_path() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return std::filesystem::path("/usr/bin") / kRelativePath;  // never on Linux with /proc
  return (exe.parent_path() / kRelativePath).lexically_normal();
}

Result<std::unique_ptr<Endpoint>> load_endpoint(boost::asio::io_context& io,
                                                const config::WorkloadApiConfig& config,
                                                CertificateStore& store, Metrics& metrics,
                                                const Clock& clock) {
  const auto& loaded = load_once();
  if (!loaded.create) return make_error(loaded.error);
  std::unique_ptr<Endpoint> endpoint(loaded.create(io, config, store, metrics, clock));
  if (!endpoint) return make_error("the sidecar API module returned no endpoint");
  return endpoint;
}

}  // namespace certagent::sidecar
