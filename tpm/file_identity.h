#pragma once
// The development backend of the host identity: an ECDSA P-256 key as a PEM file (0600) in the
// identity directory, HMAC keys and sealed secrets as 0600 files beside it. Same interface and
// same naming rules as the TPM backend, so it doubles as the TPM's fake in tests. Every open
// logs a warning that it is not for production: anyone who can read the directory owns the
// identity.
//
// Files: file-identity.key (PKCS#8 PEM), hmac-<name>.key (raw key), sealed-<name>.bin.

#include "tpm/identity.h"
#include "tpm/identity_store.h"

#include <memory>
#include <mutex>
#include <string>

namespace certagent::tpm {

struct FileIdentityOptions {
  fs::path dir;             // <state_dir>/identity
  std::string enroll_hint;  // what to run when there is no identity
};

class FileIdentity final : public Identity {
 public:
  [[nodiscard]] static Result<std::unique_ptr<FileIdentity>> open(const FileIdentityOptions& options,
                                                                  OpenMode mode);

  std::string_view backend() const override { return "file"; }
  std::string public_key_pem() const override { return public_pem_; }
  [[nodiscard]] Result<Bytes> sign_digest(std::span<const std::uint8_t> digest) override;
  [[nodiscard]] Result<crypto::EvpPkeyPtr> private_key() override;
  [[nodiscard]] Result<Bytes> hmac(std::string_view name, std::span<const std::uint8_t> data) override;
  [[nodiscard]] Result<> import_hmac_key(std::string_view name,
                                         std::span<const std::uint8_t> key) override;
  [[nodiscard]] Result<> seal(std::string_view name, std::span<const std::uint8_t> bytes) override;
  [[nodiscard]] Result<Secret> unseal(std::string_view name) override;
  bool has_secret(std::string_view name) const override;

  bool created() const { return created_; }

 private:
  FileIdentity(FileIdentityOptions options, crypto::EvpPkeyPtr key, std::string public_pem, bool created);

  const FileIdentityOptions options_;
  const crypto::EvpPkeyPtr key_;
  const std::string public_pem_;
  const bool created_;
  std::mutex mutex_;  // serialises file replacement for secrets
};

}  // namespace certagent::tpm
