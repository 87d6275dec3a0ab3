#include "tests/support/software_identity.h"

#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <stdexcept>

namespace certagent::test {

SoftwareIdentity::SoftwareIdentity() {
  key_.reset(EVP_EC_gen("P-256"));
  if (!key_) throw std::runtime_error("EVP_EC_gen failed");
}

std::string SoftwareIdentity::public_key_pem() const {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PUBKEY(bio.get(), key_.get());
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

Result<tpm::Bytes> SoftwareIdentity::sign_digest(std::span<const std::uint8_t> digest) {
  if (digest.size() != 32) return make_error("sign_digest wants a SHA-256 digest");
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new(key_.get(), nullptr));
  std::size_t len = 0;
  if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 ||
      EVP_PKEY_sign(ctx.get(), nullptr, &len, digest.data(), digest.size()) != 1)
    return make_error("EVP_PKEY_sign failed");
  tpm::Bytes sig(len);
  if (EVP_PKEY_sign(ctx.get(), sig.data(), &len, digest.data(), digest.size()) != 1)
    return make_error("EVP_PKEY_sign failed");
  sig.resize(len);
  std::lock_guard lock(mutex_);
  ++sign_count_;
  return sig;
}

Result<crypto::EvpPkeyPtr> SoftwareIdentity::private_key() {
  EVP_PKEY_up_ref(key_.get());
  return crypto::EvpPkeyPtr(key_.get());
}

Result<tpm::Bytes> SoftwareIdentity::hmac(std::string_view name, std::span<const std::uint8_t> data) {
  std::lock_guard lock(mutex_);
  auto it = hmac_keys_.find(name);
  if (it == hmac_keys_.end()) return make_error("no HMAC key named " + std::string(name));
  tpm::Bytes out(EVP_MAX_MD_SIZE);
  unsigned len = 0;
  if (!HMAC(EVP_sha256(), it->second.data(), static_cast<int>(it->second.size()), data.data(),
            data.size(), out.data(), &len))
    return make_error("HMAC failed");
  out.resize(len);
  return out;
}

Result<> SoftwareIdentity::import_hmac_key(std::string_view name, std::span<const std::uint8_t> key) {
  std::lock_guard lock(mutex_);
  hmac_keys_[std::string(name)] = tpm::Bytes(key.begin(), key.end());
  return {};
}

Result<> SoftwareIdentity::seal(std::string_view name, std::span<const std::uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  secrets_[std::string(name)] = std::string(bytes.begin(), bytes.end());
  return {};
}

Result<Secret> SoftwareIdentity::unseal(std::string_view name) {
  std::lock_guard lock(mutex_);
  auto it = secrets_.find(name);
  if (it == secrets_.end()) return make_error("no secret named " + std::string(name));
  return Secret(it->second);
}

bool SoftwareIdentity::has_secret(std::string_view name) const {
  std::lock_guard lock(mutex_);
  return secrets_.count(name) > 0;
}

}  // namespace certagent::test
