#include "tests/unit/agent/test_material.h"

#include "core/crypto/ossl_ptr.h"
#include "core/crypto/x509.h"
#include "core/logging.h"
#include "tests/support/test_pki.h"

#include <openssl/err.h>
#include <openssl/pem.h>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>

namespace certagent::test {
namespace {

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("test material: ") + what);
}

// Serial, SHA-256 and validity as validation reports them.
void fill_facts(Material& m, X509* cert) {
  const auto info = crypto::describe(cert);
  m.serial_hex = info.serial_hex;
  m.sha256_hex = info.sha256_hex;
  m.not_before = info.not_before;
  m.not_after = info.not_after;
}

crypto::X509Ptr read_cert(const std::string& pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return crypto::X509Ptr(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

crypto::EvpPkeyPtr read_key(std::string_view pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return crypto::EvpPkeyPtr(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, const_cast<char*>("")));
}

// Valid from an hour ago: a leaf is usable at once whatever the clock skew in the test.
constexpr std::chrono::seconds kBackdate = std::chrono::hours(1);

}  // namespace

TestCa make_test_ca(const std::string& common_name) {
  auto ca = make_cert(CertSpec{.common_name = common_name,
                               .is_ca = true,
                               .not_before_offset = -kBackdate,
                               .lifetime = kBackdate + std::chrono::hours(24 * 365)});
  return TestCa{ca.cert_pem(), Secret(ca.key_pem())};
}

Material make_test_material(const std::string& common_name, std::chrono::seconds lifetime,
                            const TestCa* ca) {
  std::optional<TestCert> issuer;
  if (ca) {
    issuer = TestCert{read_cert(ca->cert_pem), read_key(ca->key_pem.view())};
    check(issuer->cert && issuer->key, "reading the test CA");
  }
  auto leaf = make_cert(
      CertSpec{.common_name = common_name, .not_before_offset = -kBackdate, .lifetime = kBackdate + lifetime},
      issuer ? &*issuer : nullptr);
  Material m;
  m.cert_pem = leaf.cert_pem();
  m.chain_pem = ca ? ca->cert_pem : std::string();
  m.key_pem = Secret(leaf.key_pem());
  m.broker = "dev";
  fill_facts(m, leaf.cert.get());
  return m;
}

std::string encode_materials(const std::vector<Material>& materials) {
  std::string out;
  for (const auto& m : materials) {
    out += m.key_pem.view();
    out += m.cert_pem;
    out += "%%\n";
  }
  return out;
}

std::vector<Material> decode_materials(const std::string& blob) {
  std::vector<Material> out;
  std::size_t pos = 0;
  while (pos < blob.size()) {
    auto end = blob.find("%%\n", pos);
    if (end == std::string::npos) break;
    std::string entry = blob.substr(pos, end - pos);
    auto split = entry.find("-----BEGIN CERTIFICATE-----");
    check(split != std::string::npos, "decoding materials");
    Material m;
    m.key_pem = Secret(entry.substr(0, split));
    m.cert_pem = entry.substr(split);
    m.broker = "dev";
    auto cert = read_cert(m.cert_pem);
    check(cert != nullptr, "decoding a certificate");
    fill_facts(m, cert.get());
    out.push_back(std::move(m));
    pos = end + 3;
  }
  return out;
}

ScratchDir::ScratchDir() {
  std::string base = "/tmp";
  if (::access("/dev/shm", W_OK | X_OK) == 0) base = "/dev/shm";
  std::string templ = base + "/certagent-sink-XXXXXX";
  if (!::mkdtemp(templ.data())) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
  path_ = templ;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void quiet_logs() { log::init({"warn", "text"}); }

bool pem_key_matches_cert(const std::string& key_pem, const std::string& cert_pem) {
  auto key = read_key(key_pem);
  auto cert = read_cert(cert_pem);
  bool ok = key && cert && X509_check_private_key(cert.get(), key.get()) == 1;
  ERR_clear_error();
  return ok;
}

}  // namespace certagent::test
