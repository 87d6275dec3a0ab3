#include "core/fs_util.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <vector>

namespace certagent {
namespace fs_util {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<> UniqueFd::close(std::string_view what) {
  int fd = release();
  if (fd < 0) return {};
  // Linux releases the descriptor even when close fails; EINTR must not be retried.
  if (::close(fd) != 0 && errno != EINTR) return errno_error(std::string("closing ") += what, errno);
  return {};
}

Error errno_error(std::string_view what, int err) {
  return make_error(std::string(what) + ": " + std::strerror(err));
}

Result<> write_all(int fd, std::span<const std::string_view> parts, std::string_view what) {
  for (std::string_view part : parts) {
    while (!part.empty()) {
      ssize_t n = ::write(fd, part.data(), part.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno_error(std::string("writing ") += what, errno);
      }
      if (n == 0) return make_error(std::string("writing ") += std::string(what) += ": no progress");
      part.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  return {};
}

Result<> fsync_fd(int fd, std::string_view what) {
  while (::fsync(fd) != 0) {
    if (errno != EINTR) return errno_error(std::string("fsync ") += what, errno);
  }
  return {};
}

Result<> fsync_dir(const std::filesystem::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return errno_error("opening directory " + dir.string(), errno);
  return fsync_fd(fd.get(), dir.string());
}

Result<> make_directories(const std::filesystem::path& dir, mode_t mode) {
  if (dir.empty()) return make_error("empty directory path");
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return {};
    return make_error(dir.string() + " exists and is not a directory");
  }
  if (errno != ENOENT) return errno_error("checking " + dir.string(), errno);
  auto parent = dir.parent_path();
  if (!parent.empty() && parent != dir) {
    if (auto r = make_directories(parent, mode); !r) return r;
  }
  if (::mkdir(dir.c_str(), mode) != 0) {
    if (errno == EEXIST && ::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return {};
    return errno_error("creating directory " + dir.string(), errno);
  }
  if (::chmod(dir.c_str(), mode) != 0) return errno_error("chmod " + dir.string(), errno);
  return {};
}

Result<std::string> read_file_at(int dirfd, const std::string& name, std::size_t max_size,
                                 std::string_view what) {
  UniqueFd fd(::openat(dirfd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY));
  if (!fd) return errno_error(std::string("opening ") += what, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return errno_error(std::string("stat ") += what, errno);
  if (!S_ISREG(st.st_mode)) return make_error(std::string(what) + " is not a regular file");
  if (st.st_size < 0 || static_cast<std::uint64_t>(st.st_size) > max_size) {
    return make_error(std::string(what) + " is larger than " + std::to_string(max_size) + " bytes");
  }
  // One extra byte detects a file that grew after fstat without reallocating the buffer.
  std::string buf(static_cast<std::size_t>(st.st_size) + 1, '\0');
  std::size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd.get(), buf.data() + got, buf.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      auto err = errno;
      OPENSSL_cleanse(buf.data(), buf.size());
      return errno_error(std::string("reading ") += what, err);
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got == buf.size()) {
    OPENSSL_cleanse(buf.data(), buf.size());
    return make_error(std::string(what) + " changed while it was read");
  }
  buf.resize(got);  // shrinking never reallocates
  return Result<std::string>(boost::system::in_place_value, std::move(buf));
}

std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> raw(bytes);
  std::size_t got = 0;
  while (got < bytes) {
    ssize_t n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got < bytes) {
    std::random_device rd;
    for (; got < bytes; ++got) raw[got] = static_cast<unsigned char>(rd());
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

}  // namespace fs_util

Result<> write_file_atomic(const std::filesystem::path& path, std::string_view content,
                           mode_t mode) {
  using namespace fs_util;
  const auto name = path.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return make_error("write_file_atomic: " + path.string() + " does not name a file");
  }
  auto dir = path.parent_path();
  if (dir.empty()) dir = ".";
  UniqueFd dirfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd) return errno_error("opening directory " + dir.string(), errno);

  std::string tmp;
  UniqueFd fd;
  for (int attempt = 0; attempt < 16 && !fd; ++attempt) {
    tmp = "." + name + ".tmp-" + random_hex(8);
    fd.reset(::openat(dirfd.get(), tmp.c_str(),
                      O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, mode & 07777));
    if (!fd && errno != EEXIST) return errno_error("creating a temp file in " + dir.string(), errno);
  }
  if (!fd) return make_error("creating a temp file in " + dir.string() + ": no free name");

  const auto tmp_path = (dir / tmp).string();
  auto fail = [&](Error e) -> Result<> {
    fd.reset();
    ::unlinkat(dirfd.get(), tmp.c_str(), 0);
    return e;
  };
  if (::fchmod(fd.get(), mode & 07777) != 0) return fail(errno_error("chmod " + tmp_path, errno));
  if (auto r = write_all(fd.get(), {content}, tmp_path); !r) return fail(r.error());
  if (auto r = fsync_fd(fd.get(), tmp_path); !r) return fail(r.error());
  if (auto r = fd.close(tmp_path); !r) return fail(r.error());
  if (::renameat(dirfd.get(), tmp.c_str(), dirfd.get(), name.c_str()) != 0) {
    return fail(errno_error("renaming " + tmp_path + " to " + path.string(), errno));
  }
  return fsync_fd(dirfd.get(), dir.string());
}

}  // namespace certagent
