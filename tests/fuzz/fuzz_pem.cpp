// PEM certificate chains (what a broker returns, trust bundles) and private keys (the key files
// and the socket API's bundles). The first byte picks the form: PEM text as it comes, or DER
// that the harness wraps in PEM armour (so mutations reach the ASN.1 parsers).
// Invariants: an accepted chain has 1..kMaxChainCerts certificates, each writes back to PEM that
// reads back bit for bit, and a chain cut inside its last END line is refused; an accepted key
// writes to PKCS#8 PEM that reads back as the same key and writes the same text.

#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "tests/fuzz/fuzz_util.h"

#include <openssl/x509.h>

namespace crypto = certagent::crypto;
using certagent::fuzz::pem_armor;

namespace {

std::string der_of(X509* cert) {
  unsigned char* der = nullptr;
  const int len = i2d_X509(cert, &der);
  FUZZ_REQUIRE(len > 0, "an accepted certificate does not encode");
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return out;
}

void check_chain(std::string_view pem) {
  auto chain = crypto::parse_chain(pem);
  (void)crypto::trust_store_from_pem(pem);
  if (!chain) {
    FUZZ_REQUIRE(!chain.error().message.empty(), "a rejection without a message");
    return;
  }
  FUZZ_REQUIRE(!chain->empty() && chain->size() <= crypto::kMaxChainCerts, "certificate count");
  std::string written;
  for (const auto& cert : *chain) {
    const crypto::CertInfo info = crypto::describe(cert.get());
    FUZZ_REQUIRE(info.sha256_hex.size() == 64, "sha256_hex");
    (void)crypto::subject_for_messages(cert.get());
    written += crypto::to_pem(cert.get());
  }
  auto again = crypto::parse_chain(written);
  FUZZ_REQUIRE(again.has_value(), "a written chain is refused");
  FUZZ_REQUIRE(again->size() == chain->size(), "a written chain has another length");
  for (std::size_t i = 0; i < chain->size(); ++i) {
    FUZZ_REQUIRE(der_of((*again)[i].get()) == der_of((*chain)[i].get()), "a certificate changed");
  }
  // Cut inside the last END line: truncated, never accepted.
  const std::size_t end = pem.rfind("-----END");
  FUZZ_REQUIRE(end != std::string_view::npos, "accepted without an END line");
  FUZZ_REQUIRE(!crypto::parse_chain(pem.substr(0, end + 5)), "a truncated chain is accepted");
}

void check_key(std::string_view pem) {
  auto key = crypto::parse_private_key(pem);
  if (!key) {
    FUZZ_REQUIRE(!key.error().message.empty(), "a rejection without a message");
    return;
  }
  auto written = crypto::private_key_pem(key->get());
  FUZZ_REQUIRE(written.has_value(), "an accepted key does not write as PKCS#8");
  auto again = crypto::parse_private_key(written->view());
  FUZZ_REQUIRE(again.has_value(), "a written key is refused");
  FUZZ_REQUIRE(crypto::same_public_key(key->get(), again->get()), "a written key is another key");
  auto rewritten = crypto::private_key_pem(again->get());
  FUZZ_REQUIRE(rewritten.has_value() && rewritten->view() == written->view(), "key PEM not stable");
  (void)crypto::public_key_pem(key->get());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  certagent::fuzz::quiet_logging();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1 || size > 64 * 1024) return 0;
  const std::string_view rest = certagent::fuzz::text_of(data + 1, size - 1);
  switch (data[0] % 4) {
    case 0: check_chain(rest); break;
    case 1: check_chain(pem_armor("CERTIFICATE", rest)); break;
    case 2: check_key(rest); break;
    default: check_key(pem_armor("PRIVATE KEY", rest)); break;
  }
  return 0;
}
