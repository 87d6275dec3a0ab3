#include "core/crypto/csr.h"

#include "core/crypto/errors.h"
#include "core/crypto/keys.h"

#include <arpa/inet.h>
#include <openssl/core_names.h>
#include <openssl/pem.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <set>

namespace certagent::crypto {
namespace {

constexpr std::size_t kMaxCsrPemBytes = 64 * 1024;

struct ExtensionStackFree {
  void operator()(STACK_OF(X509_EXTENSION) * s) const noexcept {
    sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free);
  }
};
using ExtensionStackPtr = std::unique_ptr<STACK_OF(X509_EXTENSION), ExtensionStackFree>;
using GeneralNamePtr = std::unique_ptr<GENERAL_NAME, CDeleter<GENERAL_NAME_free>>;
using Asn1StringPtr = std::unique_ptr<ASN1_STRING, CDeleter<ASN1_STRING_free>>;
using Asn1ObjectPtr = std::unique_ptr<ASN1_OBJECT, CDeleter<ASN1_OBJECT_free>>;

bool printable_ascii(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// 4 or 16 bytes for an IP literal; empty if `text` is not one.
std::string ip_bytes(std::string_view text) {
  std::string s(text);
  std::array<unsigned char, 16> buf{};
  if (inet_pton(AF_INET, s.c_str(), buf.data()) == 1) return std::string(buf.begin(), buf.begin() + 4);
  if (inet_pton(AF_INET6, s.c_str(), buf.data()) == 1) return std::string(buf.begin(), buf.end());
  return {};
}

// The text of a 4- or 16-byte address (the only lengths an iPAddress name may have).
std::string ip_text(const unsigned char* data, int len) {
  char out[INET6_ADDRSTRLEN] = {};
  if (len == 4 && inet_ntop(AF_INET, data, out, sizeof out)) return out;
  if (len == 16 && inet_ntop(AF_INET6, data, out, sizeof out)) return out;
  return {};
}

Result<> push_ia5(GENERAL_NAMES* gens, int type, std::string_view value) {
  Asn1StringPtr s(ASN1_IA5STRING_new());
  GeneralNamePtr gn(GENERAL_NAME_new());
  if (!s || !gn || ASN1_STRING_set(s.get(), value.data(), static_cast<int>(value.size())) != 1) {
    return openssl_error("building a subjectAltName entry");
  }
  GENERAL_NAME_set0_value(gn.get(), type, s.release());
  if (sk_GENERAL_NAME_push(gens, gn.get()) == 0) return openssl_error("building subjectAltName");
  gn.release();
  return {};
}

Result<> push_ip(GENERAL_NAMES* gens, std::string_view text) {
  const std::string bytes = ip_bytes(text);
  if (bytes.empty()) return make_error("\"" + std::string(text) + "\" is not an IPv4 or IPv6 address");
  Asn1StringPtr s(ASN1_OCTET_STRING_new());
  GeneralNamePtr gn(GENERAL_NAME_new());
  if (!s || !gn ||
      ASN1_OCTET_STRING_set(s.get(), reinterpret_cast<const unsigned char*>(bytes.data()),
                            static_cast<int>(bytes.size())) != 1) {
    return openssl_error("building a subjectAltName IP entry");
  }
  GENERAL_NAME_set0_value(gn.get(), GEN_IPADD, s.release());
  if (sk_GENERAL_NAME_push(gens, gn.get()) == 0) return openssl_error("building subjectAltName");
  gn.release();
  return {};
}

std::string asn1_text(const ASN1_STRING* s) {
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<std::size_t>(ASN1_STRING_length(s)));
}

template <class Key>
void set_difference_sentences(const std::vector<std::string>& requested,
                              const std::vector<std::string>& actual, Key key,
                              std::string_view what, std::vector<std::string>& out) {
  std::set<std::string> want, got;
  for (const auto& r : requested) want.insert(key(r));
  for (const auto& a : actual) got.insert(key(a));
  for (const auto& r : requested) {
    if (!got.count(key(r))) out.push_back("missing " + std::string(what) + " " + r);
  }
  std::set<std::string> reported;
  for (const auto& a : actual) {
    if (!want.count(key(a)) && reported.insert(key(a)).second) {
      out.push_back("unexpected " + std::string(what) + " " + a);
    }
  }
}

// Sets an SPKI from the algorithm and raw key bits, taking ownership of the copies.
bool set_spki(X509_PUBKEY* pub, ASN1_OBJECT* alg, int ptype, void* pval, const unsigned char* bits,
              int len) {
  auto* copy = static_cast<unsigned char*>(OPENSSL_memdup(bits, static_cast<std::size_t>(len)));
  if (!copy) return false;
  if (X509_PUBKEY_set0_param(pub, alg, ptype, pval, copy, len) != 1) {
    OPENSSL_free(copy);
    return false;
  }
  return true;
}

}  // namespace

Result<> copy_public_key(X509_REQ* from, X509* to) {
  ASN1_OBJECT* alg_obj = nullptr;
  const unsigned char* bits = nullptr;
  int len = 0;
  X509_ALGOR* alg = nullptr;
  if (X509_PUBKEY_get0_param(&alg_obj, &bits, &len, &alg, X509_REQ_get_X509_PUBKEY(from)) != 1 || !alg) {
    return openssl_error("reading the CSR public key");
  }
  const ASN1_OBJECT* obj = nullptr;
  int ptype = V_ASN1_UNDEF;
  const void* pval = nullptr;
  X509_ALGOR_get0(&obj, &ptype, &pval, alg);
  if (ptype != V_ASN1_OBJECT && ptype != V_ASN1_SEQUENCE && ptype != V_ASN1_NULL && ptype != V_ASN1_UNDEF) {
    return make_error("CSR public key has unsupported algorithm parameters");
  }
  Asn1ObjectPtr alg_copy(OBJ_dup(obj));
  Asn1ObjectPtr param_obj(ptype == V_ASN1_OBJECT ? OBJ_dup(static_cast<const ASN1_OBJECT*>(pval)) : nullptr);
  Asn1StringPtr param_seq(ptype == V_ASN1_SEQUENCE ? ASN1_STRING_dup(static_cast<const ASN1_STRING*>(pval))
                                                   : nullptr);
  void* param = ptype == V_ASN1_OBJECT ? static_cast<void*>(param_obj.get()) : param_seq.get();
  if (!alg_copy || (ptype == V_ASN1_OBJECT && !param_obj) || (ptype == V_ASN1_SEQUENCE && !param_seq) ||
      !set_spki(X509_get_X509_PUBKEY(to), alg_copy.get(), ptype, param, bits, len)) {
    return openssl_error("copying the CSR public key");
  }
  // Owned by the certificate now.
  (void)alg_copy.release();
  (void)param_obj.release();
  (void)param_seq.release();
  return {};
}

std::optional<std::string> canonical_ip(std::string_view text) {
  const std::string bytes = ip_bytes(text);
  if (bytes.empty()) return std::nullopt;
  return ip_text(reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
}

Result<X509ExtPtr> subject_alt_name_extension(const SubjectNames& names, bool critical) {
  if (!names.has_alt_names()) return make_error("no subjectAltName to encode");
  GeneralNamesPtr gens(GENERAL_NAMES_new());
  if (!gens) return openssl_error("allocating subjectAltName");
  for (const auto& dns : names.dns_names) {
    if (!printable_ascii(dns)) {
      return make_error("DNS name \"" + dns + "\" is not printable ASCII (write IDNs as xn--)");
    }
    if (auto r = push_ia5(gens.get(), GEN_DNS, dns); !r) return r.error();
  }
  for (const auto& ip : names.ip_addresses) {
    if (auto r = push_ip(gens.get(), ip); !r) return r.error();
  }
  for (const auto& uri : names.uris) {
    if (!printable_ascii(uri) || uri.find(':') == std::string::npos) {
      return make_error("URI \"" + uri + "\" is not an absolute URI in printable ASCII");
    }
    if (auto r = push_ia5(gens.get(), GEN_URI, uri); !r) return r.error();
  }
  X509ExtPtr ext(X509V3_EXT_i2d(NID_subject_alt_name, critical ? 1 : 0, gens.get()));
  if (!ext) return openssl_error("encoding subjectAltName");
  return ext;
}

std::vector<std::string> common_names(const X509_NAME* name) {
  std::vector<std::string> out;
  if (!name) return out;
  int pos = -1;
  while ((pos = X509_NAME_get_index_by_NID(name, NID_commonName, pos)) >= 0) {
    const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, pos));
    unsigned char* utf8 = nullptr;
    const int len = ASN1_STRING_to_UTF8(&utf8, data);
    if (len >= 0 && utf8) {
      out.emplace_back(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(len));
    } else {
      out.emplace_back("<undecodable>");
      clear_openssl_errors();
    }
    OPENSSL_free(utf8);
  }
  return out;
}

void append_general_names(const GENERAL_NAMES* gens, SubjectNames& names,
                          std::vector<std::string>& other) {
  if (!gens) return;
  for (int i = 0; i < sk_GENERAL_NAME_num(gens); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(gens, i);
    switch (gn->type) {
      case GEN_DNS: names.dns_names.push_back(asn1_text(gn->d.dNSName)); break;
      case GEN_URI: names.uris.push_back(asn1_text(gn->d.uniformResourceIdentifier)); break;
      case GEN_IPADD: {
        // Any other length is no address: a name we cannot read, refused with the other kinds
        // rather than carried along as text that no later comparison would understand.
        const int len = ASN1_STRING_length(gn->d.iPAddress);
        std::string ip = ip_text(ASN1_STRING_get0_data(gn->d.iPAddress), len);
        if (ip.empty()) {
          other.push_back("an IP address of " + std::to_string(len) + " bytes");
        } else {
          names.ip_addresses.push_back(std::move(ip));
        }
        break;
      }
      case GEN_EMAIL: other.push_back("email:" + asn1_text(gn->d.rfc822Name)); break;
      case GEN_DIRNAME: other.push_back("dirName"); break;
      case GEN_OTHERNAME: other.push_back("otherName"); break;
      case GEN_RID: other.push_back("registeredID"); break;
      default: other.push_back("subjectAltName type " + std::to_string(gn->type)); break;
    }
  }
}

std::vector<std::string> name_differences(const SubjectNames& requested, const SubjectNames& actual) {
  std::vector<std::string> out;
  if (lower(requested.common_name) != lower(actual.common_name)) {
    if (requested.common_name.empty()) {
      out.push_back("unexpected common name \"" + actual.common_name + "\"");
    } else if (actual.common_name.empty()) {
      out.push_back("missing common name \"" + requested.common_name + "\"");
    } else {
      out.push_back("common name is \"" + actual.common_name + "\", requested \"" +
                    requested.common_name + "\"");
    }
  }
  set_difference_sentences(requested.dns_names, actual.dns_names, lower, "DNS name", out);
  set_difference_sentences(
      requested.ip_addresses, actual.ip_addresses,
      [](const std::string& ip) { return canonical_ip(ip).value_or("invalid:" + ip); }, "IP address",
      out);
  set_difference_sentences(requested.uris, actual.uris, [](const std::string& u) { return u; }, "URI",
                           out);
  return out;
}

Result<std::string> build_csr(EVP_PKEY* key, const SubjectNames& names) {
  if (!key) return make_error("build_csr: no key");
  if (names.common_name.empty() && !names.has_alt_names()) {
    return make_error("a CSR needs a common name or at least one DNS name, IP address or URI");
  }
  X509ReqPtr req(X509_REQ_new());
  if (!req || X509_REQ_set_version(req.get(), X509_REQ_VERSION_1) != 1) {
    return openssl_error("allocating a CSR");
  }
  if (!names.common_name.empty()) {
    X509_NAME* subject = X509_REQ_get_subject_name(req.get());
    if (X509_NAME_add_entry_by_NID(subject, NID_commonName, MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(names.common_name.data()),
                                   static_cast<int>(names.common_name.size()), -1, 0) != 1) {
      return openssl_error("common name \"" + names.common_name + "\" (at most 64 characters)");
    }
  }
  if (names.has_alt_names()) {
    auto ext = subject_alt_name_extension(names, names.common_name.empty());
    if (!ext) return ext.error();
    ExtensionStackPtr exts(sk_X509_EXTENSION_new_null());
    if (!exts || sk_X509_EXTENSION_push(exts.get(), ext->get()) == 0) {
      return openssl_error("building the CSR extension request");
    }
    ext->release();
    if (X509_REQ_add_extensions(req.get(), exts.get()) != 1) {
      return openssl_error("adding the CSR extension request");
    }
  }
  // The generic path: the "direct" SPKI shortcut crashed in X509_PUBKEY_set when it failed half
  // way on a request's embedded X509_PUBKEY; half a millisecond per CSR is not worth that risk.
  if (X509_REQ_set_pubkey(req.get(), key) != 1) return openssl_error("setting the CSR public key");
  const EVP_MD* md = signs_without_digest(key) ? nullptr : EVP_sha256();
  if (X509_REQ_sign(req.get(), key, md) <= 0) return openssl_error("signing the CSR");

  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509_REQ(bio.get(), req.get()) != 1) return openssl_error("encoding the CSR");
  // in_place: Error is constructible from a string too, so plain conversion is ambiguous.
  return Result<std::string>(boost::system::in_place_value, bio_to_string(bio.get()));
}

Result<X509ReqPtr> parse_csr(std::string_view pem) {
  if (pem.empty()) return make_error("CSR is empty");
  if (pem.size() > kMaxCsrPemBytes) {
    return make_error("CSR is " + std::to_string(pem.size()) + " bytes, more than " +
                      std::to_string(kMaxCsrPemBytes));
  }
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return openssl_error("allocating a memory BIO");
  X509ReqPtr req(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (!req) return openssl_error("not a PEM certificate request");
  return req;
}

Result<> verify_csr_signature(X509_REQ* req) {
  EVP_PKEY* pub = X509_REQ_get0_pubkey(req);
  if (!pub) return openssl_error("CSR has no usable public key");
  if (X509_REQ_verify(req, pub) != 1) return openssl_error("CSR signature does not verify");
  return {};
}

Result<SubjectNames> csr_names(X509_REQ* req) {
  SubjectNames names;
  const auto cns = common_names(X509_REQ_get_subject_name(req));
  if (cns.size() > 1) return make_error("CSR subject holds " + std::to_string(cns.size()) + " common names");
  if (!cns.empty()) names.common_name = cns.front();

  ExtensionStackPtr exts(X509_REQ_get_extensions(req));
  clear_openssl_errors();  // no extension request at all is not an error
  if (!exts) return names;
  int critical = 0;
  GeneralNamesPtr gens(static_cast<GENERAL_NAMES*>(
      X509V3_get_d2i(exts.get(), NID_subject_alt_name, &critical, nullptr)));
  if (!gens) {
    if (critical == -1) return names;  // no subjectAltName requested
    if (critical == -2) return make_error("CSR requests more than one subjectAltName extension");
    return openssl_error("CSR subjectAltName is malformed");
  }
  std::vector<std::string> other;
  append_general_names(gens.get(), names, other);
  if (!other.empty()) return make_error("CSR requests an unsupported subjectAltName: " + other.front());
  return names;
}

}  // namespace certagent::crypto
