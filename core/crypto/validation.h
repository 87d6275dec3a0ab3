#pragma once
// DESIGN "One rotation", step 5: what a broker returned is checked before anything is written.
// Every renewer's output goes through validate_issued(); a failure keeps the current material.

#include "core/clock.h"
#include "core/crypto/csr.h"
#include "core/crypto/ossl_ptr.h"
#include "core/material.h"
#include "core/result.h"

#include <chrono>
#include <string>

namespace certagent {

using Names = crypto::SubjectNames;

// A broker whose clock runs a little ahead of ours issues leaves whose not_before is in our
// future. Rejecting them would fail every rotation until the clocks agree, so a not_before up
// to this far ahead is accepted (the chain is then verified at not_before). Such a leaf is not
// yet valid when accepted: Material::valid_at() says so, and nothing hands it out before then.
inline constexpr std::chrono::milliseconds kDefaultClockSkew = std::chrono::minutes(5);

struct ValidationInput {
  std::string chain_pem;                 // leaf first, then intermediates (IssueResult::chain_pem)
  EVP_PKEY* key{nullptr};                // the fresh key the CSR was signed with
  Names requested;                       // the certificate's configured names
  X509_STORE* trust{nullptr};            // the configured trust bundle
  std::chrono::milliseconds max_lifetime{};       // not_after - not_before must not exceed it
  SystemTime now{};
  std::string broker;                    // broker name, copied into Material
  std::chrono::milliseconds clock_skew{kDefaultClockSkew};
};

// Checks, in this order, each failure with its own message (prefixed "rejected certificate"):
//  1. the chain parses (crypto::parse_chain: strict PEM, bounded size and count);
//  2. the leaf's public key equals `key`;
//  3. the leaf's names equal the requested ones: same CN when one is requested (when none is,
//     a CN is tolerated only if it repeats a requested name, as ACME CAs do), and the same
//     sets of DNS names, IP addresses and URIs: none missing, none extra, no other SAN kinds;
//  4. now < not_after, and not_before <= now + clock_skew;
//  5. not_after - not_before <= max_lifetime;
//  6. each certificate after the leaf issued the one before it (order, no strays), and the
//     chain verifies to `trust` at max(now, not_before).
// On success returns Material with everything but key_pem (the caller adds it).
[[nodiscard]] Result<Material> validate_issued(const ValidationInput& input);

}  // namespace certagent
