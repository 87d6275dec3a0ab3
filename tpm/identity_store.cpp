#include "tpm/identity_store.h"

#include "core/config/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace certagent::tpm {
namespace {

constexpr std::size_t kMaxNameLength = 100;

std::string errno_text(int err) { return std::strerror(err); }

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

Result<> fsync_dir(const fs::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return make_error("opening " + dir.string() + ": " + errno_text(errno));
  if (::fsync(fd.get()) != 0) return make_error("syncing " + dir.string() + ": " + errno_text(errno));
  return {};
}

template <class Out>
Result<std::optional<Out>> read_bounded(const fs::path& path, std::size_t max_size) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return std::optional<Out>{};
    return make_error("reading " + path.string() + ": " + errno_text(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return make_error("reading " + path.string() + ": " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) return make_error(path.string() + " is not a regular file");
  if (static_cast<std::size_t>(st.st_size) > max_size)
    return make_error(path.string() + " is too large (" + std::to_string(st.st_size) +
                      " bytes, at most " + std::to_string(max_size) + " expected)");
  std::string buffer(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < buffer.size()) {
    ssize_t n = ::read(fd.get(), buffer.data() + done, buffer.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      OPENSSL_cleanse(buffer.data(), buffer.size());
      return make_error("reading " + path.string() + ": " + errno_text(errno));
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  buffer.resize(done);
  if constexpr (std::is_same_v<Out, Secret>) {
    return std::optional<Out>(Secret(std::move(buffer)));
  } else {
    Out out(buffer.begin(), buffer.end());
    return std::optional<Out>(std::move(out));
  }
}

}  // namespace

Result<> validate_secret_name(std::string_view name) {
  bool ok = !name.empty() && name.size() <= kMaxNameLength && name.front() != '.';
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
      ok = false;
  }
  if (!ok)
    return make_error("invalid secret name \"" + std::string(name.substr(0, kMaxNameLength)) +
                      "\": expected 1-100 characters of [a-z0-9_.-], not starting with '.'");
  return {};
}

fs::path identity_dir(const config::Config& config) { return config.state_dir / "identity"; }

std::string enroll_hint(const config::Config& config) {
  std::string file = config.source.empty() ? std::string("<config file>") : config.source.string();
  return "run `certagent enroll --config " + file + "`";
}

Result<> ensure_private_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error("creating " + dir.string() + ": " + ec.message());
  if (::chmod(dir.c_str(), 0700) != 0)
    return make_error("chmod 0700 " + dir.string() + ": " + errno_text(errno));
  return {};
}

Result<> write_file_atomic(const fs::path& path, std::span<const std::uint8_t> data, mode_t mode) {
  static std::atomic<unsigned> counter{0};
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  const fs::path tmp = dir / ("." + path.filename().string() + ".tmp." + std::to_string(::getpid()) +
                              "." + std::to_string(counter++));
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (fd.get() < 0) return make_error("creating " + tmp.string() + ": " + errno_text(errno));
  // `what` names the step; the temp file is removed so a failed write leaves nothing behind.
  auto fail = [&](const std::string& what) -> Result<> {
    int err = errno;
    ::unlink(tmp.c_str());
    return make_error(what + ": " + errno_text(err));
  };
  // The umask may have narrowed the mode; secrets must be exactly `mode`.
  if (::fchmod(fd.get(), mode) != 0) return fail("chmod " + tmp.string());
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("writing " + tmp.string());
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("syncing " + tmp.string());
  if (::close(fd.release()) != 0) return fail("closing " + tmp.string());
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("renaming " + tmp.string() + " to " + path.string());
  return fsync_dir(dir);
}

Result<std::optional<Secret>> read_file_secret(const fs::path& path, std::size_t max_size) {
  return read_bounded<Secret>(path, max_size);
}

Result<std::optional<Bytes>> read_file_bytes(const fs::path& path, std::size_t max_size) {
  return read_bounded<Bytes>(path, max_size);
}

Result<> remove_file(const fs::path& path) {
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return {};
    return make_error("removing " + path.string() + ": " + errno_text(errno));
  }
  return fsync_dir(path.has_parent_path() ? path.parent_path() : fs::path("."));
}

bool file_exists(const fs::path& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace certagent::tpm
