#pragma once
// Files of the identity directory (<state_dir>/identity), shared by both backends: secret
// names, atomic 0600 writes, bounded reads, removal. Every write is temp (O_EXCL) + fsync +
// rename + directory fsync, so a crash leaves either the old or the new file, never a torn one.

#include "core/result.h"
#include "core/secret.h"

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::config {
struct Config;
}

namespace certagent::tpm {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

enum class OpenMode { existing, create_if_missing };

// The largest secret seal() accepts (both backends).
inline constexpr std::size_t kMaxSealedSecretSize = 8192;

// Secrets are sealed/imported under names such as "<broker>.eab_hmac": [a-z0-9_.-]+, at most
// 100 characters, not starting with '.', so a name never escapes the identity directory.
[[nodiscard]] Result<> validate_secret_name(std::string_view name);

// <state_dir>/identity
fs::path identity_dir(const config::Config& config);
// "run `certagent enroll --config <file>`": what a user does when there is no identity yet.
std::string enroll_hint(const config::Config& config);

// Creates the directory (and parents) and makes it 0700.
[[nodiscard]] Result<> ensure_private_dir(const fs::path& dir);

// Replaces `path` atomically with `data`, mode `mode` (0600 by default).
[[nodiscard]] Result<> write_file_atomic(const fs::path& path, std::span<const std::uint8_t> data,
                                         mode_t mode = 0600);

// Reads a whole file of at most max_size bytes; nullopt when it does not exist.
[[nodiscard]] Result<std::optional<Secret>> read_file_secret(const fs::path& path,
                                                             std::size_t max_size);
[[nodiscard]] Result<std::optional<Bytes>> read_file_bytes(const fs::path& path,
                                                           std::size_t max_size);

// Removes a file (fine if it does not exist) and syncs the directory.
[[nodiscard]] Result<> remove_file(const fs::path& path);

bool file_exists(const fs::path& path);

inline std::span<const std::uint8_t> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

}  // namespace certagent::tpm
