#include "core/crypto/validation.h"

#include "core/crypto/errors.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "core/time_format.h"

#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>

namespace certagent {
namespace {

Error rejected(std::string message) { return make_error("rejected certificate: " + message); }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// A CN nobody asked for is acceptable only if it repeats one of the requested names.
bool cn_repeats_a_name(const std::string& cn, const Names& requested) {
  for (const auto& d : requested.dns_names) {
    if (iequals(cn, d)) return true;
  }
  for (const auto& ip : requested.ip_addresses) {
    if (crypto::canonical_ip(cn) && crypto::canonical_ip(cn) == crypto::canonical_ip(ip)) return true;
  }
  return std::find(requested.uris.begin(), requested.uris.end(), cn) != requested.uris.end();
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) {
    if (!out.empty()) out += "; ";
    out += p;
  }
  return out;
}

std::string seconds_text(std::chrono::milliseconds d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::seconds>(d).count()) + "s";
}

}  // namespace

Result<Material> validate_issued(const ValidationInput& in) {
  if (!in.key || !in.trust) return make_error("validate_issued: key and trust store are required");
  if (in.max_lifetime.count() <= 0) return make_error("validate_issued: max_lifetime is not set");

  // 1. Parse.
  auto chain = crypto::parse_chain(in.chain_pem);
  if (!chain) return rejected("the broker's chain: " + chain.error().message);
  X509* leaf = chain->front().get();
  const crypto::CertInfo info = crypto::describe(leaf);
  const std::string serial = " (serial " + info.serial_hex + ")";

  // 2. Our key.
  EVP_PKEY* leaf_key = X509_get0_pubkey(leaf);
  crypto::clear_openssl_errors();
  if (!leaf_key || !crypto::same_public_key(leaf_key, in.key)) {
    return rejected("the leaf's public key is not the key this rotation generated" + serial);
  }

  // 3. Exactly the requested names.
  if (info.subject_cns.size() > 1) {
    return rejected("the leaf's subject holds " + std::to_string(info.subject_cns.size()) +
                    " common names" + serial);
  }
  if (!info.other_names.empty()) {
    return rejected("the leaf carries names of a kind never requested: " + join(info.other_names) + serial);
  }
  Names actual{info.subject_cn, info.dns_names, info.ip_addresses, info.uris};
  if (in.requested.common_name.empty() && !actual.common_name.empty() &&
      cn_repeats_a_name(actual.common_name, in.requested)) {
    actual.common_name.clear();
  }
  if (const auto diff = crypto::name_differences(in.requested, actual); !diff.empty()) {
    return rejected("names differ from the request: " + join(diff) + serial);
  }

  // 4. Valid now.
  if (info.not_after <= info.not_before) {
    return rejected("not_after " + format_rfc3339(info.not_after) + " is not after not_before " +
                    format_rfc3339(info.not_before) + serial);
  }
  if (in.now >= info.not_after) {
    return rejected("expired at " + format_rfc3339(info.not_after) + ", now is " + format_rfc3339(in.now) +
                    serial);
  }
  if (info.not_before > in.now + in.clock_skew) {
    return rejected("not valid before " + format_rfc3339(info.not_before) + ", more than " +
                    seconds_text(in.clock_skew) + " after now (" + format_rfc3339(in.now) +
                    "): is the broker's clock wrong?" + serial);
  }

  // 5. Not too long.
  const auto lifetime = info.not_after - info.not_before;
  if (lifetime > in.max_lifetime) {
    return rejected("lives " + seconds_text(std::chrono::duration_cast<std::chrono::milliseconds>(lifetime)) +
                    " (" + format_rfc3339(info.not_before) + " to " + format_rfc3339(info.not_after) +
                    "), longer than max_lifetime " + seconds_text(in.max_lifetime) + serial);
  }

  // 6. Ordered chain, trusted.
  std::vector<X509*> intermediates;
  for (std::size_t i = 1; i < chain->size(); ++i) {
    X509* issuer = (*chain)[i].get();
    X509* subject = (*chain)[i - 1].get();
    if (X509_check_issued(issuer, subject) != X509_V_OK) {
      crypto::clear_openssl_errors();
      return rejected("chain certificate #" + std::to_string(i + 1) + " (" +
                      crypto::subject_for_messages(issuer) + ") did not issue certificate #" +
                      std::to_string(i) + " (" + crypto::subject_for_messages(subject) +
                      "): the chain is out of order or holds an unrelated certificate" + serial);
    }
    intermediates.push_back(issuer);
  }
  const SystemTime verify_at = std::max(in.now, info.not_before);
  if (auto ok = crypto::verify_chain(leaf, intermediates, in.trust, verify_at); !ok) {
    return rejected(ok.error().message + serial);
  }

  Material m;
  m.cert_pem = crypto::to_pem(leaf);
  for (X509* cert : intermediates) m.chain_pem += crypto::to_pem(cert);
  m.serial_hex = info.serial_hex;
  m.not_before = info.not_before;
  m.not_after = info.not_after;
  m.sha256_hex = info.sha256_hex;
  m.broker = in.broker;
  return m;
}

}  // namespace certagent
