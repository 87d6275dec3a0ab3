#include "renewers/local_renewer.h"

#include "core/crypto/csr.h"
#include "core/crypto/errors.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "core/logging.h"
#include "core/time_format.h"

#include <fcntl.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace certagent::renewers {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr std::string_view kKeyFile = "key.pem";
constexpr std::string_view kRootFile = "root.pem";
constexpr std::size_t kMaxCaFileBytes = 64 * 1024;
constexpr auto kRootBackdate = std::chrono::hours(1);
constexpr auto kRootLifetime = std::chrono::hours(24 * 3650);  // ten years
constexpr auto kMaxLeafBackdate = std::chrono::seconds(60);

const SystemClock kSystemClock;

std::shared_ptr<spdlog::logger> logger() { return log::get("renewer.local"); }

std::string errno_text() { return std::strerror(errno); }

struct Fd {
  int fd{-1};
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// O_EXCL in a fresh directory, explicit mode (umask does not apply to fchmod), fsynced.
Result<> write_new_file(const fs::path& path, std::string_view data, mode_t mode) {
  Fd f{::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)};
  if (f.fd < 0) return make_error("cannot create " + path.string() + ": " + errno_text());
  if (::fchmod(f.fd, mode) != 0) return make_error("cannot chmod " + path.string() + ": " + errno_text());
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(f.fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error("cannot write " + path.string() + ": " + errno_text());
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(f.fd) != 0) return make_error("cannot fsync " + path.string() + ": " + errno_text());
  const int fd = f.fd;
  f.fd = -1;
  if (::close(fd) != 0) return make_error("cannot close " + path.string() + ": " + errno_text());
  return {};
}

Result<> fsync_dir(const fs::path& dir) {
  Fd f{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (f.fd < 0 || ::fsync(f.fd) != 0) return make_error("cannot fsync directory " + dir.string() + ": " + errno_text());
  return {};
}

Result<> random_serial(X509* cert) {
  unsigned char bytes[16];
  crypto::BignumPtr bn;
  do {
    if (RAND_bytes(bytes, sizeof bytes) != 1) return crypto::openssl_error("generating a serial number");
    bn.reset(BN_bin2bn(bytes, sizeof bytes, nullptr));
    if (!bn) return crypto::openssl_error("generating a serial number");
  } while (BN_is_zero(bn.get()));
  if (!BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert))) {
    return crypto::openssl_error("setting the serial number");
  }
  return {};
}

Result<> set_validity(X509* cert, SystemTime not_before, SystemTime not_after) {
  if (!ASN1_TIME_set(X509_getm_notBefore(cert), std::chrono::system_clock::to_time_t(not_before)) ||
      !ASN1_TIME_set(X509_getm_notAfter(cert), std::chrono::system_clock::to_time_t(not_after))) {
    return crypto::openssl_error("setting the validity period");
  }
  return {};
}

Result<> set_common_name(X509* cert, std::string_view cn) {
  X509_NAME* subject = X509_get_subject_name(cert);
  if (X509_NAME_add_entry_by_NID(subject, NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.data()),
                                 static_cast<int>(cn.size()), -1, 0) != 1) {
    return crypto::openssl_error("setting the common name \"" + std::string(cn) + "\"");
  }
  return {};
}

// One extension from its openssl.cnf spelling ("critical,CA:TRUE"); issuer/subject in `ctx`.
Result<> add_extension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  crypto::X509ExtPtr ext(X509V3_EXT_nconf_nid(nullptr, ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return crypto::openssl_error(std::string("adding extension ") + OBJ_nid2sn(nid) + "=" + value);
  }
  return {};
}

Result<crypto::X509Ptr> make_root(EVP_PKEY* key, SystemTime now) {
  crypto::X509Ptr root(X509_new());
  if (!root || X509_set_version(root.get(), X509_VERSION_3) != 1) return crypto::openssl_error("allocating the root");
  if (auto r = random_serial(root.get()); !r) return r.error();
  if (auto r = set_common_name(root.get(), LocalRenewer::kRootCommonName); !r) return r.error();
  if (X509_set_issuer_name(root.get(), X509_get_subject_name(root.get())) != 1) {
    return crypto::openssl_error("setting the root issuer");
  }
  const SystemTime not_before = std::chrono::time_point_cast<std::chrono::seconds>(now) - kRootBackdate;
  if (auto r = set_validity(root.get(), not_before, not_before + kRootLifetime); !r) return r.error();
  if (X509_set_pubkey(root.get(), key) != 1) return crypto::openssl_error("setting the root key");
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, root.get(), root.get(), nullptr, nullptr, 0);
  for (auto [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE"},
                            std::pair{NID_key_usage, "critical,keyCertSign,cRLSign"},
                            std::pair{NID_subject_key_identifier, "hash"}}) {
    if (auto r = add_extension(root.get(), &ctx, nid, value); !r) return r.error();
  }
  if (X509_sign(root.get(), key, EVP_sha256()) <= 0) return crypto::openssl_error("signing the root");
  return root;
}

std::string recovery_hint(const fs::path& dir) {
  return ". The development CA is never replaced automatically: restore the file, or remove " +
         dir.string() + " to create a new CA (certificates it issued will stop verifying)";
}

struct LoadedCa {
  crypto::EvpPkeyPtr key;
  crypto::X509Ptr root;
};

Result<LoadedCa> load_ca(const fs::path& dir) {
  const fs::path key_path = dir / kKeyFile;
  const fs::path root_path = dir / kRootFile;
  auto key_text = crypto::read_small_file(key_path, kMaxCaFileBytes);
  if (!key_text) return make_error("development CA key: " + key_text.error().message + recovery_hint(dir));
  const Secret key_pem(std::move(*key_text));
  struct stat st{};
  if (::stat(key_path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    logger()->warn("event=development_ca_key_readable path={} mode={:04o}", log::quote(key_path.string()),
                   st.st_mode & 07777);
  }
  auto key = crypto::parse_private_key(key_pem.view());
  if (!key) {
    return make_error("development CA key " + key_path.string() + " is corrupt: " + key.error().message +
                      recovery_hint(dir));
  }
  auto root_text = crypto::read_small_file(root_path, kMaxCaFileBytes);
  if (!root_text) return make_error("development CA root: " + root_text.error().message + recovery_hint(dir));
  auto root = crypto::parse_chain(*root_text, 1);
  if (!root) {
    return make_error("development CA root " + root_path.string() + " is corrupt: " + root.error().message +
                      recovery_hint(dir));
  }
  X509* cert = root->front().get();
  EVP_PKEY* root_key = X509_get0_pubkey(cert);
  if (!root_key || !crypto::same_public_key(root_key, key->get())) {
    crypto::clear_openssl_errors();
    return make_error("development CA files do not belong together: " + key_path.string() +
                      " is not the key of " + root_path.string() + recovery_hint(dir));
  }
  if (X509_check_ca(cert) == 0) {
    return make_error("development CA root " + root_path.string() + " is not a CA certificate" +
                      recovery_hint(dir));
  }
  return LoadedCa{std::move(*key), std::move(root->front())};
}

// Builds the CA in a fresh sibling directory and renames it into place, so <dir> either does
// not exist or holds a complete CA, whatever happens. Returns false when another process won
// the race (its CA is then loaded).
Result<bool> create_ca(const fs::path& state_dir, const fs::path& dir, SystemTime now) {
  std::error_code ec;
  if (!fs::exists(state_dir, ec)) {
    fs::create_directories(state_dir, ec);
    if (ec) return make_error("cannot create state_dir " + state_dir.string() + ": " + ec.message());
    fs::permissions(state_dir, fs::perms::owner_all, ec);
  }
  unsigned char rnd[8];
  if (RAND_bytes(rnd, sizeof rnd) != 1) return crypto::openssl_error("random temp name");
  std::string suffix;
  for (unsigned char b : rnd) suffix += "0123456789abcdef"[b >> 4], suffix += "0123456789abcdef"[b & 15];
  const fs::path tmp = state_dir / (".local-ca.tmp-" + std::to_string(::getpid()) + "-" + suffix);
  if (::mkdir(tmp.c_str(), 0755) != 0) return make_error("cannot create " + tmp.string() + ": " + errno_text());
  struct Cleanup {
    fs::path path;
    bool armed{true};
    ~Cleanup() {
      std::error_code ignored;
      if (armed) fs::remove_all(path, ignored);
    }
  } cleanup{tmp};
  ::chmod(tmp.c_str(), 0755);  // umask-independent: root.pem is meant to be read

  auto key = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  if (!key) return key.error();
  auto root = make_root(key->get(), now);
  if (!root) return root.error();
  auto key_pem = crypto::private_key_pem(key->get());
  if (!key_pem) return key_pem.error();
  if (auto r = write_new_file(tmp / kKeyFile, key_pem->view(), 0600); !r) return r.error();
  if (auto r = write_new_file(tmp / kRootFile, crypto::to_pem(root->get()), 0644); !r) return r.error();
  if (auto r = fsync_dir(tmp); !r) return r.error();
  // rename(2) replaces an empty directory (e.g. one made by tmpfiles.d) but never a full one.
  if (::rename(tmp.c_str(), dir.c_str()) != 0) {
    if (errno == EEXIST || errno == ENOTEMPTY) return false;
    return make_error("cannot move the new CA into " + dir.string() + ": " + errno_text());
  }
  cleanup.armed = false;
  if (auto r = fsync_dir(state_dir); !r) return r.error();
  logger()->warn("event=development_ca_created dir={} not_after={} note={}", log::quote(dir.string()),
                 format_rfc3339(crypto::describe(root->get()).not_after),
                 log::quote("for development only, never for production"));
  return true;
}

Result<LoadedCa> load_or_create(const fs::path& state_dir, const Clock& clock) {
  const fs::path dir = LocalRenewer::ca_dir(state_dir);
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::error_code ec;
    const bool has_key = fs::symlink_status(dir / kKeyFile, ec).type() != fs::file_type::not_found;
    const bool has_root = fs::symlink_status(dir / kRootFile, ec).type() != fs::file_type::not_found;
    if (has_key && has_root) return load_ca(dir);
    if (has_key != has_root) {
      return make_error("development CA in " + dir.string() + " is incomplete: " +
                        std::string(has_key ? kRootFile : kKeyFile) + " is missing" + recovery_hint(dir));
    }
    const auto dir_status = fs::symlink_status(dir, ec);
    if (dir_status.type() != fs::file_type::not_found) {
      if (dir_status.type() != fs::file_type::directory) {
        return make_error(dir.string() + " exists and is not a directory");
      }
      if (!fs::is_empty(dir, ec)) {
        return make_error(dir.string() + " holds other files but no development CA: remove them");
      }
    }
    auto created = create_ca(state_dir, dir, clock.now());
    if (!created) return with_context("creating the development CA in " + dir.string(), created.error());
    // Created by us or by a concurrent process: load what is now in place.
  }
  return make_error("development CA in " + dir.string() + " could not be created");
}

}  // namespace

fs::path LocalRenewer::ca_dir(const fs::path& state_dir) { return state_dir / "local-ca"; }

fs::path LocalRenewer::root_path(const fs::path& state_dir) { return ca_dir(state_dir) / kRootFile; }

LocalRenewer::LocalRenewer(crypto::EvpPkeyPtr key, crypto::X509Ptr root, fs::path root_file,
                           const Clock* clock)
    : key_(std::move(key)),
      root_(std::move(root)),
      root_not_after_(crypto::describe(root_.get()).not_after),
      root_file_(std::move(root_file)),
      clock_(clock) {}

Result<std::unique_ptr<LocalRenewer>> LocalRenewer::open(const fs::path& state_dir, const Clock* clock) {
  if (!clock) clock = &kSystemClock;
  auto ca = load_or_create(state_dir, *clock);
  if (!ca) return ca.error();
  const auto info = crypto::describe(ca->root.get());
  logger()->warn("event=development_ca_in_use root={} not_after={} note={}",
                 log::quote(root_path(state_dir).string()), format_rfc3339(info.not_after),
                 log::quote("certificates from a broker of type local are for development only, never "
                            "for production"));
  return std::unique_ptr<LocalRenewer>(
      new LocalRenewer(std::move(ca->key), std::move(ca->root), root_path(state_dir), clock));
}

Result<std::unique_ptr<LocalRenewer>> LocalRenewer::open(const RenewerContext& context) {
  return open(context.state_dir, context.clock);
}

Result<fs::path> LocalRenewer::ensure_ca(const fs::path& state_dir, const Clock* clock) {
  auto ca = load_or_create(state_dir, clock ? *clock : kSystemClock);
  if (!ca) return ca.error();
  return Result<fs::path>(boost::system::in_place_value, root_path(state_dir));
}

boost::asio::awaitable<Result<IssueResult>> LocalRenewer::issue(IssueRequest request) {
  co_return issue_now(request);
}

Result<IssueResult> LocalRenewer::issue_now(const IssueRequest& request) {
  const SystemTime now = std::chrono::time_point_cast<std::chrono::seconds>(clock_->now());
  const auto lifetime = std::chrono::duration_cast<std::chrono::seconds>(request.lifetime);
  if (lifetime < 1s) {
    Error e = make_error("local CA: requested lifetime must be at least 1s");
    e.configuration = true;
    return e;
  }
  const crypto::SubjectNames requested{request.common_name, request.dns_names, request.ip_addresses,
                                       request.uris};
  if (requested.common_name.empty() && !requested.has_alt_names()) {
    Error e = make_error("local CA: the request names nothing (no common name, DNS name, IP or URI)");
    e.configuration = true;
    return e;
  }

  auto req = crypto::parse_csr(request.csr_pem);
  if (!req) return with_context("local CA: CSR", req.error());
  if (auto ok = crypto::verify_csr_signature(req->get()); !ok) return with_context("local CA", ok.error());
  auto csr_names = crypto::csr_names(req->get());
  if (!csr_names) return with_context("local CA", csr_names.error());
  if (auto diff = crypto::name_differences(requested, *csr_names); !diff.empty()) {
    std::string text;
    for (const auto& d : diff) text += (text.empty() ? "" : "; ") + d;
    return make_error("local CA: the CSR's names differ from the request (CSR " + text + ")");
  }

  if (now >= root_not_after_) {
    Error e = make_error("local CA: the development root expired at " + format_rfc3339(root_not_after_) +
                         "; remove " + root_file_.parent_path().string() + " to create a new one");
    e.configuration = true;
    return e;
  }

  const auto backdate = std::min<std::chrono::seconds>(kMaxLeafBackdate, lifetime / 10);
  const SystemTime not_before = now - backdate;
  const SystemTime not_after = not_before + lifetime;

  crypto::X509Ptr leaf(X509_new());
  if (!leaf || X509_set_version(leaf.get(), X509_VERSION_3) != 1) {
    return crypto::openssl_error("local CA: allocating a certificate");
  }
  auto fail = [](const Error& e) { return with_context("local CA", e); };
  if (auto r = random_serial(leaf.get()); !r) return fail(r.error());
  if (X509_set_issuer_name(leaf.get(), X509_get_subject_name(root_.get())) != 1) {
    return crypto::openssl_error("local CA: setting the issuer");
  }
  if (!requested.common_name.empty()) {
    if (auto r = set_common_name(leaf.get(), requested.common_name); !r) return fail(r.error());
  }
  if (auto r = set_validity(leaf.get(), not_before, not_after); !r) return fail(r.error());
  EVP_PKEY* leaf_key = X509_REQ_get0_pubkey(req->get());  // decoded (and verified) above
  if (auto r = crypto::copy_public_key(req->get(), leaf.get()); !r) return fail(r.error());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, root_.get(), leaf.get(), nullptr, nullptr, 0);
  const bool rsa = EVP_PKEY_is_a(leaf_key, "RSA");
  for (auto [nid, value] :
       {std::pair{NID_basic_constraints, "critical,CA:FALSE"},
        std::pair{NID_key_usage, rsa ? "critical,digitalSignature,keyEncipherment" : "critical,digitalSignature"},
        std::pair{NID_ext_key_usage, "serverAuth,clientAuth"},
        std::pair{NID_subject_key_identifier, "hash"},
        std::pair{NID_authority_key_identifier, "keyid:always"}}) {
    if (auto r = add_extension(leaf.get(), &ctx, nid, value); !r) return fail(r.error());
  }
  if (requested.has_alt_names()) {
    auto san = crypto::subject_alt_name_extension(requested, requested.common_name.empty());
    if (!san) return fail(san.error());
    if (X509_add_ext(leaf.get(), san->get(), -1) != 1) return crypto::openssl_error("local CA: adding subjectAltName");
  }
  if (X509_sign(leaf.get(), key_.get(), EVP_sha256()) <= 0) return crypto::openssl_error("local CA: signing");

  const auto info = crypto::describe(leaf.get());
  logger()->info("event=local_issued cert={} serial={} not_before={} not_after={}",
                 log::quote(request.cert_name), info.serial_hex, format_rfc3339(info.not_before),
                 format_rfc3339(info.not_after));
  IssueResult result;
  result.chain_pem = crypto::to_pem(leaf.get());
  return result;
}

}  // namespace certagent::renewers
