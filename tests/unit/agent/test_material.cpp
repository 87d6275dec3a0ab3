#include "tests/unit/agent/test_material.h"

#include "core/crypto/ossl_ptr.h"
#include "core/logging.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace certagent::test {
namespace {

using namespace certagent::crypto;

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("test material: ") + what);
}

EvpPkeyPtr new_key() {
  EvpPkeyPtr key(EVP_EC_gen("P-256"));
  check(key != nullptr, "EVP_EC_gen");
  return key;
}

std::string key_to_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1,
        "PEM_write_bio_PrivateKey");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::string cert_to_pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_X509(bio.get(), cert) == 1, "PEM_write_bio_X509");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

X509Ptr build_cert(EVP_PKEY* subject_key, const std::string& cn, std::chrono::seconds lifetime,
                   X509* issuer, EVP_PKEY* issuer_key, bool is_ca) {
  X509Ptr cert(X509_new());
  check(cert != nullptr, "X509_new");
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  check(RAND_bytes(serial, sizeof serial) == 1, "RAND_bytes");
  serial[0] &= 0x7f;
  serial[0] |= 0x10;  // positive, no leading zero byte
  BignumPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(lifetime.count()));
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509_set_pubkey(cert.get(), subject_key);
  if (is_ca) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
    X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, NID_basic_constraints, "critical,CA:TRUE"));
    X509_add_ext(cert.get(), ext.get(), -1);
  }
  check(X509_sign(cert.get(), issuer_key ? issuer_key : subject_key, EVP_sha256()) > 0, "X509_sign");
  return cert;
}

void fill_facts(Material& m, X509* cert) {
  BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  char* hex = BN_bn2hex(bn.get());
  m.serial_hex = hex;
  OPENSSL_free(hex);
  for (auto& c : m.serial_hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(cert, EVP_sha256(), md, &len);
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned int i = 0; i < len; ++i) {
    m.sha256_hex.push_back(kHex[md[i] >> 4]);
    m.sha256_hex.push_back(kHex[md[i] & 15]);
  }
  auto to_time = [](const ASN1_TIME* t) {
    std::tm tm{};
    ASN1_TIME_to_tm(t, &tm);
    return std::chrono::system_clock::from_time_t(timegm(&tm));
  };
  m.not_before = to_time(X509_get0_notBefore(cert));
  m.not_after = to_time(X509_get0_notAfter(cert));
}

X509Ptr read_cert(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return X509Ptr(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

EvpPkeyPtr read_key(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return EvpPkeyPtr(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, const_cast<char*>("")));
}

}  // namespace

TestCa make_test_ca(const std::string& common_name) {
  auto key = new_key();
  auto cert = build_cert(key.get(), common_name, std::chrono::hours(24 * 365), nullptr, nullptr, true);
  return TestCa{cert_to_pem(cert.get()), Secret(key_to_pem(key.get()))};
}

Material make_test_material(const std::string& common_name, std::chrono::seconds lifetime,
                            const TestCa* ca) {
  auto key = new_key();
  X509Ptr ca_cert;
  EvpPkeyPtr ca_key;
  if (ca) {
    ca_cert = read_cert(ca->cert_pem);
    ca_key = read_key(ca->key_pem.view());
    check(ca_cert && ca_key, "reading the test CA");
  }
  auto cert = build_cert(key.get(), common_name, lifetime, ca_cert.get(), ca_key.get(), false);
  Material m;
  m.cert_pem = cert_to_pem(cert.get());
  m.chain_pem = ca ? ca->cert_pem : std::string();
  m.key_pem = Secret(key_to_pem(key.get()));
  m.broker = "dev";
  fill_facts(m, cert.get());
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
