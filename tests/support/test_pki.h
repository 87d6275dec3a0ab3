#pragma once
// The one test PKI: CAs, leaves (good and deliberately bad: expired, wrong names, wrong key,
// long chains, odd SANs), CSRs, made with OpenSSL directly. Test code only; throws on OpenSSL
// failure.

#include "core/clock.h"
#include "core/crypto/ossl_ptr.h"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace certagent::test {

crypto::EvpPkeyPtr generate_p256_key();
std::string private_key_pem(EVP_PKEY* key);
std::string public_key_pem(EVP_PKEY* key);

// Fields in this order, so tests can use designated initializers.
struct CertSpec {
  std::string common_name;                  // empty: no CN
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  std::vector<std::string> uris;
  std::vector<std::string> extra_san_conf;  // extra SAN entries in openssl.cnf form ("email:a@b")
  bool is_ca{false};
  std::chrono::seconds not_before_offset{-60};   // relative to now
  std::chrono::seconds lifetime{3600};
  // Fixed instants instead of the two above (both set, or neither).
  std::optional<SystemTime> not_before;
  std::optional<SystemTime> not_after;
  std::vector<std::uint8_t> serial;              // empty: random 16 bytes, positive, no leading zero
  std::vector<std::uint8_t> authority_key_id;    // empty: the issuer's subject key id
};

struct TestCert {
  crypto::X509Ptr cert;
  crypto::EvpPkeyPtr key;
  std::string cert_pem() const;
  std::string key_pem() const;
};

// Signed by `issuer`, or self-signed when null. `subject_key` null: a fresh P-256 key.
// Ed25519/Ed448 signers sign without a digest.
TestCert make_cert(const CertSpec& spec, const TestCert* issuer = nullptr,
                   crypto::EvpPkeyPtr subject_key = nullptr);

// A CA valid over [not_before, not_after], self-signed or issued by `issuer`.
TestCert make_ca(const std::string& common_name, SystemTime not_before, SystemTime not_after,
                 const TestCert* issuer = nullptr);

// A fixed instant to build certificates around (2026-03-01T12:00:00Z).
SystemTime fixed_now();

std::string cert_pem(X509* cert);
// The certificates concatenated as PEM, in order.
std::string pem_of(const std::vector<X509*>& certs);

// A CSR for `key` with CN and SANs.
std::string make_csr_pem(EVP_PKEY* key, const std::string& common_name,
                         const std::vector<std::string>& dns_names,
                         const std::vector<std::string>& ip_addresses);

// Every certificate of a PEM bundle.
std::vector<crypto::X509Ptr> parse_pem_chain(const std::string& pem);

}  // namespace certagent::test
