#pragma once
// Key pairs for issued certificates: generated fresh in memory for every rotation (never
// reused), serialised only into a Secret, which the file sink writes with mode 0600.

#include "core/crypto/ossl_ptr.h"
#include "core/result.h"
#include "core/secret.h"

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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

// ---- OpenSSL's secure heap -------------------------------------------------------------------
// Once it is initialised, OpenSSL 3.0 puts the private parts of EC, RSA and Ed25519 keys (and its
// random generators' state) in one locked, MADV_DONTDUMP arena with guard pages. It cannot grow:
// when it is full, key generation fails. Keys live there only while they are being issued (the
// PEM that is kept is a Secret), so its size follows the issuances in flight, not the number of
// certificates.

// Bytes of secure heap one key of `type` takes (measured on OpenSSL 3.0.19).
std::size_t secure_heap_bytes_per_key(KeyType type);

// Keys of one broker that may be alive at once: min(max_in_flight, its certificates), and the
// largest key type among its certificates.
struct InFlightKeys {
  KeyType largest{KeyType::ecdsa_p256};
  std::size_t count{0};
};
// The heap for those: twice each broker's keys (a key outlives its broker slot while it is
// validated), plus 32 KiB for the random generators, PEM encoding and long-lived keys (local CA,
// file identity); a power of two, at least 64 KiB.
std::size_t secure_heap_size(const std::vector<InFlightKeys>& brokers);

struct SecureHeapState {
  std::size_t bytes{0};  // 0: not initialised
  bool locked{false};    // false: initialised but not mlock()ed (RLIMIT_MEMLOCK)
};
// Initialises the secure heap once, before any key exists; later calls change nothing. When it
// cannot be locked it is used anyway and one warning is logged (locked_memory::note_lock_failure);
// when it cannot be made at all, keys stay in the ordinary heap and that is logged.
SecureHeapState init_secure_heap(std::size_t bytes);
SecureHeapState secure_heap_state();

// Reads a whole memory BIO into a string.
std::string bio_to_string(BIO* bio);

}  // namespace certagent::crypto
