#include "tpm/identity.h"

#include "core/config/config.h"
#include "tpm/backends.h"
#include "tpm/file_identity.h"
#include "tpm/tpm_device.h"
#include "tpm/tpm_identity.h"

namespace certagent::tpm {

Result<OpenedIdentity> open_backend(const config::Config& config, OpenMode mode) {
  const std::string& backend = config.identity.backend;
  if (backend == "tpm") {
    // At boot the device node may come after us (a driver loaded late): wait for it while the
    // firmware announces a TPM; without one, say so at once.
    if (auto device = wait_for_tpm_device(config.identity.tcti); !device) return device.error();
    auto id = TpmIdentity::open({identity_dir(config), config.identity.tcti, enroll_hint(config)}, mode);
    if (!id) return id.error();
    const bool created = (*id)->created();
    return OpenedIdentity{std::move(*id), created};
  }
  if (backend == "file") {
    auto id = FileIdentity::open({identity_dir(config), enroll_hint(config)}, mode);
    if (!id) return id.error();
    const bool created = (*id)->created();
    return OpenedIdentity{std::move(*id), created};
  }
  Error e = make_error("identity.backend \"" + backend + "\" is unknown: expected tpm or file");
  e.configuration = true;
  return e;
}

Result<std::unique_ptr<Identity>> open_identity(const config::Config& config) {
  auto opened = open_backend(config, OpenMode::existing);
  if (!opened) return opened.error();
  return std::move(opened->identity);
}

Result<std::unique_ptr<Identity>> enroll_identity(const config::Config& config) {
  auto opened = open_backend(config, OpenMode::create_if_missing);
  if (!opened) return opened.error();
  return std::move(opened->identity);
}

}  // namespace certagent::tpm
