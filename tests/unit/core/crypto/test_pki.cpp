#include "tests/unit/core/crypto/test_pki.h"

#include "core/crypto/keys.h"
#include "core/crypto/x509.h"

#include <openssl/rand.h>

#include <cstdlib>
#include <iostream>

namespace certagent::crypto::testing {
namespace {

[[noreturn]] void die(const std::string& what) {
  std::cerr << "test_pki: " << what << "\n";
  std::abort();
}

void add_ext(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  X509ExtPtr ext(X509V3_EXT_nconf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) die("extension " + value);
}

}  // namespace

SystemTime fixed_now() { return std::chrono::system_clock::from_time_t(1772366400); }

Issued make_cert(const CertSpec& spec, EvpPkeyPtr subject_key, X509* issuer, EVP_PKEY* issuer_key) {
  if (!subject_key) {
    auto k = generate_key(crypto::KeyType::ecdsa_p256);
    if (!k) die(k.error().message);
    subject_key = std::move(*k);
  }
  X509Ptr cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  serial[0] |= 0x01;
  BignumPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()));
  if (!spec.names.common_name.empty()) {
    X509_NAME_add_entry_by_NID(X509_get_subject_name(cert.get()), NID_commonName, MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(spec.names.common_name.data()),
                               static_cast<int>(spec.names.common_name.size()), -1, 0);
  }
  X509* signer_cert = issuer ? issuer : cert.get();
  EVP_PKEY* signer_key = issuer ? issuer_key : subject_key.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer_cert));
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), std::chrono::system_clock::to_time_t(spec.not_before));
  ASN1_TIME_set(X509_getm_notAfter(cert.get()), std::chrono::system_clock::to_time_t(spec.not_after));
  X509_set_pubkey(cert.get(), subject_key.get());

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, signer_cert, cert.get(), nullptr, nullptr, 0);
  add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  if (spec.ca) {
    add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature");
  }
  if (issuer) add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  if (spec.names.has_alt_names() || !spec.extra_san_conf.empty()) {
    std::string san;
    auto add = [&](const std::string& entry) { san += (san.empty() ? "" : ",") + entry; };
    for (const auto& d : spec.names.dns_names) add("DNS:" + d);
    for (const auto& ip : spec.names.ip_addresses) add("IP:" + ip);
    for (const auto& u : spec.names.uris) add("URI:" + u);
    for (const auto& e : spec.extra_san_conf) add(e);
    add_ext(cert.get(), &ctx, NID_subject_alt_name, san);
  }
  if (X509_sign(cert.get(), signer_key, signs_without_digest(signer_key) ? nullptr : EVP_sha256()) <= 0) {
    die("signing");
  }
  return Issued{std::move(subject_key), std::move(cert)};
}

Issued make_ca(const std::string& cn, SystemTime not_before, SystemTime not_after, X509* issuer,
               EVP_PKEY* issuer_key) {
  CertSpec spec;
  spec.names.common_name = cn;
  spec.not_before = not_before;
  spec.not_after = not_after;
  spec.ca = true;
  return make_cert(spec, nullptr, issuer, issuer_key);
}

std::string pem_of(const std::vector<X509*>& certs) {
  std::string out;
  for (X509* c : certs) out += to_pem(c);
  return out;
}

}  // namespace certagent::crypto::testing
