#include "core/crypto/x509.h"

#include "core/crypto/csr.h"
#include "core/crypto/errors.h"
#include "core/crypto/keys.h"
#include "core/time_format.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace certagent::crypto {
namespace {

constexpr std::string_view kBegin = "-----BEGIN ";
constexpr std::string_view kBeginCert = "-----BEGIN CERTIFICATE-----";
constexpr std::string_view kEndCert = "-----END CERTIFICATE-----";
constexpr std::size_t kMaxTrustBundleBytes = 8 * 1024 * 1024;

struct X509StackFree {  // the stack only borrows its certificates
  void operator()(STACK_OF(X509) * s) const noexcept { sk_X509_free(s); }
};
using BorrowedX509StackPtr = std::unique_ptr<STACK_OF(X509), X509StackFree>;

struct OpensslFree {
  void operator()(void* p) const noexcept { OPENSSL_free(p); }
};
template <class T>
using OpensslPtr = std::unique_ptr<T, OpensslFree>;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::size_t line_of(std::string_view text, std::size_t pos) {
  std::size_t line = 1;
  for (std::size_t i = 0; i < pos && i < text.size(); ++i) line += text[i] == '\n';
  return line;
}

std::string to_hex(const unsigned char* data, std::size_t len) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (std::size_t i = 0; i < len; ++i) {
    out += kHex[data[i] >> 4];
    out += kHex[data[i] & 15];
  }
  return out;
}

// The label of a "-----BEGIN X-----" line, for messages: never more than the label itself.
std::string pem_label(std::string_view text, std::size_t pos) {
  const std::size_t start = pos + kBegin.size();
  const std::size_t end = text.find("-----", start);
  const std::size_t eol = text.find('\n', start);
  if (end == std::string_view::npos || (eol != std::string_view::npos && end > eol) || end - start > 40) {
    return "malformed PEM header";
  }
  return std::string(text.substr(start, end - start));
}

Result<X509Ptr> decode_block(std::string_view block, std::size_t index) {
  const std::string which = "certificate #" + std::to_string(index);
  BioPtr bio(BIO_new_mem_buf(block.data(), static_cast<int>(block.size())));
  if (!bio) return openssl_error("allocating a memory BIO");
  char* name_raw = nullptr;
  char* header_raw = nullptr;
  unsigned char* data_raw = nullptr;
  long len = 0;
  const int ok = PEM_read_bio(bio.get(), &name_raw, &header_raw, &data_raw, &len);
  OpensslPtr<char> name(name_raw);
  OpensslPtr<char> header(header_raw);
  OpensslPtr<unsigned char> data(data_raw);
  if (ok != 1) return openssl_error(which + " is not valid PEM (bad base64 or truncated)");
  const unsigned char* p = data.get();
  X509Ptr cert(d2i_X509(nullptr, &p, len));
  if (!cert) return openssl_error(which + " is not a valid X.509 certificate (truncated or corrupt DER)");
  if (p != data.get() + len) {
    return make_error(which + " has " + std::to_string(data.get() + len - p) +
                      " unexpected bytes after the certificate DER");
  }
  return cert;
}

}  // namespace

Result<std::vector<X509Ptr>> parse_chain(std::string_view pem, std::size_t max_certs,
                                         std::size_t max_bytes) {
  if (pem.size() > max_bytes) {
    return make_error("chain is " + std::to_string(pem.size()) + " bytes, more than the limit of " +
                      std::to_string(max_bytes));
  }
  std::vector<X509Ptr> chain;
  std::size_t pos = 0;
  while (true) {
    while (pos < pem.size() && is_space(pem[pos])) ++pos;
    if (pos == pem.size()) break;
    if (pem.substr(pos, kBegin.size()) != kBegin) {
      if (chain.empty()) {
        return make_error("chain is not PEM: expected \"-----BEGIN CERTIFICATE-----\" at line " +
                          std::to_string(line_of(pem, pos)));
      }
      return make_error("unexpected text after certificate #" + std::to_string(chain.size()) +
                        " at line " + std::to_string(line_of(pem, pos)) +
                        " (only whitespace may follow an END line)");
    }
    if (pem.substr(pos, kBeginCert.size()) != kBeginCert) {
      return make_error("PEM block #" + std::to_string(chain.size() + 1) + " at line " +
                        std::to_string(line_of(pem, pos)) + " is a \"" + pem_label(pem, pos) +
                        "\", expected only CERTIFICATE blocks");
    }
    if (chain.size() == max_certs) {
      return make_error("chain holds more than " + std::to_string(max_certs) + " certificates");
    }
    const std::size_t index = chain.size() + 1;
    const std::size_t end = pem.find(kEndCert, pos + kBeginCert.size());
    const std::size_t next_begin = pem.find(kBegin, pos + kBeginCert.size());
    if (end == std::string_view::npos || (next_begin != std::string_view::npos && next_begin < end)) {
      return make_error("certificate #" + std::to_string(index) + " starting at line " +
                        std::to_string(line_of(pem, pos)) +
                        " is truncated: no \"-----END CERTIFICATE-----\" line");
    }
    const std::size_t block_end = end + kEndCert.size();
    auto cert = decode_block(pem.substr(pos, block_end - pos), index);
    if (!cert) return cert.error();
    chain.push_back(std::move(*cert));
    pos = block_end;
  }
  if (chain.empty()) return make_error("chain is empty: no certificate");
  return chain;
}

std::string to_pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || !cert || PEM_write_bio_X509(bio.get(), cert) != 1) {
    clear_openssl_errors();
    return {};
  }
  return bio_to_string(bio.get());
}

Result<SystemTime> to_system_time(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return openssl_error("unreadable certificate time");
  const time_t secs = timegm(&tm);
  return system_time_from_time_t(secs);
}

CertInfo describe(X509* cert) {
  CertInfo info;
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  if (serial) {
    if (ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER) info.serial_hex = "-";
    const int len = ASN1_STRING_length(serial);
    info.serial_hex += len > 0 ? to_hex(ASN1_STRING_get0_data(serial), static_cast<std::size_t>(len)) : "00";
  }
  if (auto t = to_system_time(X509_get0_notBefore(cert))) info.not_before = *t;
  if (auto t = to_system_time(X509_get0_notAfter(cert))) info.not_after = *t;

  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &md_len) == 1) info.sha256_hex = to_hex(md, md_len);

  info.subject_cns = common_names(X509_get_subject_name(cert));
  if (!info.subject_cns.empty()) info.subject_cn = info.subject_cns.back();
  const auto issuer_cns = common_names(X509_get_issuer_name(cert));
  if (!issuer_cns.empty()) info.issuer_cn = issuer_cns.back();

  int critical = 0;
  GeneralNamesPtr gens(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, &critical, nullptr)));
  if (gens) {
    SubjectNames names;
    append_general_names(gens.get(), names, info.other_names);
    info.dns_names = std::move(names.dns_names);
    info.ip_addresses = std::move(names.ip_addresses);
    info.uris = std::move(names.uris);
  } else if (critical == -2) {
    info.other_names.push_back("duplicate subjectAltName extension");
  } else if (critical >= 0) {
    info.other_names.push_back("malformed subjectAltName extension");
  }
  clear_openssl_errors();
  return info;
}

std::string subject_for_messages(X509* cert) {
  if (!cert) return "<none>";
  const auto cns = common_names(X509_get_subject_name(cert));
  if (!cns.empty()) return "CN=" + cns.back();
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) return "<subject>";
  X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_ONELINE);
  std::string s = bio_to_string(bio.get());
  return s.empty() ? "<empty subject>" : s;
}

Result<std::string> read_small_file(const std::filesystem::path& path, std::size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return make_error("cannot open " + path.string() + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st{};
  if (fstat(fd, &st) != 0) return make_error("cannot stat " + path.string() + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return make_error(path.string() + " is not a regular file");
  if (static_cast<std::size_t>(st.st_size) > max_bytes) {
    return make_error(path.string() + " is " + std::to_string(st.st_size) + " bytes, more than " +
                      std::to_string(max_bytes));
  }
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error("cannot read " + path.string() + ": " + std::strerror(errno));
    if (n == 0) break;  // shrank meanwhile
    done += static_cast<std::size_t>(n);
  }
  out.resize(done);
  return Result<std::string>(boost::system::in_place_value, std::move(out));
}

Result<X509StorePtr> trust_store_from_pem(std::string_view pem) {
  if (pem.size() > kMaxTrustBundleBytes) {
    return make_error("trust bundle is " + std::to_string(pem.size()) + " bytes, more than " +
                      std::to_string(kMaxTrustBundleBytes));
  }
  X509StorePtr store(X509_STORE_new());
  if (!store) return openssl_error("allocating a trust store");
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return openssl_error("allocating a memory BIO");
  clear_openssl_errors();
  std::size_t count = 0;
  while (true) {
    X509Ptr cert(PEM_read_bio_X509_AUX(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    ++count;
    if (X509_STORE_add_cert(store.get(), cert.get()) != 1) {
      // The same certificate twice in a bundle is harmless.
      const unsigned long e = ERR_peek_last_error();
      if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE) {
        return openssl_error("adding certificate #" + std::to_string(count) + " to the trust store");
      }
      clear_openssl_errors();
    }
  }
  const unsigned long e = ERR_peek_last_error();
  if (e != 0 && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
    return openssl_error("trust bundle certificate #" + std::to_string(count + 1) +
                         " is unreadable (truncated or corrupt)");
  }
  clear_openssl_errors();
  if (count == 0) return make_error("trust bundle holds no PEM certificate");
  X509_STORE_set_flags(store.get(), X509_V_FLAG_PARTIAL_CHAIN);
  return store;
}

Result<X509StorePtr> load_trust_store(const std::filesystem::path& path) {
  auto text = read_small_file(path, kMaxTrustBundleBytes);
  if (!text) return with_context("trust bundle", text.error());
  auto store = trust_store_from_pem(*text);
  if (!store) return with_context(path.string(), store.error());
  return store;
}

Result<> verify_chain(X509* leaf, const std::vector<X509*>& intermediates, X509_STORE* store,
                      SystemTime at) {
  if (!leaf || !store) return make_error("verify_chain: no leaf or no trust store");
  BorrowedX509StackPtr untrusted(sk_X509_new_null());
  if (!untrusted) return openssl_error("allocating the chain");
  for (X509* cert : intermediates) {
    if (sk_X509_push(untrusted.get(), cert) == 0) return openssl_error("building the chain");
  }
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store, leaf, untrusted.get()) != 1) {
    return openssl_error("initialising chain verification");
  }
  X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_ANY);
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx.get()),
                             std::chrono::system_clock::to_time_t(at));
  const int ok = X509_verify_cert(ctx.get());
  if (ok == 1) {
    clear_openssl_errors();
    return {};
  }
  if (ok < 0) return openssl_error("chain verification failed internally");
  const int err = X509_STORE_CTX_get_error(ctx.get());
  const int depth = X509_STORE_CTX_get_error_depth(ctx.get());
  X509* current = X509_STORE_CTX_get_current_cert(ctx.get());
  clear_openssl_errors();
  return make_error("chain does not verify to the trust bundle: " +
                    std::string(X509_verify_cert_error_string(err)) + " (depth " +
                    std::to_string(depth) + ", " + subject_for_messages(current) + ")");
}

}  // namespace certagent::crypto
