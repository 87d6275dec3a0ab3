#pragma once
// Certificates: strict chain parsing (what a broker returns), facts about a certificate,
// trust stores and chain verification at a given time.

#include "core/clock.h"
#include "core/crypto/ossl_ptr.h"
#include "core/result.h"

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::crypto {

inline constexpr std::size_t kMaxChainCerts = 16;
inline constexpr std::size_t kMaxChainBytes = 1024 * 1024;

// One or more PEM "CERTIFICATE" blocks, in order, separated only by whitespace. Rejected, each
// with its own message: empty input, more than max_bytes, more than max_certs, a block without
// its END line (truncated), a block that is not a certificate (or has bytes after the DER),
// any other PEM type (a private key pasted into a chain is refused, never echoed), and any
// non-whitespace text before, between or after the blocks.
[[nodiscard]] Result<std::vector<X509Ptr>> parse_chain(std::string_view pem,
                                                       std::size_t max_certs = kMaxChainCerts,
                                                       std::size_t max_bytes = kMaxChainBytes);

std::string to_pem(X509* cert);

struct CertInfo {
  std::string serial_hex;                 // lowercase, as the DER INTEGER holds it ("-" if negative)
  SystemTime not_before{};
  SystemTime not_after{};
  std::string sha256_hex;                 // of the DER, lowercase
  std::string subject_cn;                 // last CN of the subject; empty if none
  std::string issuer_cn;
  std::vector<std::string> subject_cns;   // every CN of the subject (normally zero or one)
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;  // canonical text (inet_ntop)
  std::vector<std::string> uris;
  std::vector<std::string> other_names;   // subjectAltNames of other kinds ("email:...", ...)
};

CertInfo describe(X509* cert);

// "CN=web.internal" or the one-line subject when there is no CN: for messages.
std::string subject_for_messages(X509* cert);

// A store trusting every certificate in the bundle: the configured trust bundle *is* the set
// of anchors, so an intermediate placed there is an anchor too (X509_V_FLAG_PARTIAL_CHAIN).
// Text around the PEM blocks is allowed (commented bundles); a truncated block or a bundle
// without any certificate is an error.
[[nodiscard]] Result<X509StorePtr> load_trust_store(const std::filesystem::path& path);
[[nodiscard]] Result<X509StorePtr> trust_store_from_pem(std::string_view pem);

// Builds and verifies leaf -> intermediates -> an anchor of `store`, checking validity periods
// at `at` (X509_V_FLAG_USE_CHECK_TIME), never at the system clock. Purpose: X509_PURPOSE_ANY.
// The agent does not know whether a certificate will serve TLS servers, clients or both, and
// key usage / EKU are the issuing profile's business, enforced by the TLS peer; what the agent
// must establish is that a trusted CA issued this key for these names for this period.
// Basic constraints of the CAs in the chain are still enforced by OpenSSL.
[[nodiscard]] Result<> verify_chain(X509* leaf, const std::vector<X509*>& intermediates,
                                    X509_STORE* store, SystemTime at);

// ASN1_TIME <-> SystemTime (second resolution).
[[nodiscard]] Result<SystemTime> to_system_time(const ASN1_TIME* t);

// Reads a whole regular file of at most max_bytes.
[[nodiscard]] Result<std::string> read_small_file(const std::filesystem::path& path,
                                                  std::size_t max_bytes);

}  // namespace certagent::crypto
