#include "core/crypto/pkcs12.h"

#include "core/crypto/errors.h"
#include "core/crypto/keys.h"
#include "core/crypto/ossl_ptr.h"
#include "core/crypto/x509.h"

#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include <cctype>
#include <set>

namespace certagent::crypto {
namespace {

using Pkcs12Ptr = std::unique_ptr<PKCS12, CDeleter<PKCS12_free>>;
using Asn1ObjectPtr = std::unique_ptr<ASN1_OBJECT, CDeleter<ASN1_OBJECT_free>>;

struct X509StackFree {
  void operator()(STACK_OF(X509) * s) const noexcept { sk_X509_pop_free(s, X509_free); }
};
struct BagStackFree {
  void operator()(STACK_OF(PKCS12_SAFEBAG) * s) const noexcept { sk_PKCS12_SAFEBAG_pop_free(s, PKCS12_SAFEBAG_free); }
};
struct SafeStackFree {
  void operator()(STACK_OF(PKCS7) * s) const noexcept { sk_PKCS7_pop_free(s, PKCS7_free); }
};

// PKCS12_* take the password as a C string.
Secret c_string(const Secret& password) {
  Secret out = password.clone();
  out.append(std::string_view("\0", 1));
  return out;
}

// The DER of `p12`; the encoder's buffer is wiped before it is freed.
Result<Secret> to_der(PKCS12* p12) {
  unsigned char* der = nullptr;
  const int len = i2d_PKCS12(p12, &der);
  if (len <= 0) return openssl_error("encoding the PKCS#12 file");
  Secret out(reinterpret_cast<const char*>(der), static_cast<std::size_t>(len));
  OPENSSL_clear_free(der, static_cast<std::size_t>(len));
  return out;
}

// Every certificate in a PEM text, in order; text around the blocks is ignored.
Result<std::vector<X509Ptr>> read_certificates(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return openssl_error("reading the trust bundle");
  std::vector<X509Ptr> out;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(cert);
  clear_openssl_errors();  // the end of input
  if (out.empty()) return make_error("the trust bundle holds no certificate");
  return out;
}

std::string alias_for(X509* cert, std::size_t index, std::set<std::string>& taken) {
  std::string base;
  char cn[256] = {0};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn - 1) > 0) base = cn;
  // Java lowercases aliases; keep them printable and comparable.
  for (auto& c : base) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (base.empty()) base = "ca-" + std::to_string(index + 1);
  std::string alias = base;
  for (int n = 2; !taken.insert(alias).second; ++n) alias = base + "-" + std::to_string(n);
  return alias;
}

Result<> set_mac(PKCS12* p12, const Secret& pass, int iterations) {
  if (PKCS12_set_mac(p12, pass.data(), -1, nullptr, 0, iterations, EVP_sha256()) != 1)
    return openssl_error("adding the PKCS#12 MAC");
  return {};
}

}  // namespace

Result<Secret> make_keystore(std::string_view alias, std::string_view key_pem, std::string_view cert_pem,
                             std::string_view chain_pem, const Secret& password, int iterations) {
  auto key = parse_private_key(key_pem);
  if (!key) return with_context("keystore", key.error());
  auto leaf = parse_chain(cert_pem, 1);
  if (!leaf) return with_context("keystore certificate", leaf.error());
  std::unique_ptr<STACK_OF(X509), X509StackFree> ca(sk_X509_new_null());
  if (!ca) return openssl_error("keystore");
  if (chain_pem.find_first_not_of(" \t\r\n") != std::string_view::npos) {
    auto chain = parse_chain(chain_pem);
    if (!chain) return with_context("keystore chain", chain.error());
    for (auto& c : *chain) {
      if (!sk_X509_push(ca.get(), c.get())) return openssl_error("keystore chain");
      c.release();
    }
  }
  const Secret pass = c_string(password);
  const std::string name(alias);
  Pkcs12Ptr p12(PKCS12_create_ex(pass.data(), name.c_str(), key->get(), leaf->front().get(), ca.get(),
                                 NID_aes_256_cbc, NID_aes_256_cbc, iterations, -1 /* MAC below */, 0, nullptr,
                                 nullptr));
  if (!p12) return openssl_error("building the keystore");
  if (auto r = set_mac(p12.get(), pass, iterations); !r) return r.error();
  return to_der(p12.get());
}

Result<std::string> make_truststore(std::string_view trust_pem, const Secret& password, int iterations) {
  auto certs = read_certificates(trust_pem);
  if (!certs) return certs.error();
  Asn1ObjectPtr any_usage(OBJ_txt2obj("2.5.29.37.0", 1));  // anyExtendedKeyUsage
  if (!any_usage) return openssl_error("truststore");
  std::unique_ptr<STACK_OF(PKCS12_SAFEBAG), BagStackFree> bags(sk_PKCS12_SAFEBAG_new_null());
  if (!bags) return openssl_error("truststore");
  std::set<std::string> taken;
  for (std::size_t i = 0; i < certs->size(); ++i) {
    STACK_OF(PKCS12_SAFEBAG)* raw = bags.get();
    PKCS12_SAFEBAG* bag = PKCS12_add_cert(&raw, (*certs)[i].get());
    if (!bag) return openssl_error("truststore: adding a certificate");
    const std::string alias = alias_for((*certs)[i].get(), i, taken);
    // len -1: the value is the ASN1_OBJECT itself (X509_ATTRIBUTE_set1_data).
    if (PKCS12_add_friendlyname_utf8(bag, alias.c_str(), -1) != 1 ||
        PKCS12_add1_attr_by_txt(bag, kJdkTrustedKeyUsageOid, V_ASN1_OBJECT,
                                reinterpret_cast<const unsigned char*>(any_usage.get()), -1) != 1)
      return openssl_error("truststore: marking a certificate trusted");
  }
  const Secret pass = c_string(password);
  STACK_OF(PKCS7)* raw_safes = nullptr;
  if (PKCS12_add_safe_ex(&raw_safes, bags.get(), NID_aes_256_cbc, iterations, pass.data(), nullptr, nullptr) != 1) {
    if (raw_safes) SafeStackFree{}(raw_safes);
    return openssl_error("truststore: encrypting the certificates");
  }
  std::unique_ptr<STACK_OF(PKCS7), SafeStackFree> safes(raw_safes);
  Pkcs12Ptr p12(PKCS12_add_safes_ex(safes.get(), 0, nullptr, nullptr));
  if (!p12) return openssl_error("building the truststore");
  if (auto r = set_mac(p12.get(), pass, iterations); !r) return r.error();
  auto der = to_der(p12.get());
  if (!der) return der.error();
  return Result<std::string>(boost::system::in_place_value, der->view());
}

Result<Secret> password_from_text(std::string_view text, std::string_view what) {
  const char* ws = " \t\r\n";
  const auto b = text.find_first_not_of(ws);
  if (b == std::string_view::npos) return make_error(std::string(what) + " is empty, expected a password");
  const auto e = text.find_last_not_of(ws);
  if (e - b + 1 > 1024) return make_error(std::string(what) + " is longer than 1024 bytes, expected a password");
  return Secret(text.data() + b, e - b + 1);
}

}  // namespace certagent::crypto
