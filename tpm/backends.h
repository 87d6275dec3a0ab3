#pragma once
// Dispatch from identity.backend to the implementation (used by open_identity, enroll_identity
// and enroll()).

#include "core/result.h"
#include "tpm/identity.h"
#include "tpm/identity_store.h"

#include <memory>

namespace certagent::tpm {

struct OpenedIdentity {
  std::unique_ptr<Identity> identity;
  bool created{false};  // this call created the key
};

[[nodiscard]] Result<OpenedIdentity> open_backend(const config::Config& config, OpenMode mode);

}  // namespace certagent::tpm
