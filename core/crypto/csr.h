#pragma once
// Certificate signing requests and the names they carry. The same name handling (building a
// subjectAltName, reading one back, comparing sets) serves the CSR we send, the local CA that
// signs it, and the validation of what a broker returns.

#include "core/crypto/ossl_ptr.h"
#include "core/result.h"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::crypto {

struct SubjectNames {
  std::string common_name;                // empty: no CN in the subject
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;  // IPv4 or IPv6 text
  std::vector<std::string> uris;

  bool has_alt_names() const { return !dns_names.empty() || !ip_addresses.empty() || !uris.empty(); }
};

// A PEM CSR for `key` with the CN in the subject and the other names in a subjectAltName
// extension request (critical when the subject is empty, RFC 5280 4.2.1.6). Signed with
// SHA-256, or without a digest for Ed25519. At least one name is required; DNS names and URIs
// must be printable ASCII (IDNs in their xn-- form), IPs valid IPv4/IPv6 text.
[[nodiscard]] Result<std::string> build_csr(EVP_PKEY* key, const SubjectNames& names);

// One PEM CSR ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST").
[[nodiscard]] Result<X509ReqPtr> parse_csr(std::string_view pem);

// Checks the CSR's self-signature with the public key it carries.
[[nodiscard]] Result<> verify_csr_signature(X509_REQ* req);

// Puts the CSR's SubjectPublicKeyInfo into `cert` bit for bit. Unlike X509_set_pubkey this
// does not re-encode and re-decode the key (two OpenSSL 3.0 provider round trips that cost more
// than the signature itself); the CSR's signature must have been verified first.
[[nodiscard]] Result<> copy_public_key(X509_REQ* from, X509* to);

// The names a CSR asks for. Fails on a subjectAltName kind other than DNS/IP/URI, on several
// CNs, or on a malformed extension.
[[nodiscard]] Result<SubjectNames> csr_names(X509_REQ* req);

// ---- shared name handling ------------------------------------------------------------------

// "10.0.0.1" -> "10.0.0.1", "0:0::1" -> "::1": the inet_ntop form; nullopt if not an IP.
std::optional<std::string> canonical_ip(std::string_view text);

// The subjectAltName for `names` (DNS, IP, URI). Fails when there is none to put in it.
[[nodiscard]] Result<X509ExtPtr> subject_alt_name_extension(const SubjectNames& names, bool critical);

// Every CN entry of a name, as UTF-8, in order.
std::vector<std::string> common_names(const X509_NAME* name);

// Appends DNS/IP/URI entries to `names` (IPs in canonical text); other kinds are described in
// `other` ("email:a@b", "dirName", ...).
void append_general_names(const GENERAL_NAMES* gens, SubjectNames& names,
                          std::vector<std::string>& other);

// What differs between requested and actual names, one human sentence per difference
// ("missing DNS name a.example", "unexpected IP address 10.0.0.2"); empty when they match.
// SANs compare as sets; DNS names and the CN ignore ASCII case (DNS is case-insensitive and
// CAs lowercase), IPs compare in canonical form, URIs exactly.
std::vector<std::string> name_differences(const SubjectNames& requested, const SubjectNames& actual);

}  // namespace certagent::crypto
