#include "agent/enroll.h"

#include "agent/builtin_plugins.h"
#include "core/config/config.h"
#include "core/crypto/errors.h"
#include "core/crypto/ossl_ptr.h"
#include "core/encoding.h"
#include "core/logging.h"
#include "tpm/backends.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace certagent::tpm {
namespace {

constexpr std::size_t kMaxSecretFileSize = 64 * 1024;
constexpr std::string_view kProbe = "certagent enroll: checking the stored key";

std::shared_ptr<spdlog::logger> logger() { return log::get("tpm"); }

using SecretSource = renewers::SealedSecret;
using SecretKind = renewers::SealedSecret::Format;

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\n";
  auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// Overwrites (best effort: journaling and SSDs may keep old blocks), then unlinks and syncs the
// directory.
Result<> delete_plaintext(const fs::path& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      std::string zeros(static_cast<std::size_t>(st.st_size), '\0');
      if (::write(fd, zeros.data(), zeros.size()) >= 0) (void)::fsync(fd);
    }
    ::close(fd);
  }
  return remove_file(path);
}

Result<> check_stored(Identity& identity, const SecretSource& source, const Secret& value) {
  if (source.format == SecretKind::text) {
    auto back = identity.unseal(source.name);
    if (!back) return back.error();
    if (back->view() != value.view()) return make_error("the unsealed value differs from the file");
    return {};
  }
  auto mac = identity.hmac(source.name, as_bytes(kProbe));
  if (!mac) return mac.error();
  unsigned char expected[32];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), value.data(), static_cast<int>(value.size()),
            reinterpret_cast<const unsigned char*>(kProbe.data()), kProbe.size(), expected, &len) ||
      mac->size() != len || std::memcmp(mac->data(), expected, len) != 0)
    return make_error("the stored key computes a different HMAC than the file's key");
  return {};
}

// Seals one secret file; returns false when it was already sealed and removed earlier.
Result<bool> seal_secret(Identity& identity, const SecretSource& source) {
  const std::string where = source.config_key + " " + source.file.string();
  if (auto v = validate_secret_name(source.name); !v)
    return make_error(where + ": the broker name cannot name a secret: " + v.error().message);
  struct stat st {};
  if (::lstat(source.file.c_str(), &st) == 0 && S_ISLNK(st.st_mode))
    return make_error(where + " is a symbolic link: point the config at the file itself, so that enroll can "
                      "delete it after sealing");
  auto content = read_file_secret(source.file, kMaxSecretFileSize);
  if (!content) return make_error(where + ": " + content.error().message);
  if (!*content) {
    if (identity.has_secret(source.name)) return false;
    return make_error(where + " does not exist and no sealed copy of \"" + source.name +
                      "\" is in the identity: put the secret file back and run enroll again");
  }
  const std::string_view text = trim((*content)->view());
  if (text.empty()) return make_error(where + " is empty");
  std::optional<Secret> value;
  switch (source.format) {
    case SecretKind::hmac_base64url:
      value = base64url_decode(text);
      if (!value || value->empty()) return make_error(where + " is not a base64url key");
      break;
    case SecretKind::hmac_hex:
      value = hex_decode(text);
      if (!value || value->empty()) return make_error(where + " is not a hex key");
      break;
    case SecretKind::text:
      value = Secret(std::string(text));
      break;
  }
  Result<> stored = source.format == SecretKind::text ? identity.seal(source.name, as_bytes(value->view()))
                                                           : identity.import_hmac_key(source.name, as_bytes(value->view()));
  if (!stored) return make_error(where + ": " + stored.error().message);
  if (auto c = check_stored(identity, source, *value); !c)
    return make_error(where + ": the sealed copy of \"" + source.name + "\" does not check out (" +
                      c.error().message + "); the file was kept");
  if (auto d = delete_plaintext(source.file); !d)
    return make_error(where + " was sealed as \"" + source.name + "\" but could not be deleted: " +
                      d.error().message + ": delete it yourself");
  logger()->info("event=secret_file_sealed name={} file={}", source.name, log::quote(source.file.string()));
  return true;
}

Result<crypto::EvpPkeyPtr> read_public_key(std::string_view pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  crypto::EvpPkeyPtr key(bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key) return crypto::openssl_error("reading the public key PEM");
  return key;
}

Result<> add_subject(X509_NAME* name, std::string_view subject) {
  std::string text(subject);
  if (text.empty()) {
    char host[256] = {0};
    if (::gethostname(host, sizeof host - 1) != 0 || !*host) return make_error("gethostname failed");
    text = std::string("/CN=") + host;
  } else if (text.front() != '/') {
    text = "/CN=" + text;
  }
  std::size_t pos = 1;
  while (pos <= text.size()) {
    std::size_t next = text.find('/', pos);
    if (next == std::string::npos) next = text.size();
    std::string part = text.substr(pos, next - pos);
    pos = next + 1;
    if (part.empty()) continue;
    auto eq = part.find('=');
    if (eq == std::string::npos || eq == 0)
      return make_error("CSR subject \"" + std::string(subject) + "\": expected /KEY=value/...");
    const std::string key = part.substr(0, eq), value = part.substr(eq + 1);
    if (X509_NAME_add_entry_by_txt(name, key.c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1, 0) != 1) {
      ERR_clear_error();
      return make_error("CSR subject \"" + std::string(subject) + "\": unknown attribute " + key);
    }
  }
  return {};
}

Result<> write_csr(Identity& identity, EVP_PKEY* public_key, const EnrollOptions& options) {
  crypto::X509ReqPtr req(X509_REQ_new());
  if (!req) return make_error("X509_REQ_new failed");
  if (auto s = add_subject(X509_REQ_get_subject_name(req.get()), options.csr_subject); !s) return s;
  auto key = identity.private_key();
  if (!key) return key.error();
  if (X509_REQ_set_version(req.get(), 0) != 1 || X509_REQ_set_pubkey(req.get(), public_key) != 1 ||
      X509_REQ_sign(req.get(), key->get(), EVP_sha256()) <= 0)
    return crypto::openssl_error("signing the CSR with the identity");
  if (X509_REQ_verify(req.get(), public_key) != 1)
    return crypto::openssl_error("the CSR's signature does not verify");
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509_REQ(bio.get(), req.get()) != 1)
    return crypto::openssl_error("encoding the CSR");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  if (auto w = write_file_atomic(*options.csr_out,
                                 {reinterpret_cast<const std::uint8_t*>(data), static_cast<std::size_t>(len)}, 0644);
      !w)
    return make_error("writing the CSR: " + w.error().message);
  return {};
}

}  // namespace

Result<std::string> public_key_fingerprint(std::string_view public_key_pem) {
  auto key = read_public_key(public_key_pem);
  if (!key) return key.error();
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key->get(), &der);
  if (len <= 0) return crypto::openssl_error("encoding the public key");
  unsigned char digest[32];
  unsigned int dlen = 0;
  const bool ok = EVP_Digest(der, static_cast<std::size_t>(len), digest, &dlen, EVP_sha256(), nullptr) == 1;
  OPENSSL_free(der);
  if (!ok) return crypto::openssl_error("hashing the public key");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned i = 0; i < dlen; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xf]);
  }
  return Result<std::string>(boost::system::in_place_value, std::move(hex));
}

Result<EnrollReport> enroll(const config::Config& config, const EnrollOptions& options) {
  auto opened = open_backend(config, OpenMode::create_if_missing);
  if (!opened) return opened.error();
  Identity& identity = *opened->identity;
  EnrollReport report;
  report.backend = std::string(identity.backend());
  report.created = opened->created;
  report.public_key_pem = identity.public_key_pem();
  auto fingerprint = public_key_fingerprint(report.public_key_pem);
  if (!fingerprint) return fingerprint.error();
  report.fingerprint_sha256 = std::move(*fingerprint);

  if (options.csr_out) {
    auto public_key = read_public_key(report.public_key_pem);
    if (!public_key) return public_key.error();
    if (auto c = write_csr(identity, public_key->get(), options); !c) return c.error();
    report.csr_path = options.csr_out;
  }

  for (const SecretSource& source : agent::sealed_secrets(config)) {
    auto sealed = seal_secret(identity, source);
    if (!sealed) return sealed.error();
    (*sealed ? report.sealed : report.already_sealed).push_back(source.name);
  }
  logger()->info("event=enrolled backend={} created={} fingerprint=sha256:{} sealed={} already_sealed={}",
                 report.backend, report.created, report.fingerprint_sha256, report.sealed.size(),
                 report.already_sealed.size());
  return report;
}

std::string format_report(const EnrollReport& report) {
  std::string out = report.public_key_pem;
  if (!out.empty() && out.back() != '\n') out += '\n';
  out += "sha256:" + report.fingerprint_sha256 + "\n";
  for (const auto& name : report.sealed) out += "sealed " + name + "\n";
  for (const auto& name : report.already_sealed) out += "already sealed " + name + "\n";
  if (report.csr_path) out += "csr " + report.csr_path->string() + "\n";
  return out;
}

}  // namespace certagent::tpm
