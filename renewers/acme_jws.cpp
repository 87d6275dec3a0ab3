#include "renewers/acme_jws.h"

#include "core/crypto/ossl_ptr.h"
#include "core/encoding.h"
#include "tpm/identity.h"

#include <boost/json.hpp>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <array>

namespace certagent::renewers::acme {
namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

Bytes sha256(std::string_view data) {
  Bytes out(SHA256_DIGEST_LENGTH);
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data());
  return out;
}

// The flattened JWS JSON serialization (RFC 7515 §7.2.2).
Result<std::string> flattened(const std::string& protected_b64, const std::string& payload_b64,
                              std::span<const std::uint8_t> signature);

using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, crypto::CDeleter<ECDSA_SIG_free>>;

}  // namespace

namespace {
Result<std::string> flattened(const std::string& protected_b64, const std::string& payload_b64,
                              std::span<const std::uint8_t> signature) {
  return Result<std::string>(boost::system::in_place_value,
                             R"({"protected":")" + protected_b64 + R"(","payload":")" + payload_b64 +
                                 R"(","signature":")" + base64url(signature) + R"("})");
}
}  // namespace

std::string base64url(std::span<const std::uint8_t> bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    std::uint32_t v = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (bytes.size() - i == 1) {
    std::uint32_t v = bytes[i] << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
  } else if (bytes.size() - i == 2) {
    std::uint32_t v = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
  }
  return out;
}

std::string base64url(std::string_view bytes) {
  return base64url(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

std::optional<Bytes> base64url_decode(std::string_view text) {
  auto decoded = certagent::base64url_decode(text);
  if (!decoded) return std::nullopt;
  return Bytes(decoded->view().begin(), decoded->view().end());
}

Result<Jwk> jwk_from_public_key_pem(std::string_view pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  crypto::EvpPkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    return make_error("the identity's public key is not a PEM public key");
  }
  char group[64] = {};
  std::size_t group_len = 0;
  if (EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_EC ||
      EVP_PKEY_get_utf8_string_param(key.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &group_len) != 1 ||
      std::string_view(group) != "prime256v1")
    return make_error("the identity key must be ECDSA P-256 for ACME (ES256)");
  BIGNUM* x_raw = nullptr;
  BIGNUM* y_raw = nullptr;
  EVP_PKEY_get_bn_param(key.get(), OSSL_PKEY_PARAM_EC_PUB_X, &x_raw);
  crypto::BignumPtr x(x_raw);
  EVP_PKEY_get_bn_param(key.get(), OSSL_PKEY_PARAM_EC_PUB_Y, &y_raw);
  crypto::BignumPtr y(y_raw);
  if (!x || !y) return make_error("cannot read the identity's EC point");
  std::array<std::uint8_t, 32> xb{}, yb{};
  BN_bn2binpad(x.get(), xb.data(), 32);
  BN_bn2binpad(y.get(), yb.data(), 32);
  Jwk jwk;
  jwk.json = R"({"crv":"P-256","kty":"EC","x":")" + base64url(xb) + R"(","y":")" + base64url(yb) + R"("})";
  jwk.thumbprint = base64url(sha256(jwk.json));
  return jwk;
}

Result<Bytes> ecdsa_der_to_raw(std::span<const std::uint8_t> der, std::size_t half) {
  const unsigned char* p = der.data();
  EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())));
  if (!sig || p != der.data() + der.size()) {
    ERR_clear_error();
    return make_error("the identity returned a malformed ECDSA signature");
  }
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  Bytes out(2 * half);
  if (BN_bn2binpad(r, out.data(), static_cast<int>(half)) < 0 ||
      BN_bn2binpad(s, out.data() + half, static_cast<int>(half)) < 0)
    return make_error("ECDSA signature value too large");
  return out;
}

JwsToSign jws_es256_input(const Jwk& jwk, std::string_view kid, std::string_view nonce, std::string_view url,
                          std::string_view payload_json) {
  boost::json::object header;
  header["alg"] = "ES256";
  if (kid.empty()) {
    header["jwk"] = boost::json::parse(jwk.json);
  } else {
    header["kid"] = kid;
  }
  header["nonce"] = nonce;
  header["url"] = url;
  JwsToSign out;
  out.protected_b64 = base64url(boost::json::serialize(header));
  out.payload_b64 = payload_json.empty() ? std::string() : base64url(payload_json);
  out.digest = sha256(out.protected_b64 + "." + out.payload_b64);
  return out;
}

Result<std::string> jws_es256_finish(const JwsToSign& input, std::span<const std::uint8_t> der) {
  auto raw = ecdsa_der_to_raw(der);
  if (!raw) return raw.error();
  return flattened(input.protected_b64, input.payload_b64, *raw);
}

Result<std::string> sign_es256(tpm::Identity& identity, const Jwk& jwk, std::string_view kid,
                               std::string_view nonce, std::string_view url, std::string_view payload_json) {
  JwsToSign input = jws_es256_input(jwk, kid, nonce, url, payload_json);
  auto der = identity.sign_digest(input.digest);
  if (!der) return with_context("signing the ACME request with the identity", der.error());
  return jws_es256_finish(input, *der);
}

Result<std::string> eab_binding(tpm::Identity& identity, std::string_view hmac_key_name,
                                std::string_view eab_kid, std::string_view new_account_url, const Jwk& jwk) {
  boost::json::object header;
  header["alg"] = "HS256";
  header["kid"] = eab_kid;
  header["url"] = new_account_url;
  std::string protected_b64 = base64url(boost::json::serialize(header));
  std::string payload_b64 = base64url(jwk.json);
  std::string input = protected_b64 + "." + payload_b64;
  auto mac = identity.hmac(hmac_key_name,
                           std::span(reinterpret_cast<const std::uint8_t*>(input.data()), input.size()));
  if (!mac) return with_context("computing the external account binding MAC", mac.error());
  return flattened(protected_b64, payload_b64, *mac);
}

std::string key_authorization(std::string_view token, const Jwk& jwk) {
  return std::string(token) + "." + jwk.thumbprint;
}

std::string dns01_txt_value(std::string_view key_authorization) {
  return base64url(sha256(key_authorization));
}

}  // namespace certagent::renewers::acme
