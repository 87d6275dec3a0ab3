#pragma once
// The host identity for broker tests: the TPM backend on a private swtpm (what production
// uses), or the file backend. Both are the real implementations.

#include "tests/support/test_support.h"
#include "tests/support/swtpm.h"
#include "tpm/identity.h"

#include <memory>
#include <optional>
#include <string>

namespace certagent::test {

enum class IdentityKind { tpm, file };

// swtpm on Unix sockets in a directory, stopped on destruction; tcti() is "swtpm:path=...".
using Swtpm = tpm::test::Swtpm;

class TestIdentity {
 public:
  TestIdentity(IdentityKind kind, const fs::path& dir);
  ~TestIdentity();
  tpm::Identity& operator*() { return *identity_; }
  tpm::Identity* operator->() { return identity_.get(); }
  tpm::Identity* get() { return identity_.get(); }
  std::string tcti() const { return tcti_; }

 private:
  std::optional<Swtpm> swtpm_;
  std::string tcti_;
  std::unique_ptr<tpm::Identity> identity_;
};


}  // namespace certagent::test
