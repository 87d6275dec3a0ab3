#include "tests/support/test_pki.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <stdexcept>

namespace certagent::test {
namespace {

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("test_pki: ") + what + " failed");
}

std::string bio_string(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(len));
}

void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  crypto::X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  check(ext != nullptr, "X509V3_EXT_conf_nid");
  check(X509_add_ext(cert, ext.get(), -1) == 1, "X509_add_ext");
}

std::string san_string(const std::vector<std::string>& dns, const std::vector<std::string>& ips) {
  std::string san;
  for (const auto& d : dns) san += (san.empty() ? "" : ",") + std::string("DNS:") + d;
  for (const auto& i : ips) san += (san.empty() ? "" : ",") + std::string("IP:") + i;
  return san;
}

}  // namespace

crypto::EvpPkeyPtr generate_p256_key() {
  crypto::EvpPkeyPtr key(EVP_EC_gen("P-256"));
  check(key != nullptr, "EVP_EC_gen");
  return key;
}

std::string private_key_pem(EVP_PKEY* key) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1, "PEM_write_bio_PrivateKey");
  return bio_string(bio.get());
}

std::string public_key_pem(EVP_PKEY* key) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_PUBKEY(bio.get(), key) == 1, "PEM_write_bio_PUBKEY");
  return bio_string(bio.get());
}

std::string cert_pem(X509* cert) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_X509(bio.get(), cert) == 1, "PEM_write_bio_X509");
  return bio_string(bio.get());
}

std::string TestCert::cert_pem() const { return test::cert_pem(cert.get()); }
std::string TestCert::key_pem() const { return private_key_pem(key.get()); }

TestCert make_cert(const CertSpec& spec, const TestCert* issuer, crypto::EvpPkeyPtr subject_key) {
  TestCert out;
  out.key = subject_key ? std::move(subject_key) : generate_p256_key();
  out.cert.reset(X509_new());
  X509* c = out.cert.get();
  check(X509_set_version(c, X509_VERSION_3) == 1, "X509_set_version");

  std::vector<std::uint8_t> serial = spec.serial;
  if (serial.empty()) {
    serial.resize(16);
    check(RAND_bytes(serial.data(), 16) == 1, "RAND_bytes");
    serial[0] &= 0x7f;
    serial[0] |= 0x10;  // positive, no leading zero byte
  }
  crypto::BignumPtr bn(BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr));
  check(BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(c)) != nullptr, "BN_to_ASN1_INTEGER");

  if (spec.not_before && spec.not_after) {
    ASN1_TIME_set(X509_getm_notBefore(c), std::chrono::system_clock::to_time_t(*spec.not_before));
    ASN1_TIME_set(X509_getm_notAfter(c), std::chrono::system_clock::to_time_t(*spec.not_after));
  } else {
    X509_gmtime_adj(X509_getm_notBefore(c), static_cast<long>(spec.not_before_offset.count()));
    X509_gmtime_adj(X509_getm_notAfter(c), static_cast<long>((spec.not_before_offset + spec.lifetime).count()));
  }

  if (!spec.common_name.empty()) {
    X509_NAME_add_entry_by_NID(X509_get_subject_name(c), NID_commonName, MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(spec.common_name.data()),
                               static_cast<int>(spec.common_name.size()), -1, 0);
  }
  X509* issuer_cert = issuer ? issuer->cert.get() : c;
  EVP_PKEY* signing_key = issuer ? issuer->key.get() : out.key.get();
  check(X509_set_issuer_name(c, X509_get_subject_name(issuer_cert)) == 1, "X509_set_issuer_name");
  check(X509_set_pubkey(c, out.key.get()) == 1, "X509_set_pubkey");

  add_ext(c, issuer_cert, NID_subject_key_identifier, "hash");
  if (!spec.authority_key_id.empty()) {
    // A fixed keyIdentifier (ARI test vectors): build the extension by hand.
    AUTHORITY_KEYID* akid = AUTHORITY_KEYID_new();
    akid->keyid = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(akid->keyid, spec.authority_key_id.data(), static_cast<int>(spec.authority_key_id.size()));
    check(X509_add1_ext_i2d(c, NID_authority_key_identifier, akid, 0, 0) == 1, "add AKI");
    AUTHORITY_KEYID_free(akid);
  } else if (issuer) {
    add_ext(c, issuer_cert, NID_authority_key_identifier, "keyid:always");
  }
  if (spec.is_ca) {
    add_ext(c, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(c, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature");
  } else {
    add_ext(c, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(c, issuer_cert, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    add_ext(c, issuer_cert, NID_ext_key_usage, "serverAuth,clientAuth");
  }
  std::string san;
  auto add_san = [&](const std::string& entry) { san += (san.empty() ? "" : ",") + entry; };
  for (const auto& d : spec.dns_names) add_san("DNS:" + d);
  for (const auto& i : spec.ip_addresses) add_san("IP:" + i);
  for (const auto& u : spec.uris) add_san("URI:" + u);
  for (const auto& e : spec.extra_san_conf) add_san(e);
  if (!san.empty()) add_ext(c, issuer_cert, NID_subject_alt_name, san);
  const bool no_digest = EVP_PKEY_is_a(signing_key, "ED25519") || EVP_PKEY_is_a(signing_key, "ED448");
  check(X509_sign(c, signing_key, no_digest ? nullptr : EVP_sha256()) > 0, "X509_sign");
  return out;
}

TestCert make_ca(const std::string& common_name, SystemTime not_before, SystemTime not_after,
                 const TestCert* issuer) {
  return make_cert(CertSpec{.common_name = common_name, .is_ca = true, .not_before = not_before,
                            .not_after = not_after},
                   issuer);
}

SystemTime fixed_now() { return std::chrono::system_clock::from_time_t(1772366400); }

std::string pem_of(const std::vector<X509*>& certs) {
  std::string out;
  for (X509* c : certs) out += cert_pem(c);
  return out;
}

std::string make_csr_pem(EVP_PKEY* key, const std::string& common_name,
                         const std::vector<std::string>& dns_names,
                         const std::vector<std::string>& ip_addresses) {
  crypto::X509ReqPtr req(X509_REQ_new());
  X509_REQ_set_version(req.get(), 0);
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  if (!common_name.empty())
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
  X509_REQ_set_pubkey(req.get(), key);
  std::string san = san_string(dns_names, ip_addresses);
  if (!san.empty()) {
    STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, nullptr, nullptr, req.get(), nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, san.c_str());
    check(ext != nullptr, "SAN extension");
    sk_X509_EXTENSION_push(exts, ext);
    X509_REQ_add_extensions(req.get(), exts);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  }
  check(X509_REQ_sign(req.get(), key, EVP_sha256()) > 0, "X509_REQ_sign");
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_REQ(bio.get(), req.get());
  return bio_string(bio.get());
}

std::vector<crypto::X509Ptr> parse_pem_chain(const std::string& pem) {
  std::vector<crypto::X509Ptr> out;
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(c);
  ERR_clear_error();
  return out;
}

}  // namespace certagent::test
