#pragma once
// The audit log: one JSON object per line in <state_dir>/audit.log for every issuance,
// rotation, failure, reload and expiry. Appended with O_APPEND; rolled to audit.log.1 past a
// size limit so a host that fails for weeks does not fill its disk. Never holds key material.

#include "core/time_format.h"

#include <boost/json/object.hpp>

#include <cstddef>
#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>

namespace certagent {

class AuditLog {
 public:
  static constexpr std::size_t kDefaultMaxBytes = 16 * 1024 * 1024;

  explicit AuditLog(std::filesystem::path path, std::size_t max_bytes = kDefaultMaxBytes);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Adds "time" and "event" to `fields` and appends the line. Failures to write are logged
  // (warn) and otherwise ignored: the audit log must never stop a rotation.
  void record(std::string_view event, boost::json::object fields);

  const std::filesystem::path& path() const { return path_; }

 private:
  bool open();
  void roll_if_needed(std::size_t incoming);

  std::filesystem::path path_;
  std::size_t max_bytes_;
  int fd_{-1};
  std::size_t size_{0};
};


}  // namespace certagent
