#include "agent/sidecar/content.h"

#include "core/crypto/x509.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <set>

namespace certagent::sidecar {

namespace {

void wipe_string(std::string* s) {
  if (s && !s->empty()) OPENSSL_cleanse(s->data(), s->size());
}

void wipe(google::protobuf::Any& any) { wipe_string(any.mutable_value()); }

void wipe(discovery::DiscoveryResponse& r) {
  for (auto& any : *r.mutable_resources()) wipe(any);
}

void wipe(tls::Secret& s) {
  if (s.has_tls_certificate()) wipe_string(s.mutable_tls_certificate()->mutable_private_key()->mutable_inline_bytes());
}

void wipe(X509SVID& s) { wipe_string(s.mutable_x509_svid_key()); }

void wipe(X509SVIDResponse& r) {
  for (auto& s : *r.mutable_svids()) wipe(s);
}

void wipe(X509BundlesResponse&) {}

// Shares `m`; its key bytes are wiped when the last holder lets go.
template <class M>
std::shared_ptr<const M> share_wiped(std::unique_ptr<M> m) {
  return std::shared_ptr<const M>(m.release(), [](const M* p) {
    auto* mutable_p = const_cast<M*>(p);
    wipe(*mutable_p);
    delete p;
  });
}

// Packs `secret` into an Any without leaving an unwiped serialization behind.
AnyPtr pack(tls::Secret& secret) {
  auto any = std::make_unique<google::protobuf::Any>();
  any->set_type_url(std::string(kSecretTypeUrl));
  std::string* value = any->mutable_value();
  value->resize(secret.ByteSizeLong());
  secret.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(value->data()));
  wipe(secret);
  return share_wiped(std::move(any));
}

}  // namespace

std::string spiffe_id_of(const config::CertificateConfig& c) {
  if (c.uris.size() != 1) return {};
  const std::string& uri = c.uris.front();
  constexpr std::string_view kScheme = "spiffe://";
  if (uri.size() <= kScheme.size() || uri.compare(0, kScheme.size(), kScheme) != 0) return {};
  const std::string_view rest = std::string_view(uri).substr(kScheme.size());
  const std::string_view domain = rest.substr(0, rest.find('/'));
  // X509-SVID / SPIFFE-ID: a trust domain of [a-z0-9.-_], no port, user info, query or fragment.
  if (domain.empty()) return {};
  const bool domain_ok = std::all_of(domain.begin(), domain.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' ||
           ch == '_';
  });
  if (!domain_ok) return {};
  if (rest.find_first_of("?#") != std::string_view::npos) return {};
  return uri;
}

std::string trust_domain_of(std::string_view spiffe_id) {
  constexpr std::string_view kScheme = "spiffe://";
  if (spiffe_id.substr(0, kScheme.size()) != kScheme) return {};
  const auto slash = spiffe_id.find('/', kScheme.size());
  return std::string(spiffe_id.substr(0, slash));
}

namespace {

// Whether `der` is one whole DER SEQUENCE (a certificate's outer shape): a cheap check in place of
// a parse, which OpenSSL 3 makes cost about a millisecond a chain.
bool one_der_sequence(const unsigned char* der, std::size_t len) {
  if (len < 2 || der[0] != 0x30) return false;
  std::size_t body = der[1];
  std::size_t at = 2;
  if (body & 0x80) {
    const std::size_t octets = body & 0x7f;
    if (octets == 0 || octets > 4 || len < 2 + octets) return false;
    body = 0;
    for (std::size_t i = 0; i < octets; ++i) body = (body << 8) | der[2 + i];
    at += octets;
  }
  return at + body == len;
}

}  // namespace

// The store holds only certificates it parsed when they came (and trust bundles parsed at
// load), so the PEM blocks are decoded, not parsed again: this runs on every rotation.
Result<std::string> pem_certs_to_der(std::string_view pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  if (!bio) return make_error("out of memory reading certificates");
  std::string der;
  std::size_t count = 0;
  for (;;) {
    char* name = nullptr;
    char* header = nullptr;
    unsigned char* data = nullptr;
    long len = 0;
    if (PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) break;
    const bool ok = std::string_view(name) == "CERTIFICATE" &&
                    one_der_sequence(data, static_cast<std::size_t>(len));
    if (ok) der.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(len));
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    if (!ok) {
      ERR_clear_error();
      return make_error("a PEM block is not a certificate");
    }
    if (++count > crypto::kMaxChainCerts) {
      ERR_clear_error();
      return make_error("more than " + std::to_string(crypto::kMaxChainCerts) + " certificates");
    }
  }
  ERR_clear_error();  // the end of the input reads as "no start line"
  if (count == 0) return make_error("no PEM certificate");
  return Result<std::string>(boost::system::in_place_value, std::move(der));
}

Result<Secret> pem_key_to_der(std::string_view pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  if (!bio) return make_error("out of memory reading a private key");
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long len = 0;
  if (PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) {
    return make_error("the private key is not PEM");
  }
  const bool pkcs8 = std::string_view(name) == "PRIVATE KEY";
  Secret der = pkcs8 ? Secret(reinterpret_cast<const char*>(data), static_cast<std::size_t>(len))
                     : Secret();
  OPENSSL_cleanse(data, static_cast<std::size_t>(len));
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(data);
  if (!pkcs8) return make_error("the private key is not PKCS#8 (\"PRIVATE KEY\")");
  return der;
}

AnyPtr tls_secret(const std::string& name, const Material& m) {
  tls::Secret secret;
  secret.set_name(name);
  auto* cert = secret.mutable_tls_certificate();
  std::string* chain = cert->mutable_certificate_chain()->mutable_inline_bytes();
  chain->reserve(m.cert_pem.size() + m.chain_pem.size());
  chain->append(m.cert_pem).append(m.chain_pem);
  cert->mutable_private_key()->set_inline_bytes(m.key_pem.data(), m.key_pem.size());
  return pack(secret);
}

AnyPtr trust_secret(const std::string& resource_name, std::string_view trust_bundle_pem) {
  tls::Secret secret;
  secret.set_name(resource_name);
  secret.mutable_validation_context()->mutable_trusted_ca()->set_inline_bytes(
      trust_bundle_pem.data(), trust_bundle_pem.size());
  return pack(secret);
}

DiscoveryResponsePtr discovery_response(const std::vector<AnyPtr>& resources,
                                        const std::string& version, const std::string& nonce) {
  auto r = std::make_unique<discovery::DiscoveryResponse>();
  r->set_version_info(version);
  r->set_type_url(std::string(kSecretTypeUrl));
  r->set_nonce(nonce);
  r->mutable_control_plane()->set_identifier("certagent");
  for (const auto& any : resources) *r->add_resources() = *any;
  return share_wiped(std::move(r));
}

Result<SvidPtr> make_svid(const std::string& name, const std::string& spiffe_id,
                          const Material& m, std::string_view trust_bundle_pem) {
  auto chain = pem_certs_to_der(m.cert_pem + m.chain_pem);
  if (!chain) return with_context("certificate '" + name + "'", chain.error());
  auto key = pem_key_to_der(m.key_pem.view());
  if (!key) return with_context("certificate '" + name + "'", key.error());
  if (trust_bundle_pem.empty()) {
    return make_error("certificate '" + name +
                      "' has no trust bundle: an X.509-SVID needs its trust domain's bundle");
  }
  auto bundle = pem_certs_to_der(trust_bundle_pem);
  if (!bundle) return with_context("certificate '" + name + "' trust bundle", bundle.error());
  auto svid = std::make_unique<X509SVID>();
  svid->set_spiffe_id(spiffe_id);
  svid->set_x509_svid(std::move(*chain));
  svid->set_x509_svid_key(key->data(), key->size());
  svid->set_bundle(std::move(*bundle));
  svid->set_hint(name);
  return share_wiped(std::move(svid));
}

SvidResponsePtr svid_response(const std::vector<SvidPtr>& svids) {
  auto r = std::make_unique<X509SVIDResponse>();
  for (const auto& s : svids) *r->add_svids() = *s;
  return share_wiped(std::move(r));
}

BundlesResponsePtr bundles_response(
    const std::vector<std::pair<std::string, std::string>>& bundles) {
  auto r = std::make_unique<X509BundlesResponse>();
  for (const auto& [domain, der] : bundles) (*r->mutable_bundles())[domain] = der;
  return share_wiped(std::move(r));
}

std::string content_version(const std::vector<std::pair<std::string, std::string>>& items) {
  std::vector<std::pair<std::string, std::string>> sorted = items;
  std::sort(sorted.begin(), sorted.end());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  for (const auto& [name, id] : sorted) {
    EVP_DigestUpdate(ctx.get(), name.data(), name.size());
    EVP_DigestUpdate(ctx.get(), "=", 1);
    EVP_DigestUpdate(ctx.get(), id.data(), id.size());
    EVP_DigestUpdate(ctx.get(), "\n", 1);
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return std::string(hex, 16);
}

}  // namespace certagent::sidecar
