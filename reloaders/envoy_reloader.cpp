#include "reloaders/envoy_reloader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>

namespace certagent::reloaders {
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

constexpr const char* kDataLink = "..data";
constexpr const char* kSecretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

Error errno_error(const std::string& what) { return make_error(what + ": " + std::strerror(errno)); }

Result<> fsync_path(const fs::path& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return errno_error("open " + path.string());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) {
    errno = err;
    return errno_error("fsync " + path.string());
  }
  return {};
}

Result<> write_secret_file(const fs::path& path, const Secret& content, const struct stat& owner) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return errno_error("create " + path.string());
  std::size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      errno = err;
      return errno_error("write " + path.string());
    }
    done += static_cast<std::size_t>(n);
  }
  // Envoy usually runs as its own user: when we are root, the file goes to whoever owns the
  // SDS directory (mode stays 0600).
  if (::geteuid() == 0 && (owner.st_uid != 0 || owner.st_gid != 0) && ::fchown(fd, owner.st_uid, owner.st_gid) != 0) {
    int err = errno;
    ::close(fd);
    errno = err;
    return errno_error("chown " + path.string());
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    errno = err;
    return errno_error("fsync " + path.string());
  }
  ::close(fd);
  return {};
}

// Creates `link` -> `target` by renaming a temporary symlink over it (atomic replace).
Result<> swap_symlink(const fs::path& dir, const std::string& link, const std::string& target) {
  const fs::path tmp = dir / (link + ".tmp");
  ::unlink(tmp.c_str());
  if (::symlink(target.c_str(), tmp.c_str()) != 0) return errno_error("symlink " + tmp.string());
  if (::rename(tmp.c_str(), (dir / link).c_str()) != 0) {
    auto e = errno_error("rename " + tmp.string() + " over " + (dir / link).string());
    ::unlink(tmp.c_str());
    return e;
  }
  return {};
}

std::string generation_name(SystemTime now, const std::string& serial) {
  const auto secs = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%S", &tm);
  char frac[8];
  std::snprintf(frac, sizeof frac, ".%03dZ", static_cast<int>(ms));
  std::string safe_serial;
  for (char c : serial) {
    if (std::isalnum(static_cast<unsigned char>(c))) safe_serial += c;
  }
  return std::string("..") + buf + frac + "." + (safe_serial.empty() ? "0" : safe_serial);
}

}  // namespace

Secret sds_document(const std::string& secret_name, const Material& material) {
  std::string out;
  out.reserve(material.cert_pem.size() + material.chain_pem.size() + material.key_pem.size() * 2 + 512);
  out += "{\"resources\":[{\"@type\":";
  append_json_string(out, kSecretType);
  out += ",\"name\":";
  append_json_string(out, secret_name);
  out += ",\"tls_certificate\":{\"certificate_chain\":{\"inline_string\":";
  append_json_string(out, material.fullchain_pem());
  out += "},\"private_key\":{\"inline_string\":";
  append_json_string(out, material.key_pem.view());
  out += "}}}]}\n";
  return Secret(std::move(out));
}

Result<std::string> write_sds_generation(const fs::path& sds_dir, const std::string& secret_name,
                                         const Material& material, SystemTime now) {
  std::error_code ec;
  fs::create_directories(sds_dir, ec);
  if (ec) return make_error("create " + sds_dir.string() + ": " + ec.message());
  struct stat dir_stat {};
  if (::stat(sds_dir.c_str(), &dir_stat) != 0) return errno_error("stat " + sds_dir.string());

  std::string name = generation_name(now, material.serial_hex);
  for (int i = 1; fs::exists(sds_dir / name, ec); ++i) name = generation_name(now, material.serial_hex) + "." + std::to_string(i);
  const fs::path gen = sds_dir / name;
  if (::mkdir(gen.c_str(), 0755) != 0) return errno_error("mkdir " + gen.string());
  if (::geteuid() == 0 && (dir_stat.st_uid != 0 || dir_stat.st_gid != 0)) {
    if (::chown(gen.c_str(), dir_stat.st_uid, dir_stat.st_gid) != 0) return errno_error("chown " + gen.string());
  }
  auto fail = [&](Error e) {
    fs::remove_all(gen, ec);
    return e;
  };
  if (auto r = write_secret_file(gen / kSdsFileName, sds_document(secret_name, material), dir_stat); !r) {
    return fail(r.error());
  }
  if (auto r = fsync_path(gen, O_RDONLY | O_DIRECTORY); !r) return fail(r.error());

  std::string previous;
  char target[PATH_MAX];
  ssize_t len = ::readlink((sds_dir / kDataLink).c_str(), target, sizeof target - 1);
  if (len > 0) previous.assign(target, static_cast<std::size_t>(len));

  if (auto r = swap_symlink(sds_dir, kDataLink, name); !r) return fail(r.error());
  // Refreshing the file link is harmless when it already points there, and makes Envoy
  // configs that watch only the file's own name see a move as well.
  if (auto r = swap_symlink(sds_dir, kSdsFileName, std::string(kDataLink) + "/" + kSdsFileName); !r) return r.error();
  if (auto r = fsync_path(sds_dir, O_RDONLY | O_DIRECTORY); !r) return r.error();

  // Keep the previous generation (a reader may have resolved ..data just before the swap).
  for (const auto& entry : fs::directory_iterator(sds_dir, ec)) {
    const std::string entry_name = entry.path().filename().string();
    if (entry_name.rfind("..", 0) != 0 || entry_name == kDataLink || entry_name == name || entry_name == previous) {
      continue;
    }
    if (entry.is_symlink(ec) || !entry.is_directory(ec)) continue;
    fs::remove_all(entry.path(), ec);
  }
  return Result<std::string>(boost::system::in_place_value, std::move(name));
}

EnvoyReloader::EnvoyReloader(const config::ReloaderConfig& config, const EnvoyReloaderConfig& envoy,
                             const ReloaderContext& context)
    : ReloaderBase("envoy", config, context), envoy_(envoy) {}

asio::awaitable<ReloadOutcome> EnvoyReloader::apply(const ReloadEvent& event, Deadline) {
  auto r = write_sds_generation(envoy_.sds_dir, event.cert_name, *event.material, std::chrono::system_clock::now());
  if (!r) co_return ReloadOutcome{ReloadResult::failure, "writing SDS resource: " + r.error().message};
  co_return ReloadOutcome{ReloadResult::success, "SDS generation " + *r + " swapped in under " + envoy_.sds_dir.string()};
}

}  // namespace certagent::reloaders
