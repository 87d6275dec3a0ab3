#pragma once
// Small durable-file helpers shared by the file sink, state.json, the local CA and the TPM blob
// store: O_EXCL temp files, fsync of files and directories, atomic replace by rename.

#include "core/result.h"

#include <sys/types.h>

#include <filesystem>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

namespace certagent {

// Replaces `path` atomically with `content`: writes a temp file `.<name>.tmp-<random>` beside it
// (O_CREAT|O_EXCL|O_NOFOLLOW, `mode` applied with fchmod so the umask cannot widen or narrow it),
// fsyncs it, renames it over `path` and fsyncs the directory. A reader sees the old or the new
// content, never a mix; after a crash it is one of the two (a stale temp file may remain).
// A symlink at `path` is replaced, not followed. The parent directory must exist.
[[nodiscard]] Result<> write_file_atomic(const std::filesystem::path& path, std::string_view content,
                                         mode_t mode);

namespace fs_util {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);
  // close(2) with its error reported (a deferred write error can surface here).
  [[nodiscard]] Result<> close(std::string_view what);

 private:
  int fd_{-1};
};

// "<what>: <strerror(err)>".
Error errno_error(std::string_view what, int err);

// Writes every part in order, retrying short writes and EINTR. No copy of the data is made, so
// secret parts (key PEM) leave no temporary buffer behind.
[[nodiscard]] Result<> write_all(int fd, std::span<const std::string_view> parts,
                                 std::string_view what);
[[nodiscard]] inline Result<> write_all(int fd, std::initializer_list<std::string_view> parts,
                                        std::string_view what) {
  return write_all(fd, std::span<const std::string_view>(parts.begin(), parts.size()), what);
}

[[nodiscard]] Result<> fsync_fd(int fd, std::string_view what);

// Opens `dir` (O_DIRECTORY|O_RDONLY|O_CLOEXEC) and fsyncs it, making renames and creations in it
// durable.
[[nodiscard]] Result<> fsync_dir(const std::filesystem::path& dir);

// mkdir -p: missing components are created with exactly `mode` (chmod after mkdir, so the umask
// does not apply). Existing directories are left as they are; a non-directory in the way is an
// error.
[[nodiscard]] Result<> make_directories(const std::filesystem::path& dir, mode_t mode);

// Reads the whole file `name` relative to `dirfd` (O_NOFOLLOW: a symlink is an error), at most
// `max_size` bytes. The buffer is sized once from fstat, so a secret read this way leaves no
// reallocated copies behind.
[[nodiscard]] Result<std::string> read_file_at(int dirfd, const std::string& name,
                                               std::size_t max_size, std::string_view what);

// `bytes` random bytes as lowercase hex, for temp names.
std::string random_hex(std::size_t bytes);

}  // namespace fs_util
}  // namespace certagent
