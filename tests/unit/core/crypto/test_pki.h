#pragma once
// A throwaway PKI for tests: roots, intermediates and leaves with any names, times and keys,
// including the malformed ones validation must reject. Aborts the test on OpenSSL failure.

#include "core/clock.h"
#include "core/crypto/csr.h"
#include "core/crypto/ossl_ptr.h"

#include <string>
#include <vector>

namespace certagent::crypto::testing {

struct CertSpec {
  SubjectNames names;                       // CN + SANs written as given
  std::vector<std::string> extra_san_conf;  // extra SAN entries in openssl.cnf form ("email:a@b")
  SystemTime not_before{};
  SystemTime not_after{};
  bool ca{false};
};

struct Issued {
  EvpPkeyPtr key;
  X509Ptr cert;
};

// Signs a certificate for `subject_key` (a new P-256 key when null) with `issuer`/`issuer_key`
// (self-signed when issuer is null).
Issued make_cert(const CertSpec& spec, EvpPkeyPtr subject_key = nullptr, X509* issuer = nullptr,
                 EVP_PKEY* issuer_key = nullptr);

// A CA certificate, self-signed or issued by `issuer`.
Issued make_ca(const std::string& cn, SystemTime not_before, SystemTime not_after,
               X509* issuer = nullptr, EVP_PKEY* issuer_key = nullptr);

std::string pem_of(const std::vector<X509*>& certs);

// A fixed instant to build certificates around (2026-03-01T12:00:00Z).
SystemTime fixed_now();

}  // namespace certagent::crypto::testing
