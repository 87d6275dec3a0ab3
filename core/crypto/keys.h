#pragma once
// Key pairs for issued certificates: generated fresh in memory for every rotation (never
// reused), serialised only into a Secret, which the file sink writes with mode 0600.

#include "core/crypto/ossl_ptr.h"
#include "core/result.h"
#include "core/secret.h"

#include <optional>
#include <string>
#include <string_view>

namespace certagent::crypto {

// The key types a certificate may ask for (`key:` in the config).
enum class KeyType { ecdsa_p256, ecdsa_p384, rsa_2048, rsa_3072, rsa_4096, ed25519 };
// "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519".
std::string_view to_string(KeyType k);
std::optional<KeyType> parse_key_type(std::string_view s);

// A new key pair: ecdsa-p256 (default), ecdsa-p384, rsa-2048/3072/4096 (e = 65537), ed25519.
// RSA-4096 takes up to a second or two of CPU: run it off the event loop.
[[nodiscard]] Result<EvpPkeyPtr> generate_key(KeyType type);

// The private key as unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"). The BIO buffer it passes
// through is cleansed before it is freed.
[[nodiscard]] Result<Secret> private_key_pem(EVP_PKEY* key);

// Reads one private key from PEM (PKCS#8, or the traditional RSA/EC forms). Encrypted keys are
// refused (no passphrase prompt, ever).
[[nodiscard]] Result<EvpPkeyPtr> parse_private_key(std::string_view pem);

// SubjectPublicKeyInfo PEM ("BEGIN PUBLIC KEY"); empty only if OpenSSL runs out of memory.
std::string public_key_pem(EVP_PKEY* key);

// True when both hold the same public key (and parameters): EVP_PKEY_eq() == 1.
bool same_public_key(EVP_PKEY* a, EVP_PKEY* b);

// True for keys signed without a separate digest (Ed25519, Ed448).
bool signs_without_digest(EVP_PKEY* key);

// Reads a whole memory BIO into a string.
std::string bio_to_string(BIO* bio);

}  // namespace certagent::crypto
