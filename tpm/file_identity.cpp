#include "tpm/file_identity.h"

#include "core/crypto/errors.h"
#include "core/logging.h"

#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

namespace certagent::tpm {
namespace {

constexpr std::size_t kMaxKeyFileSize = 16 * 1024;
constexpr std::size_t kMaxHmacKeySize = 4096;

std::shared_ptr<spdlog::logger> logger() { return log::get("tpm"); }

fs::path key_path(const fs::path& dir) { return dir / "file-identity.key"; }
fs::path hmac_path(const fs::path& dir, std::string_view name) {
  return dir / ("hmac-" + std::string(name) + ".key");
}
fs::path sealed_path(const fs::path& dir, std::string_view name) {
  return dir / ("sealed-" + std::string(name) + ".bin");
}

bool is_p256(EVP_PKEY* key) {
  char group[64] = {0};
  bool ok = EVP_PKEY_is_a(key, "EC") &&
            EVP_PKEY_get_group_name(key, group, sizeof group, nullptr) == 1 &&
            std::string_view(group) == "prime256v1";
  ERR_clear_error();
  return ok;
}

Result<std::string> public_pem(EVP_PKEY* key) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1)
    return crypto::openssl_error("writing the public key PEM");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  // in_place_value: Error is constructible from a string too (C++20 aggregate init).
  return Result<std::string>(boost::system::in_place_value, data, static_cast<std::size_t>(len));
}

Result<Secret> private_pem(EVP_PKEY* key) {
  crypto::BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return crypto::openssl_error("encoding the private key");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return Secret(data, static_cast<std::size_t>(len));
}

std::string reenrol_hint(const FileIdentityOptions& options) {
  return "move " + options.dir.string() + " aside and " + options.enroll_hint;
}

}  // namespace

FileIdentity::FileIdentity(FileIdentityOptions options, crypto::EvpPkeyPtr key, std::string public_pem,
                           bool created)
    : options_(std::move(options)), key_(std::move(key)), public_pem_(std::move(public_pem)), created_(created) {}

Result<std::unique_ptr<FileIdentity>> FileIdentity::open(const FileIdentityOptions& options, OpenMode mode) {
  logger()->warn("event=insecure_identity backend=file dir={} note={}", log::quote(options.dir.string()),
                 log::quote("development only, not for production: the identity key is a plain file"));
  const fs::path path = key_path(options.dir);
  auto pem = read_file_secret(path, kMaxKeyFileSize);
  if (!pem) return pem.error();
  crypto::EvpPkeyPtr key;
  bool created = false;
  if (*pem) {
    crypto::BioPtr bio(BIO_new_mem_buf((*pem)->data(), static_cast<int>((*pem)->size())));
    key.reset(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!key || !is_p256(key.get())) {
      ERR_clear_error();
      return make_error("the identity in " + options.dir.string() + " is corrupt: " + path.string() +
                        " is not a PEM ECDSA P-256 private key: restore it from a backup, or " +
                        reenrol_hint(options));
    }
  } else if (mode == OpenMode::existing) {
    return make_error("no identity in " + options.dir.string() + ": " + options.enroll_hint);
  } else {
    key.reset(EVP_EC_gen("P-256"));
    if (!key) return crypto::openssl_error("generating the identity key");
    auto encoded = private_pem(key.get());
    if (!encoded) return encoded.error();
    if (auto d = ensure_private_dir(options.dir); !d) return d.error();
    if (auto w = write_file_atomic(path, as_bytes(encoded->view()), 0600); !w) return w.error();
    created = true;
  }
  auto pub = public_pem(key.get());
  if (!pub) return pub.error();
  logger()->info("event=identity_opened backend=file created={} dir={}", created,
                 log::quote(options.dir.string()));
  return std::unique_ptr<FileIdentity>(new FileIdentity(options, std::move(key), std::move(*pub), created));
}

Result<Bytes> FileIdentity::sign_digest(std::span<const std::uint8_t> digest) {
  if (digest.size() != 32)
    return make_error("sign_digest: expected a 32-byte SHA-256 digest, got " + std::to_string(digest.size()) +
                      " bytes");
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key_.get(), nullptr));
  Bytes sig(80);
  std::size_t len = sig.size();
  if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 ||
      EVP_PKEY_sign(ctx.get(), sig.data(), &len, digest.data(), digest.size()) != 1)
    return crypto::openssl_error("signing");
  sig.resize(len);
  return sig;
}

Result<crypto::EvpPkeyPtr> FileIdentity::private_key() {
  if (EVP_PKEY_up_ref(key_.get()) != 1) return make_error("EVP_PKEY_up_ref failed");
  return crypto::EvpPkeyPtr(key_.get());
}

Result<Bytes> FileIdentity::hmac(std::string_view name, std::span<const std::uint8_t> data) {
  if (auto v = validate_secret_name(name); !v) return v.error();
  auto key = read_file_secret(hmac_path(options_.dir, name), kMaxHmacKeySize);
  if (!key) return key.error();
  if (!*key)
    return make_error("no HMAC key \"" + std::string(name) + "\" in " + options_.dir.string() + ": " +
                      options_.enroll_hint + " with the key file named in the config");
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), (*key)->data(), static_cast<int>((*key)->size()), data.data(), data.size(),
            out.data(), &len))
    return crypto::openssl_error("HMAC");
  out.resize(len);
  return out;
}

Result<> FileIdentity::import_hmac_key(std::string_view name, std::span<const std::uint8_t> key) {
  if (auto v = validate_secret_name(name); !v) return v;
  if (key.empty()) return make_error("HMAC key \"" + std::string(name) + "\" is empty");
  if (key.size() > kMaxHmacKeySize) return make_error("HMAC key \"" + std::string(name) + "\" is too long");
  std::lock_guard lock(mutex_);
  if (auto d = ensure_private_dir(options_.dir); !d) return d;
  return write_file_atomic(hmac_path(options_.dir, name), key, 0600);
}

Result<> FileIdentity::seal(std::string_view name, std::span<const std::uint8_t> bytes) {
  if (auto v = validate_secret_name(name); !v) return v;
  if (bytes.size() > kMaxSealedSecretSize)
    return make_error("secret \"" + std::string(name) + "\" is " + std::to_string(bytes.size()) +
                      " bytes; at most " + std::to_string(kMaxSealedSecretSize) + " can be sealed");
  std::lock_guard lock(mutex_);
  if (auto d = ensure_private_dir(options_.dir); !d) return d;
  return write_file_atomic(sealed_path(options_.dir, name), bytes, 0600);
}

Result<Secret> FileIdentity::unseal(std::string_view name) {
  if (auto v = validate_secret_name(name); !v) return v.error();
  auto data = read_file_secret(sealed_path(options_.dir, name), kMaxSealedSecretSize);
  if (!data) return data.error();
  if (!*data)
    return make_error("no sealed secret \"" + std::string(name) + "\" in " + options_.dir.string() + ": " +
                      options_.enroll_hint + " with the secret file named in the config");
  return std::move(**data);
}

bool FileIdentity::has_secret(std::string_view name) const {
  if (!validate_secret_name(name)) return false;
  return file_exists(hmac_path(options_.dir, name)) || file_exists(sealed_path(options_.dir, name));
}

}  // namespace certagent::tpm
