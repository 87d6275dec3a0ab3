#pragma once
// JSON Web Signature for ACME (RFC 8555 §6.2, RFC 7515/7518/7638), with the account key held by
// the host identity: ES256 signatures come from Identity::sign_digest (inside the TPM), and the
// External Account Binding MAC (HS256) from Identity::hmac.

#include "core/result.h"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::tpm {
class Identity;
}

namespace certagent::renewers::acme {

using Bytes = std::vector<std::uint8_t>;

std::string base64url(std::span<const std::uint8_t> bytes);
std::string base64url(std::string_view bytes);
// Unpadded base64url; also accepts padding and the standard alphabet (keys pasted from CAs).
std::optional<Bytes> base64url_decode(std::string_view text);

// The account key as a JWK: `json` is the RFC 7638 canonical form (members sorted, no
// whitespace), so it doubles as the thumbprint input.
struct Jwk {
  std::string json;
  std::string thumbprint;  // base64url(SHA-256(json))
};
// ECDSA P-256 public keys only (what Identity provides).
[[nodiscard]] Result<Jwk> jwk_from_public_key_pem(std::string_view pem);

// DER ECDSA-Sig-Value -> JWS r||s, each left-padded to `half` bytes (32 for P-256).
[[nodiscard]] Result<Bytes> ecdsa_der_to_raw(std::span<const std::uint8_t> der, std::size_t half = 32);

// A flattened JWS JSON object signed with ES256 by the identity. `kid` empty: the header
// carries the jwk (newAccount). `payload_json` empty: POST-as-GET.
[[nodiscard]] Result<std::string> sign_es256(tpm::Identity& identity, const Jwk& jwk, std::string_view kid,
                                             std::string_view nonce, std::string_view url,
                                             std::string_view payload_json);

// sign_es256 in two halves, so the signature can be awaited off the event loop: the protected
// header and payload (base64url) with the SHA-256 digest the identity signs, then the flattened
// JWS from the identity's DER signature.
struct JwsToSign {
  std::string protected_b64;
  std::string payload_b64;
  Bytes digest;
};
JwsToSign jws_es256_input(const Jwk& jwk, std::string_view kid, std::string_view nonce, std::string_view url,
                          std::string_view payload_json);
[[nodiscard]] Result<std::string> jws_es256_finish(const JwsToSign& input, std::span<const std::uint8_t> der);

// The externalAccountBinding member of newAccount (RFC 8555 §7.3.4): a JWS over the account
// JWK, MACed (HS256) with the EAB key stored in the identity under `hmac_key_name`.
[[nodiscard]] Result<std::string> eab_binding(tpm::Identity& identity, std::string_view hmac_key_name,
                                              std::string_view eab_kid, std::string_view new_account_url,
                                              const Jwk& jwk);

// A key authorization (RFC 8555 §8.1) and its dns-01 TXT value (§8.4).
std::string key_authorization(std::string_view token, const Jwk& jwk);
std::string dns01_txt_value(std::string_view key_authorization);

}  // namespace certagent::renewers::acme
