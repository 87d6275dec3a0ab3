#pragma once
// Certificates for tests, made with OpenSSL directly: CAs, leaves (good and deliberately bad:
// expired, wrong names, wrong key, long chains), CSRs. Test code only; throws on OpenSSL failure.

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

struct CertSpec {
  std::string common_name;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  bool is_ca{false};
  std::chrono::seconds not_before_offset{-60};   // relative to now
  std::chrono::seconds lifetime{3600};
  std::vector<std::uint8_t> serial;              // empty: random 16 bytes
  std::vector<std::uint8_t> authority_key_id;    // empty: the issuer's subject key id
};

struct TestCert {
  crypto::X509Ptr cert;
  crypto::EvpPkeyPtr key;
  std::string cert_pem() const;
  std::string key_pem() const;
};

// Signed by `issuer`, or self-signed when null. `subject_key` null: a fresh P-256 key.
TestCert make_cert(const CertSpec& spec, const TestCert* issuer = nullptr,
                   crypto::EvpPkeyPtr subject_key = nullptr);

std::string cert_pem(X509* cert);

// A CSR for `key` with CN and SANs.
std::string make_csr_pem(EVP_PKEY* key, const std::string& common_name,
                         const std::vector<std::string>& dns_names,
                         const std::vector<std::string>& ip_addresses);

// Every certificate of a PEM bundle.
std::vector<crypto::X509Ptr> parse_pem_chain(const std::string& pem);

}  // namespace certagent::test
