#include "agent/file_sink.h"

#include "core/crypto/keys.h"
#include "core/crypto/pkcs12.h"
#include "core/crypto/ossl_ptr.h"
#include "core/crypto/x509.h"
#include "core/logging.h"
#include "core/time_format.h"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <span>
#include <utility>

namespace certagent {
namespace {

using fs_util::errno_error;
using fs_util::UniqueFd;
namespace fs = std::filesystem;

constexpr char kDataLink[] = "..data";
constexpr std::string_view kDataTmpPrefix = "..data.tmp-";
constexpr mode_t kPublicMode = 0644;
constexpr mode_t kSecretMode = 0600;
constexpr mode_t kDirMode = 0755;
// Generous for PEM chains and meta.json; anything bigger is not ours.
constexpr std::size_t kMaxFileSize = 1 << 20;
// "2026-11-22T10-15-30.123456Z": d = digit, other characters literal.
constexpr std::string_view kTimestampTemplate = "dddd-dd-ddTdd-dd-dd.ddddddZ";

// The certificate, key and chain are read with the same strict parsers validation uses: what
// the sink checks on commit and on load is what validation accepted.
Result<crypto::X509Ptr> parse_cert(std::string_view pem, std::string_view what) {
  auto certs = crypto::parse_chain(pem, 1);
  if (!certs) return with_context(what, certs.error());
  return std::move(certs->front());
}

Result<crypto::EvpPkeyPtr> parse_key(std::string_view pem, std::string_view what) {
  auto key = crypto::parse_private_key(pem);
  // The reason names only the PEM structure, never key bytes.
  if (!key) return with_context(what, key.error());
  return key;
}

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c) != 0; });
}

Result<> check_chain(std::string_view pem, std::string_view what) {
  if (is_blank(pem)) return {};
  if (auto chain = crypto::parse_chain(pem); !chain) return with_context(what, chain.error());
  return {};
}

Result<> check_key_matches(X509* cert, EVP_PKEY* key, std::string_view what) {
  ERR_clear_error();
  if (X509_check_private_key(cert, key) != 1) {
    ERR_clear_error();
    return make_error(std::string(what) + ": the private key does not match the certificate");
  }
  return {};
}

std::string lowercase(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// For comparing serials written in different styles: lowercase hex digits, no leading zeros.
std::string normalize_hex(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::isxdigit(static_cast<unsigned char>(c))) {
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
  }
  auto nz = out.find_first_not_of('0');
  return nz == std::string::npos ? "0" : out.substr(nz);
}

// Serial, SHA-256 and validity as validation computes them; a time OpenSSL cannot read is an
// error here (describe() alone would leave it at the epoch).
Result<crypto::CertInfo> cert_facts(X509* cert) {
  if (auto t = crypto::to_system_time(X509_get0_notBefore(cert)); !t) {
    return with_context("certificate notBefore", t.error());
  }
  if (auto t = crypto::to_system_time(X509_get0_notAfter(cert)); !t) {
    return with_context("certificate notAfter", t.error());
  }
  return crypto::describe(cert);
}

// A newline between concatenated PEM blocks when the first lacks one.
std::string_view separator(std::string_view before) {
  return before.empty() || before.back() == '\n' ? std::string_view() : std::string_view("\n");
}

using Micros = std::chrono::microseconds;

std::string format_generation_time(std::chrono::sys_time<Micros> t) {
  auto secs = std::chrono::floor<std::chrono::seconds>(t);
  auto micros = (t - secs).count();
  std::time_t tt = std::chrono::system_clock::to_time_t(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[48];
  std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H-%M-%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%06lldZ", static_cast<long long>(micros));
  return buf;
}

std::optional<std::chrono::sys_time<Micros>> parse_generation_time(std::string_view name) {
  if (!FileSink::is_generation_name(name)) return std::nullopt;
  std::string ts(name.substr(2, kTimestampTemplate.size()));
  std::tm tm{};
  int micros = 0;
  if (std::sscanf(ts.c_str(), "%4d-%2d-%2dT%2d-%2d-%2d.%6dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &micros) != 7) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  const SystemTime secs = system_time_from_time_t(timegm(&tm));
  // Only names the sink wrote are generations: their times fit with room to spare.
  if (secs == SystemTime::max() || secs == SystemTime::min()) return std::nullopt;
  return std::chrono::time_point_cast<Micros>(secs) + Micros(micros);
}

// Order of commits: by timestamp, then by name (the -N suffix of a same-instant collision).
bool generation_less(const std::string& a, const std::string& b) {
  auto ta = std::string_view(a).substr(2, kTimestampTemplate.size());
  auto tb = std::string_view(b).substr(2, kTimestampTemplate.size());
  if (ta != tb) return ta < tb;
  if (a.size() != b.size()) return a.size() < b.size();
  return a < b;
}

struct Ownership {
  uid_t uid{static_cast<uid_t>(-1)};
  gid_t gid{static_cast<gid_t>(-1)};
  bool any() const { return uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1); }
};

std::optional<unsigned long> parse_number(std::string_view s) {
  unsigned long v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

Result<Ownership> resolve_ownership(const config::FilesConfig& files) {
  Ownership o;
  long size = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(static_cast<std::size_t>(size > 0 ? size : 16384));
  if (!files.owner.empty()) {
    while (true) {
      passwd pw{};
      passwd* found = nullptr;
      int rc = getpwnam_r(files.owner.c_str(), &pw, buf.data(), buf.size(), &found);
      if (rc == ERANGE) {
        buf.resize(buf.size() * 2);
        continue;
      }
      if (found) {
        o.uid = pw.pw_uid;
      } else if (auto n = parse_number(files.owner)) {
        o.uid = static_cast<uid_t>(*n);
      } else if (rc != 0) {
        return errno_error("files.owner: looking up user \"" + files.owner + "\"", rc);
      } else {
        return make_error("files.owner: no such user \"" + files.owner + "\"");
      }
      break;
    }
  }
  if (!files.group.empty()) {
    long gsize = sysconf(_SC_GETGR_R_SIZE_MAX);
    if (gsize > 0 && buf.size() < static_cast<std::size_t>(gsize)) buf.resize(gsize);
    while (true) {
      group gr{};
      group* found = nullptr;
      int rc = getgrnam_r(files.group.c_str(), &gr, buf.data(), buf.size(), &found);
      if (rc == ERANGE) {
        buf.resize(buf.size() * 2);
        continue;
      }
      if (found) {
        o.gid = gr.gr_gid;
      } else if (auto n = parse_number(files.group)) {
        o.gid = static_cast<gid_t>(*n);
      } else if (rc != 0) {
        return errno_error("files.group: looking up group \"" + files.group + "\"", rc);
      } else {
        return make_error("files.group: no such group \"" + files.group + "\"");
      }
      break;
    }
  }
  return o;
}

// The symlink target at `name` relative to dirfd; nullopt with errno set when it is not one.
std::optional<std::string> read_link_at(int dirfd, const char* name) {
  char buf[512];
  ssize_t n = ::readlinkat(dirfd, name, buf, sizeof buf);
  if (n < 0) return std::nullopt;
  if (static_cast<std::size_t>(n) >= sizeof buf) {
    errno = ENAMETOOLONG;
    return std::nullopt;
  }
  return std::string(buf, static_cast<std::size_t>(n));
}

// Points `name` at `target` atomically: a temp symlink renamed over it (replacing a file or a
// symlink; a directory there makes rename fail).
Result<> swap_symlink(int dirfd, const fs::path& dir, const std::string& name,
                      const std::string& target, std::string_view tmp_prefix) {
  std::string tmp;
  for (int attempt = 0;; ++attempt) {
    tmp = std::string(tmp_prefix) + fs_util::random_hex(8);
    if (::symlinkat(target.c_str(), dirfd, tmp.c_str()) == 0) break;
    if (errno != EEXIST || attempt >= 16) {
      return errno_error("creating symlink " + (dir / tmp).string(), errno);
    }
  }
  if (::renameat(dirfd, tmp.c_str(), dirfd, name.c_str()) != 0) {
    int err = errno;
    ::unlinkat(dirfd, tmp.c_str(), 0);
    return errno_error("renaming " + (dir / tmp).string() + " over " + (dir / name).string(), err);
  }
  return {};
}

// Our temp symlinks: "..data.tmp-<hex>" and "..<file>.tmp-<hex>".
bool is_our_temp_name(std::string_view name) {
  if (name.substr(0, 2) != "..") return false;
  auto pos = name.rfind(".tmp-");
  if (pos == std::string_view::npos) return false;
  auto base = name.substr(2, pos - 2);
  if (base != "data") {
    const auto& names = FileSink::file_names();
    const auto& p12 = FileSink::pkcs12_file_names();
    if (std::find(names.begin(), names.end(), base) == names.end() &&
        std::find(p12.begin(), p12.end(), base) == p12.end())
      return false;
  }
  auto rand = name.substr(pos + 5);
  return !rand.empty() && std::all_of(rand.begin(), rand.end(), [](char c) {
    return std::isxdigit(static_cast<unsigned char>(c)) != 0;
  });
}

struct DirListing {
  std::optional<std::string> current;       // ..data's target when it is a live generation
  std::vector<std::string> generations;     // all generation directories, commit order
  std::vector<std::string> temp_links;      // our stale temp symlinks
};

Result<DirListing> list_dir(int dirfd, const fs::path& dir) {
  DirListing out;
  int dupfd = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  if (dupfd < 0) return errno_error("listing " + dir.string(), errno);
  std::unique_ptr<DIR, crypto::CDeleter<closedir>> d(::fdopendir(dupfd));
  if (!d) {
    int err = errno;
    ::close(dupfd);
    return errno_error("listing " + dir.string(), err);
  }
  ::rewinddir(d.get());
  while (true) {
    errno = 0;
    dirent* e = ::readdir(d.get());
    if (!e) {
      if (errno != 0) return errno_error("listing " + dir.string(), errno);
      break;
    }
    std::string_view name = e->d_name;
    if (FileSink::is_generation_name(name)) {
      struct stat st {};
      if (::fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
        out.generations.emplace_back(name);
      }
    } else if (is_our_temp_name(name)) {
      struct stat st {};
      if (::fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
        out.temp_links.emplace_back(name);
      }
    }
  }
  std::sort(out.generations.begin(), out.generations.end(), generation_less);
  if (auto target = read_link_at(dirfd, kDataLink)) {
    if (std::find(out.generations.begin(), out.generations.end(), *target) !=
        out.generations.end()) {
      out.current = *target;
    }
  }
  return out;
}

Result<UniqueFd> open_dir(const fs::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return errno_error("opening directory " + dir.string(), errno);
  return fd;
}

// One writer per directory: the lock lives on the directory's open file description and is
// released by the kernel when the writer dies.
Result<> lock_dir(int dirfd, const fs::path& dir) {
  while (::flock(dirfd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) {
      return make_error(dir.string() + " is being written by another certagent file sink "
                        "(two certificates or two daemons configured with the same files.dir?)");
    }
    return errno_error("locking " + dir.string(), errno);
  }
  return {};
}

Result<> remove_generation(const fs::path& dir, const std::string& name) {
  std::error_code ec;
  fs::remove_all(dir / name, ec);
  if (ec) return make_error("removing " + (dir / name).string() + ": " + ec.message());
  return {};
}

struct FileSpec {
  const char* name;
  mode_t mode;
};

// One file of a generation: created exclusively inside the fresh directory, owner and mode set
// before any byte is written, fsynced, closed with its error checked.
Result<> write_generation_file(int genfd, const fs::path& gen_path, const FileSpec& spec,
                               const Ownership& owner, std::span<const std::string_view> parts) {
  const auto path = (gen_path / spec.name).string();
  UniqueFd fd(::openat(genfd, spec.name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW,
                       spec.mode));
  if (!fd) return errno_error("creating " + path, errno);
  // Mode first: once the file belongs to someone else, chmod would need CAP_FOWNER.
  if (::fchmod(fd.get(), spec.mode) != 0) return errno_error("chmod " + path, errno);
  if (owner.any() && ::fchown(fd.get(), owner.uid, owner.gid) != 0) {
    return errno_error("chown " + path, errno);
  }
  if (auto r = fs_util::write_all(fd.get(), parts, path); !r) return r;
  if (auto r = fs_util::fsync_fd(fd.get(), path); !r) return r;
  return fd.close(path);
}

// The keystore password from files.pkcs12.password_file (symlinks followed: secret mounts use
// them). The read buffer is wiped.
Result<Secret> read_password_file(const fs::path& path) {
  const std::string what = "files.pkcs12.password_file " + path.string();
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return errno_error(what, errno);
  std::string buf(4096, '\0');
  std::size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd.get(), buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      OPENSSL_cleanse(buf.data(), buf.size());
      return errno_error(what, err);
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  auto password = crypto::password_from_text(std::string_view(buf.data(), got), what);
  OPENSSL_cleanse(buf.data(), buf.size());
  return password;
}

std::string serial_for_name(const std::string& serial_hex) {
  std::string out;
  for (char c : serial_hex) {
    if (std::isxdigit(static_cast<unsigned char>(c))) {
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
  }
  if (out.empty()) out = "0";
  if (out.size() > 64) out.resize(64);
  return out;
}

std::string meta_json(const std::string& serial, const crypto::CertInfo& facts, const Material& m) {
  boost::json::object state;
  for (const auto& [k, v] : m.broker_state) state[k] = v;
  boost::json::object meta;
  meta["serial"] = serial;
  meta["not_before"] = format_rfc3339(facts.not_before);
  meta["not_after"] = format_rfc3339(facts.not_after);
  meta["sha256"] = facts.sha256_hex;
  meta["broker"] = m.broker;
  meta["state"] = std::move(state);
  return boost::json::serialize(meta) + "\n";
}

const boost::json::string* string_field(const boost::json::object& obj, std::string_view key) {
  const auto* v = obj.if_contains(key);
  return v ? v->if_string() : nullptr;
}

}  // namespace

const std::vector<std::string>& FileSink::file_names() {
  static const std::vector<std::string> kNames = {"cert.pem", "chain.pem", "fullchain.pem",
                                                  "key.pem",  "bundle.pem", "meta.json"};
  return kNames;
}

const std::vector<std::string>& FileSink::pkcs12_file_names() {
  static const std::vector<std::string> kNames = {"keystore.p12", "truststore.p12"};
  return kNames;
}

std::vector<std::string> FileSink::output_names() const {
  std::vector<std::string> out = file_names();
  if (files_.pkcs12_enabled()) out.insert(out.end(), pkcs12_file_names().begin(), pkcs12_file_names().end());
  return out;
}

bool FileSink::is_generation_name(std::string_view name) {
  if (name.size() < 2 + kTimestampTemplate.size() + 2 || name.substr(0, 2) != "..") return false;
  for (std::size_t i = 0; i < kTimestampTemplate.size(); ++i) {
    char want = kTimestampTemplate[i];
    char got = name[2 + i];
    if (want == 'd' ? !std::isdigit(static_cast<unsigned char>(got)) : got != want) return false;
  }
  auto rest = name.substr(2 + kTimestampTemplate.size());
  if (rest.front() != '.') return false;
  rest.remove_prefix(1);
  auto dash = rest.find('-');
  auto serial = rest.substr(0, dash);
  if (serial.empty() || !std::all_of(serial.begin(), serial.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f');
      })) {
    return false;
  }
  if (dash == std::string_view::npos) return true;
  auto suffix = rest.substr(dash + 1);
  return !suffix.empty() && std::all_of(suffix.begin(), suffix.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c)) != 0;
  });
}

FileSink::FileSink(config::FilesConfig files) : files_(std::move(files)) {}

Result<fs::path> FileSink::commit(const Material& m, const Pkcs12Inputs& pkcs12) {
  const fs::path& dir = files_.dir;
  auto fail = [&](Error e) -> Result<fs::path> {
    return with_context("writing certificate files to " + dir.string(), std::move(e));
  };

  // 1. Everything that can be checked in memory, before the disk is touched.
  if (m.cert_pem.empty()) return fail(make_error("no certificate"));
  if (m.key_pem.empty()) return fail(make_error("no private key"));
  auto cert = parse_cert(m.cert_pem, "certificate");
  if (!cert) return fail(cert.error());
  auto key = parse_key(m.key_pem.view(), "private key");
  if (!key) return fail(key.error());
  if (auto r = check_key_matches(cert->get(), key->get(), "material"); !r) return fail(r.error());
  if (auto r = check_chain(m.chain_pem, "chain"); !r) return fail(r.error());
  auto facts = cert_facts(cert->get());
  if (!facts) return fail(facts.error());
  if (!m.serial_hex.empty() && normalize_hex(m.serial_hex) != normalize_hex(facts->serial_hex)) {
    return fail(make_error("serial_hex " + m.serial_hex + " does not match the certificate's " +
                           facts->serial_hex));
  }
  if (!m.sha256_hex.empty() && lowercase(m.sha256_hex) != facts->sha256_hex) {
    return fail(make_error("sha256_hex does not match the certificate"));
  }
  const std::string serial = m.serial_hex.empty() ? facts->serial_hex : m.serial_hex;
  auto owner = resolve_ownership(files_);
  if (!owner) return fail(owner.error());
  // The keystores are built in memory too: a wrong password file or trust bundle fails the
  // commit before anything is written.
  Secret keystore;
  std::string truststore;
  if (files_.pkcs12_enabled()) {
    std::optional<Secret> from_file;
    const Secret* password = pkcs12.password;
    if (!password) {
      if (files_.pkcs12->sealed) return fail(make_error("the sealed keystore password was not unsealed"));
      auto read = read_password_file(files_.pkcs12->password_file);
      if (!read) return fail(read.error());
      from_file = std::move(*read);
      password = &*from_file;
    }
    const std::string alias = pkcs12.alias.empty() ? files_.dir.filename().string() : std::string(pkcs12.alias);
    auto ks = crypto::make_keystore(alias, m.key_pem.view(), m.cert_pem, m.chain_pem, *password);
    if (!ks) return fail(ks.error());
    keystore = std::move(*ks);
    if (is_blank(pkcs12.trust_pem)) return fail(make_error("truststore.p12: no trust bundle to write"));
    auto ts = crypto::make_truststore(pkcs12.trust_pem, *password);
    if (!ts) return fail(with_context("truststore.p12", ts.error()));
    truststore = std::move(*ts);
  }

  // 2. The directory, locked against a second writer; leftovers of a crashed commit cleaned.
  if (auto r = fs_util::make_directories(dir, kDirMode); !r) return fail(r.error());
  auto dirfd_r = open_dir(dir);
  if (!dirfd_r) return fail(dirfd_r.error());
  const int dirfd = dirfd_r->get();
  if (auto r = lock_dir(dirfd, dir); !r) return fail(r.error());
  auto listing = list_dir(dirfd, dir);
  if (!listing) return fail(listing.error());
  auto logger = log::get("file_sink");
  for (const auto& tmp : listing->temp_links) ::unlinkat(dirfd, tmp.c_str(), 0);
  std::vector<std::string> kept;
  bool past_current = false;
  for (const auto& gen : listing->generations) {
    // Newer than the current generation (or no current one): never swapped in, so no reader
    // can be using it.
    if (!listing->current || past_current) {
      if (auto r = remove_generation(dir, gen); !r) {
        logger->warn("event=remove_abandoned_generation_failed dir={} error={}",
                     log::quote(dir.string()), log::quote(r.error().message));
      }
      continue;
    }
    kept.push_back(gen);
    if (gen == *listing->current) past_current = true;
  }

  // A directory where a symlink must go is someone else's: refuse before writing anything.
  std::vector<std::string> names = output_names();
  names.emplace_back(kDataLink);
  for (const auto& name : names) {
    struct stat st {};
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
      return fail(make_error((dir / name).string() +
                             " is a directory, not a symlink; move it away"));
    }
  }

  // 3. A fresh generation directory whose name sorts after every existing one.
  auto stamp = std::chrono::floor<Micros>(std::chrono::system_clock::now());
  if (!kept.empty()) {
    if (auto newest = parse_generation_time(kept.back()); newest && stamp <= *newest) {
      stamp = *newest + Micros(1);
    }
  }
  std::string gen = ".." + format_generation_time(stamp) + "." + serial_for_name(facts->serial_hex);
  for (int n = 1; ::mkdirat(dirfd, gen.c_str(), 0700) != 0; ++n) {
    if (errno != EEXIST || n > 100) return fail(errno_error("creating " + (dir / gen).string(), errno));
    gen = ".." + format_generation_time(stamp) + "." + serial_for_name(facts->serial_hex) + "-" +
          std::to_string(n);
  }
  const fs::path gen_path = dir / gen;
  // From here on, any failure before the swap removes the partial generation.
  auto abandon = [&](Error e) -> Result<fs::path> {
    if (auto r = remove_generation(dir, gen); !r) {
      logger->warn("event=remove_partial_generation_failed dir={} error={}",
                   log::quote(dir.string()), log::quote(r.error().message));
    }
    return fail(std::move(e));
  };

  UniqueFd genfd(::openat(dirfd, gen.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!genfd) return abandon(errno_error("opening " + gen_path.string(), errno));

  const std::string_view cert_pem = m.cert_pem;
  const std::string_view chain = m.chain_pem;
  const std::string_view key_pem = m.key_pem.view();
  const std::string meta = meta_json(serial, *facts, m);
  struct Write {
    FileSpec spec;
    std::vector<std::string_view> parts;
  };
  const Write writes[] = {
      {{"cert.pem", kPublicMode}, {cert_pem}},
      {{"chain.pem", kPublicMode}, {chain}},
      {{"fullchain.pem", kPublicMode}, {cert_pem, separator(cert_pem), chain}},
      {{"key.pem", kSecretMode}, {key_pem}},
      // HAProxy style: key first, then the full chain. Written straight from the Secret, so no
      // temporary buffer holds a copy of the key.
      {{"bundle.pem", kSecretMode},
       {key_pem, separator(key_pem), cert_pem, separator(cert_pem), chain}},
      {{"meta.json", kPublicMode}, {meta}},
  };
  for (const auto& w : writes) {
    if (auto r = write_generation_file(genfd.get(), gen_path, w.spec, *owner, w.parts); !r) {
      return abandon(r.error());
    }
  }
  if (files_.pkcs12_enabled()) {
    const std::string_view ks[] = {keystore.view()};
    const std::string_view ts[] = {truststore};
    if (auto r = write_generation_file(genfd.get(), gen_path, {"keystore.p12", kSecretMode}, *owner, ks); !r)
      return abandon(r.error());
    if (auto r = write_generation_file(genfd.get(), gen_path, {"truststore.p12", kPublicMode}, *owner, ts); !r)
      return abandon(r.error());
  }
  // The generation directory stays the daemon's (0755): the files in it carry the owner, and
  // pruning old generations needs write access to the directory, which a chown would take away.
  if (::fchmod(genfd.get(), kDirMode) != 0) {
    return abandon(errno_error("chmod " + gen_path.string(), errno));
  }
  if (auto r = fs_util::fsync_fd(genfd.get(), gen_path.string()); !r) return abandon(r.error());
  genfd.reset();
  // The generation's own entry must be durable before ..data can durably point at it.
  if (auto r = fs_util::fsync_fd(dirfd, dir.string()); !r) return abandon(r.error());

  // 4. The stable top-level links, made once; each resolves through ..data, so they are correct
  // before and after the swap.
  for (const auto& name : output_names()) {
    const std::string target = std::string(kDataLink) + "/" + name;
    if (auto cur = read_link_at(dirfd, name.c_str()); cur && *cur == target) continue;
    if (auto r = swap_symlink(dirfd, dir, name, target, ".." + name + ".tmp-"); !r) {
      return abandon(r.error());
    }
  }

  // 5. The swap: one rename makes the new generation current.
  if (auto r = swap_symlink(dirfd, dir, std::string(kDataLink), gen, kDataTmpPrefix); !r) {
    return abandon(r.error());
  }
  // Past the point of no return: the generation is current and must stay.
  if (auto r = fs_util::fsync_fd(dirfd, dir.string()); !r) {
    return fail(with_context("generation " + gen + " is current but not yet durable", r.error()));
  }

  // 6. Prune the oldest generations beyond `keep` (the new one counts; never the current one).
  const std::size_t keep = std::max<std::uint32_t>(files_.keep, 1);
  std::size_t total = kept.size() + 1;
  for (const auto& old : kept) {
    if (total <= keep) break;
    if (auto r = remove_generation(dir, old); !r) {
      logger->warn("event=prune_failed dir={} error={}", log::quote(dir.string()),
                   log::quote(r.error().message));
    }
    --total;
  }
  logger->info("event=files_committed dir={} generation={} serial={}", log::quote(dir.string()),
               gen, serial);
  return Result<fs::path>(boost::system::in_place_value, gen_path);
}

Result<std::optional<Material>> FileSink::load_current() const {
  const fs::path& dir = files_.dir;
  UniqueFd dirfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd) {
    if (errno == ENOENT) return std::optional<Material>();
    return errno_error("opening directory " + dir.string(), errno);
  }
  auto target = read_link_at(dirfd.get(), kDataLink);
  if (!target) {
    if (errno == ENOENT) return std::optional<Material>();
    if (errno == EINVAL) return make_error((dir / kDataLink).string() + " is not a symlink");
    return errno_error("reading " + (dir / kDataLink).string(), errno);
  }
  if (!is_generation_name(*target)) {
    return make_error((dir / kDataLink).string() + " points to \"" + *target +
                      "\", not a certagent generation");
  }
  const fs::path gen_path = dir / *target;
  auto fail = [&](Error e) -> Result<std::optional<Material>> {
    return with_context("loading " + gen_path.string(), std::move(e));
  };
  // Everything below is read relative to this one directory: one consistent generation even if
  // ..data is swapped meanwhile.
  UniqueFd genfd(
      ::openat(dirfd.get(), target->c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!genfd) return fail(errno_error("opening the generation", errno));

  auto read = [&](const char* name) { return fs_util::read_file_at(genfd.get(), name, kMaxFileSize, name); };
  auto cert_pem = read("cert.pem");
  if (!cert_pem) return fail(cert_pem.error());
  auto chain_pem = read("chain.pem");
  if (!chain_pem) return fail(chain_pem.error());
  auto fullchain = read("fullchain.pem");
  if (!fullchain) return fail(fullchain.error());
  auto key_raw = read("key.pem");
  if (!key_raw) return fail(key_raw.error());
  Secret key(std::move(*key_raw));
  auto bundle_raw = read("bundle.pem");
  if (!bundle_raw) return fail(bundle_raw.error());
  Secret bundle(std::move(*bundle_raw));
  auto meta_text = read("meta.json");
  if (!meta_text) return fail(meta_text.error());

  auto cert = parse_cert(*cert_pem, "cert.pem");
  if (!cert) return fail(cert.error());
  auto pkey = parse_key(key.view(), "key.pem");
  if (!pkey) return fail(pkey.error());
  if (auto r = check_key_matches(cert->get(), pkey->get(), "key.pem and cert.pem"); !r) {
    return fail(r.error());
  }
  if (auto r = check_chain(*chain_pem, "chain.pem"); !r) return fail(r.error());
  auto facts = cert_facts(cert->get());
  if (!facts) return fail(facts.error());

  // The other files must be exactly what commit() derives from the same parts.
  const std::string_view c = *cert_pem;
  const std::string_view k = key.view();
  const std::string_view ch = *chain_pem;
  const std::string_view sc = separator(c);
  const std::string_view sk = separator(k);
  if (*fullchain != std::string(c).append(sc).append(ch)) {
    return fail(make_error("fullchain.pem is not cert.pem followed by chain.pem"));
  }
  const std::string_view b = bundle.view();
  if (b.size() != k.size() + sk.size() + c.size() + sc.size() + ch.size() ||
      b.substr(0, k.size()) != k || b.substr(k.size(), sk.size()) != sk ||
      b.substr(k.size() + sk.size()) != *fullchain) {
    return fail(make_error("bundle.pem is not key.pem followed by fullchain.pem"));
  }

  Material m;
  try {
    boost::system::error_code ec;
    boost::json::value meta = boost::json::parse(*meta_text, ec);
    if (ec) return fail(make_error("meta.json: " + ec.message()));
    const auto* obj = meta.if_object();
    if (!obj) return fail(make_error("meta.json: expected a JSON object"));
    const auto* serial = string_field(*obj, "serial");
    const auto* sha = string_field(*obj, "sha256");
    const auto* broker = string_field(*obj, "broker");
    if (!serial || !sha || !broker) {
      return fail(make_error("meta.json: expected string fields serial, sha256 and broker"));
    }
    if (normalize_hex(*serial) != normalize_hex(facts->serial_hex)) {
      return fail(make_error("meta.json: serial does not match cert.pem"));
    }
    if (lowercase(std::string(*sha)) != facts->sha256_hex) {
      return fail(make_error("meta.json: sha256 does not match cert.pem"));
    }
    if (const auto* state = obj->if_contains("state")) {
      const auto* state_obj = state->if_object();
      if (!state_obj) return fail(make_error("meta.json: state must be an object"));
      for (const auto& [name, value] : *state_obj) {
        const auto* s = value.if_string();
        if (!s) return fail(make_error("meta.json: state." + std::string(name) + " must be a string"));
        m.broker_state.emplace(std::string(name), std::string(*s));
      }
    }
    m.serial_hex = std::string(*serial);
    m.broker = std::string(*broker);
  } catch (const std::exception& e) {
    return fail(make_error(std::string("meta.json: ") + e.what()));
  }

  m.cert_pem = std::move(*cert_pem);
  m.chain_pem = std::move(*chain_pem);
  m.key_pem = std::move(key);
  m.not_before = facts->not_before;
  m.not_after = facts->not_after;
  m.sha256_hex = facts->sha256_hex;
  return std::optional<Material>(std::move(m));
}

std::vector<std::string> FileSink::missing_outputs() const {
  std::vector<std::string> missing;
  UniqueFd dirfd(::open(files_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd) return missing;
  auto target = read_link_at(dirfd.get(), kDataLink);
  if (!target || !is_generation_name(*target)) return missing;
  for (const auto& name : output_names()) {
    struct stat st {};
    const std::string rel = *target + "/" + name;
    if (::fstatat(dirfd.get(), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      missing.push_back(name);
  }
  return missing;
}

Result<> FileSink::remove_all_generations() {
  const fs::path& dir = files_.dir;
  auto fail = [&](Error e) -> Result<> {
    return with_context("removing certificate files from " + dir.string(), std::move(e));
  };
  UniqueFd dirfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd) {
    if (errno == ENOENT) return {};
    return fail(errno_error("opening directory " + dir.string(), errno));
  }
  if (auto r = lock_dir(dirfd.get(), dir); !r) return fail(r.error());
  auto listing = list_dir(dirfd.get(), dir);
  if (!listing) return fail(listing.error());

  std::optional<Error> first_error;
  auto note = [&](Error e) {
    if (!first_error) first_error = std::move(e);
  };
  // ..data first, so a reader finds nothing rather than a half-removed generation.
  struct stat st {};
  if (::fstatat(dirfd.get(), kDataLink, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISLNK(st.st_mode) && ::unlinkat(dirfd.get(), kDataLink, 0) != 0) {
    note(errno_error("removing " + (dir / kDataLink).string(), errno));
  }
  std::vector<std::string> all_names = file_names();
  all_names.insert(all_names.end(), pkcs12_file_names().begin(), pkcs12_file_names().end());
  for (const auto& name : all_names) {
    auto cur = read_link_at(dirfd.get(), name.c_str());
    if (cur && *cur == std::string(kDataLink) + "/" + name &&
        ::unlinkat(dirfd.get(), name.c_str(), 0) != 0) {
      note(errno_error("removing " + (dir / name).string(), errno));
    }
  }
  if (auto r = fs_util::fsync_fd(dirfd.get(), dir.string()); !r) note(r.error());
  for (const auto& tmp : listing->temp_links) ::unlinkat(dirfd.get(), tmp.c_str(), 0);
  for (const auto& gen : listing->generations) {
    if (auto r = remove_generation(dir, gen); !r) note(r.error());
  }
  if (auto r = fs_util::fsync_fd(dirfd.get(), dir.string()); !r) note(r.error());
  if (first_error) return fail(std::move(*first_error));
  log::get("file_sink")->info("event=files_removed dir={}", log::quote(dir.string()));
  return {};
}

}  // namespace certagent
