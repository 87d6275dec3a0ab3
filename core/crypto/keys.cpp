#include "core/crypto/keys.h"

#include "core/crypto/errors.h"
#include "core/locked_memory.h"
#include "core/logging.h"

#include <openssl/buffer.h>
#include <openssl/pem.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

namespace certagent::crypto {
namespace {

// Far larger than any PEM key we generate (RSA-4096 PKCS#8 is ~3.3 KB).
constexpr std::size_t kMaxKeyPemBytes = 64 * 1024;

constexpr std::array<std::pair<KeyType, std::string_view>, 6> kKeyTypes{{
    {KeyType::ecdsa_p256, "ecdsa-p256"},
    {KeyType::ecdsa_p384, "ecdsa-p384"},
    {KeyType::rsa_2048, "rsa-2048"},
    {KeyType::rsa_3072, "rsa-3072"},
    {KeyType::rsa_4096, "rsa-4096"},
    {KeyType::ed25519, "ed25519"},
}};

// Never prompt for a passphrase: an encrypted key is an error, not a question on a terminal.
int refuse_passphrase(char*, int, int, void*) { return -1; }

std::mutex g_secure_heap_mutex;
SecureHeapState g_secure_heap;

// When key generation fails with the secure heap nearly full, say so: OpenSSL only reports
// "malloc failure".
std::string secure_heap_hint() {
  const SecureHeapState heap = secure_heap_state();
  if (heap.bytes == 0 || CRYPTO_secure_used() < heap.bytes / 4 * 3) return {};
  return " (OpenSSL's secure heap of " + std::to_string(heap.bytes / 1024) +
         " KiB is full: it is sized at start from brokers' max_in_flight; restart the daemon "
         "after raising max_in_flight)";
}

}  // namespace

std::size_t secure_heap_bytes_per_key(KeyType type) {
  // CRYPTO_secure_used() per live key, 16 keys at a time, OpenSSL 3.0.19 (buddy sizes included).
  switch (type) {
    case KeyType::ecdsa_p256: return 32;
    case KeyType::ecdsa_p384: return 64;
    case KeyType::ed25519: return 32;
    case KeyType::rsa_2048: return 1152;
    case KeyType::rsa_3072: return 1792;
    case KeyType::rsa_4096: return 2304;
  }
  return 2304;
}

std::size_t secure_heap_size(const std::vector<InFlightKeys>& brokers) {
  constexpr std::size_t kFixed = 32 * 1024;
  constexpr std::size_t kMinimum = 64 * 1024;
  std::size_t need = kFixed;
  for (const auto& b : brokers) need += 2 * b.count * secure_heap_bytes_per_key(b.largest);
  return std::bit_ceil(std::max(need, kMinimum));
}

SecureHeapState init_secure_heap(std::size_t bytes) {
  std::lock_guard lock(g_secure_heap_mutex);
  if (g_secure_heap.bytes != 0 || CRYPTO_secure_malloc_initialized()) return g_secure_heap;
  bytes = std::bit_ceil(std::max<std::size_t>(bytes, 4096));
  // Sets errno on the mlock() it tries: read right after.
  errno = 0;
  const int r = CRYPTO_secure_malloc_init(bytes, 16);
  const int error = errno;
  if (r == 0) {
    log::get("crypto")->warn("event=secure_heap_unavailable bytes={} error={} effect=\"private "
                             "keys being issued are held in the ordinary heap\"",
                             bytes, log::quote(std::strerror(error ? error : ENOMEM)));
    return g_secure_heap;
  }
  g_secure_heap = {bytes, r == 1};
  if (r == 2) locked_memory::note_lock_failure("OpenSSL's secure heap", error ? error : ENOMEM);
  return g_secure_heap;
}

SecureHeapState secure_heap_state() {
  std::lock_guard lock(g_secure_heap_mutex);
  return g_secure_heap;
}

std::string_view to_string(KeyType k) {
  for (const auto& [type, name] : kKeyTypes) {
    if (type == k) return name;
  }
  return "unknown";
}

std::optional<KeyType> parse_key_type(std::string_view s) {
  for (const auto& [type, name] : kKeyTypes) {
    if (name == s) return type;
  }
  return std::nullopt;
}

Result<EvpPkeyPtr> generate_key(KeyType type) {
  EVP_PKEY* raw = nullptr;
  switch (type) {
    case KeyType::ecdsa_p256:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
      break;
    case KeyType::ecdsa_p384:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
      break;
    case KeyType::rsa_2048:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(2048));
      break;
    case KeyType::rsa_3072:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(3072));
      break;
    case KeyType::rsa_4096:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(4096));
      break;
    case KeyType::ed25519:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
      break;
  }
  EvpPkeyPtr key(raw);
  if (!key) return openssl_error("generating " + std::string(to_string(type)) + " key" + secure_heap_hint());
  return key;
}

Result<Secret> private_key_pem(EVP_PKEY* key) {
  if (!key) return make_error("private_key_pem: no key");
  // Secure-heap BIO when a secure heap is configured; either way BUF_MEM is cleansed below.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio) return openssl_error("allocating a memory BIO");
  auto cleanse = [&] {
    BUF_MEM* mem = nullptr;
    BIO_get_mem_ptr(bio.get(), &mem);
    if (mem && mem->data) OPENSSL_cleanse(mem->data, mem->max);
  };
  if (PEM_write_bio_PKCS8PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    cleanse();
    return openssl_error("encoding the private key as PKCS#8 PEM");
  }
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(bio.get(), &mem);
  if (!mem || !mem->data || mem->length == 0) return make_error("encoding the private key: empty output");
  Secret out(mem->data, mem->length);
  cleanse();
  return out;
}

Result<EvpPkeyPtr> parse_private_key(std::string_view pem) {
  if (pem.empty()) return make_error("private key PEM is empty");
  if (pem.size() > kMaxKeyPemBytes) {
    return make_error("private key PEM is " + std::to_string(pem.size()) + " bytes, more than " +
                      std::to_string(kMaxKeyPemBytes));
  }
  // The read-only memory BIO points at the caller's buffer: nothing to cleanse here, and the
  // decoder frees its own base64 scratch with OPENSSL_clear_free.
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return openssl_error("allocating a memory BIO");
  EvpPkeyPtr key(PEM_read_bio_PrivateKey_ex(bio.get(), nullptr, refuse_passphrase, nullptr,
                                            nullptr, nullptr));
  if (!key) return openssl_error("not a readable unencrypted private key PEM");
  return key;
}

std::string bio_to_string(BIO* bio) {
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(bio, &mem);
  if (!mem || !mem->data) return {};
  return std::string(mem->data, mem->length);
}

std::string public_key_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || !key || PEM_write_bio_PUBKEY(bio.get(), key) != 1) {
    clear_openssl_errors();
    return {};
  }
  return bio_to_string(bio.get());
}

bool same_public_key(EVP_PKEY* a, EVP_PKEY* b) {
  if (!a || !b) return false;
  const bool equal = EVP_PKEY_eq(a, b) == 1;
  clear_openssl_errors();  // a type mismatch queues an error we do not want to report later
  return equal;
}

bool signs_without_digest(EVP_PKEY* key) {
  return EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448");
}

}  // namespace certagent::crypto
