#pragma once
// An EVP_PKEY whose ECDSA P-256 signatures are made elsewhere (by the TPM), so OpenSSL can use
// a non-exportable key for TLS client authentication (SSL_CTX_use_PrivateKey) and CSRs
// (X509_REQ_sign). Built on a small in-process OpenSSL 3 provider living in its own library
// context: its EC key management and ECDSA signature are reached only through keys made here,
// never by a general "EC" fetch elsewhere in the daemon. Each signature is exactly one
// DigestSigner call; hashing, TLS and verification stay in the default provider.

#include "core/crypto/ossl_ptr.h"
#include "core/result.h"

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace certagent::tpm {

class DigestSigner {
 public:
  virtual ~DigestSigner() = default;
  // ECDSA over a 32-byte SHA-256 digest; DER ECDSA-Sig-Value.
  [[nodiscard]] virtual Result<std::vector<std::uint8_t>> sign_digest(
      std::span<const std::uint8_t> digest) = 0;
};

// `public_key` must be an EC P-256 key (only its public point is used). The returned key keeps
// `signer` alive. Its private half cannot be exported: OpenSSL only learns the public point.
// Only SHA-256 is accepted as the signature digest (the TPM key is bound to ECDSA-SHA256).
[[nodiscard]] Result<crypto::EvpPkeyPtr> make_delegated_ec_key(EVP_PKEY* public_key,
                                                              std::shared_ptr<DigestSigner> signer);

// The largest DER ECDSA P-256 signature.
inline constexpr std::size_t kMaxEcdsaP256DerSize = 72;

}  // namespace certagent::tpm
