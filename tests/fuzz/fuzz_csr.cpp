// CSRs and the local CA's signing path. The first byte picks the form (PEM text, or DER in PEM
// armour). The CSR is parsed, its names read and its signature checked as they come; then it is
// re-signed with the harness key (so the signature check passes and the fuzzed subject and
// extensions reach the CA) and signed by a real local CA for exactly the names it carries.
// Invariants: names read from a CSR are canonical; a CSR whose names cannot be read is never
// signed; a signed leaf carries exactly the requested names and the CSR's key, and verifies
// against the CA's root.

#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "renewers/local_renewer.h"
#include "tests/fuzz/fuzz_util.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>

namespace crypto = certagent::crypto;
namespace fs = std::filesystem;
using certagent::renewers::LocalRenewer;

namespace {

struct Harness {
  fs::path state_dir;
  crypto::EvpPkeyPtr key;
  std::unique_ptr<LocalRenewer> ca;
  crypto::X509StorePtr trust;
};
Harness* harness = nullptr;

void remove_state_dir() {
  std::error_code ec;
  if (harness) fs::remove_all(harness->state_dir, ec);
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  certagent::fuzz::quiet_logging();
  harness = new Harness;
  std::string dir = (fs::temp_directory_path() / "certagent-fuzz-csr-XXXXXX").string();
  FUZZ_REQUIRE(::mkdtemp(dir.data()) != nullptr, "mkdtemp");
  harness->state_dir = dir;
  std::atexit(remove_state_dir);
  auto key = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  FUZZ_REQUIRE(key.has_value(), "generate_key");
  harness->key = std::move(*key);
  auto ca = LocalRenewer::open(harness->state_dir, nullptr);
  FUZZ_REQUIRE(ca.has_value(), ca ? "" : ca.error().message);
  harness->ca = std::move(*ca);
  auto trust = crypto::trust_store_from_pem(crypto::to_pem(harness->ca->root()));
  FUZZ_REQUIRE(trust.has_value(), "trust store");
  harness->trust = std::move(*trust);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1 || size > 32 * 1024) return 0;
  const std::string_view rest = certagent::fuzz::text_of(data + 1, size - 1);
  const std::string pem = data[0] % 2 ? std::string(rest)
                                      : certagent::fuzz::pem_armor("CERTIFICATE REQUEST", rest);
  auto req = crypto::parse_csr(pem);
  if (!req) {
    FUZZ_REQUIRE(!req.error().message.empty(), "a rejection without a message");
    return 0;
  }
  auto names = crypto::csr_names(req->get());
  if (names) {
    for (const auto& ip : names->ip_addresses) {
      FUZZ_REQUIRE(crypto::canonical_ip(ip) == ip, "an IP not in canonical form: " + ip);
    }
  }
  (void)crypto::verify_csr_signature(req->get());

  // The CA's path: the same request, signed by the harness key.
  if (X509_REQ_set_pubkey(req->get(), harness->key.get()) != 1 ||
      X509_REQ_sign(req->get(), harness->key.get(), EVP_sha256()) <= 0) {
    ERR_clear_error();
    return 0;
  }
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  FUZZ_REQUIRE(PEM_write_bio_X509_REQ(bio.get(), req->get()) == 1, "writing the CSR");
  certagent::renewers::IssueRequest request;
  request.cert_name = "fuzz";
  request.csr_pem = crypto::bio_to_string(bio.get());
  request.lifetime = std::chrono::hours(1);
  if (names) {
    request.common_name = names->common_name;
    request.dns_names = names->dns_names;
    request.ip_addresses = names->ip_addresses;
    request.uris = names->uris;
  } else {
    request.common_name = "fuzz.internal";
  }
  auto issued = harness->ca->issue_now(request);
  ERR_clear_error();
  if (!names) {
    FUZZ_REQUIRE(!issued.has_value(), "a CSR whose names cannot be read was signed");
    return 0;
  }
  if (!issued) return 0;
  auto chain = crypto::parse_chain(issued->chain_pem);
  FUZZ_REQUIRE(chain.has_value() && !chain->empty(), "the CA's chain does not parse");
  X509* leaf = chain->front().get();
  const crypto::CertInfo info = crypto::describe(leaf);
  FUZZ_REQUIRE(info.subject_cn == names->common_name, "CN differs: " + info.subject_cn);
  FUZZ_REQUIRE(sorted(info.dns_names) == sorted(names->dns_names), "DNS names differ");
  FUZZ_REQUIRE(sorted(info.ip_addresses) == sorted(names->ip_addresses), "IPs differ");
  FUZZ_REQUIRE(sorted(info.uris) == sorted(names->uris), "URIs differ");
  FUZZ_REQUIRE(info.other_names.empty(), "the leaf carries other names");
  crypto::EvpPkeyPtr leaf_key(X509_get_pubkey(leaf));
  FUZZ_REQUIRE(leaf_key && crypto::same_public_key(leaf_key.get(), harness->key.get()),
               "the leaf carries another key");
  std::vector<X509*> intermediates;
  for (std::size_t i = 1; i < chain->size(); ++i) intermediates.push_back((*chain)[i].get());
  auto verified = crypto::verify_chain(leaf, intermediates, harness->trust.get(), info.not_before);
  FUZZ_REQUIRE(verified.has_value(), "the leaf does not verify: " +
                                         (verified ? std::string() : verified.error().message));
  return 0;
}
