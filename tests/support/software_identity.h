#pragma once
// An in-memory Identity for unit tests: a software P-256 key and plain maps for HMAC keys and
// sealed secrets. Integration tests use the real `file` backend and swtpm instead.

#include "tpm/identity.h"

#include <map>
#include <mutex>

namespace certagent::test {

class SoftwareIdentity final : public tpm::Identity {
 public:
  SoftwareIdentity();
  std::string_view backend() const override { return "software"; }
  std::string public_key_pem() const override;
  Result<tpm::Bytes> sign_digest(std::span<const std::uint8_t> digest) override;
  Result<crypto::EvpPkeyPtr> private_key() override;
  Result<tpm::Bytes> hmac(std::string_view name, std::span<const std::uint8_t> data) override;
  Result<> import_hmac_key(std::string_view name, std::span<const std::uint8_t> key) override;
  Result<> seal(std::string_view name, std::span<const std::uint8_t> bytes) override;
  Result<Secret> unseal(std::string_view name) override;
  bool has_secret(std::string_view name) const override;

  int sign_count() const { return sign_count_; }

 private:
  crypto::EvpPkeyPtr key_;
  mutable std::mutex mutex_;
  std::map<std::string, tpm::Bytes, std::less<>> hmac_keys_;
  std::map<std::string, std::string, std::less<>> secrets_;
  int sign_count_{0};
};

}  // namespace certagent::test
