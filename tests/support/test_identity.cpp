#include "tests/support/test_identity.h"

#include "tpm/file_identity.h"
#include "tpm/tpm_identity.h"

#include <stdexcept>

namespace certagent::test {

TestIdentity::TestIdentity(IdentityKind kind, const fs::path& dir) {
  fs::create_directories(dir / "identity");
  if (kind == IdentityKind::tpm) {
    swtpm_.emplace(dir / "tpm");
    tcti_ = swtpm_->tcti();
    auto id = tpm::TpmIdentity::open(tpm::TpmIdentityOptions{.dir = dir / "identity", .tcti = tcti_},
                                     tpm::OpenMode::create_if_missing);
    if (!id) throw std::runtime_error("TPM identity: " + id.error().message);
    identity_ = std::move(*id);
  } else {
    auto id = tpm::FileIdentity::open(tpm::FileIdentityOptions{.dir = dir / "identity"},
                                      tpm::OpenMode::create_if_missing);
    if (!id) throw std::runtime_error("file identity: " + id.error().message);
    identity_ = std::move(*id);
  }
}

TestIdentity::~TestIdentity() {
  identity_.reset();  // closes the TPM connection before swtpm goes
  swtpm_.reset();
}

}  // namespace certagent::test
