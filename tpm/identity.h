#pragma once
// The host's long-lived identity. The rest of the daemon sees only this interface; the TPM
// backend keeps the key inside the TPM, the file backend (development only) in state_dir.
// All methods are thread-safe: the TPM backend runs every ESAPI call on its own thread.
// The blocking methods wait for the TPM; code on the event loop uses the async_ forms, which
// queue the work (earliest deadline first) and return at once.

#include "core/crypto/ossl_ptr.h"
#include "core/result.h"
#include "core/secret.h"

#include <chrono>
#include <cstdint>
#include <functional>
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

  // ---- non-blocking forms, for the event loop ----
  // A TPM runs one command at a time and a discrete one takes tens of milliseconds each: work
  // waits in a queue ordered by deadline (the certificate's expiry: one close to expiry goes
  // before a storm of others), equal deadlines in arrival order. The blocking methods queue as
  // "due now". `done` is called exactly once, on the identity's thread (inline for backends
  // without one); it must not block.
  using Deadline = std::chrono::system_clock::time_point;
  template <class T>
  using Completion = std::function<void(Result<T>)>;
  virtual void async_sign_digest(Bytes digest, Deadline deadline, Completion<Bytes> done) {
    (void)deadline;
    done(sign_digest(digest));
  }
  virtual void async_hmac(std::string name, Bytes data, Deadline deadline, Completion<Bytes> done) {
    (void)deadline;
    done(hmac(name, data));
  }
  virtual void async_unseal(std::string name, Deadline deadline, Completion<Secret> done) {
    (void)deadline;
    done(unseal(name));
  }
};

// Opens the configured backend. Fails (never creates a new key) when no identity exists yet:
// that is what `certagent enroll` is for.
[[nodiscard]] Result<std::unique_ptr<Identity>> open_identity(const config::Config& config);

// Creates the identity if missing (idempotent) and returns it: `certagent enroll`.
[[nodiscard]] Result<std::unique_ptr<Identity>> enroll_identity(const config::Config& config);

}  // namespace certagent::tpm
