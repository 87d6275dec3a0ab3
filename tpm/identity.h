#pragma once
// The host's long-lived identity. The rest of the daemon sees only this interface; the TPM
// backend keeps the key inside the TPM, the file backend (development only) in state_dir.
// All methods are thread-safe: the TPM backend runs every ESAPI call on its own thread.

#include "core/crypto/ossl_ptr.h"
#include "core/result.h"
#include "core/secret.h"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::config {
struct Config;
}

namespace certagent::tpm {

using Bytes = std::vector<std::uint8_t>;

class Identity {
 public:
  virtual ~Identity() = default;

  virtual std::string_view backend() const = 0;  // "tpm" | "file"

  // The identity's public key (ECDSA P-256), PEM SubjectPublicKeyInfo.
  virtual std::string public_key_pem() const = 0;

  // ECDSA signature over a SHA-256 digest, DER-encoded ECDSA-Sig-Value.
  [[nodiscard]] virtual Result<Bytes> sign_digest(std::span<const std::uint8_t> digest) = 0;

  // An EVP_PKEY whose private operations are done by this identity (one TPM sign per
  // call): usable with SSL_CTX_use_PrivateKey and X509_REQ_sign. Valid while *this lives.
  [[nodiscard]] virtual Result<crypto::EvpPkeyPtr> private_key() = 0;

  // HMAC-SHA256 with the key stored under `name` (imported with import_hmac_key).
  [[nodiscard]] virtual Result<Bytes> hmac(std::string_view name,
                                           std::span<const std::uint8_t> data) = 0;
  [[nodiscard]] virtual Result<> import_hmac_key(std::string_view name,
                                                 std::span<const std::uint8_t> key) = 0;

  // Small secrets (<= 128 bytes), e.g. API tokens.
  [[nodiscard]] virtual Result<> seal(std::string_view name, std::span<const std::uint8_t> bytes) = 0;
  [[nodiscard]] virtual Result<Secret> unseal(std::string_view name) = 0;
  virtual bool has_secret(std::string_view name) const = 0;
};

// Opens the configured backend. Fails (never creates a new key) when no identity exists yet:
// that is what `certagent enroll` is for.
[[nodiscard]] Result<std::unique_ptr<Identity>> open_identity(const config::Config& config);

// Creates the identity if missing (idempotent) and returns it: `certagent enroll`.
[[nodiscard]] Result<std::unique_ptr<Identity>> enroll_identity(const config::Config& config);

}  // namespace certagent::tpm
