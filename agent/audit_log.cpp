#include "agent/audit_log.h"

#include "core/logging.h"
#include "core/time_format.h"

#include <boost/json/serialize.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace certagent {

AuditLog::AuditLog(std::filesystem::path path, std::size_t max_bytes)
    : path_(std::move(path)), max_bytes_(max_bytes) {}

AuditLog::~AuditLog() {
  if (fd_ >= 0) ::close(fd_);
}

bool AuditLog::open() {
  if (fd_ >= 0) return true;
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
  if (fd_ < 0) {
    log::get("agent")->warn("event=audit_log_unwritable path={} error={}", log::quote(path_.string()),
                            log::quote(std::strerror(errno)));
    return false;
  }
  struct stat st{};
  size_ = ::fstat(fd_, &st) == 0 ? static_cast<std::size_t>(st.st_size) : 0;
  return true;
}

void AuditLog::roll_if_needed(std::size_t incoming) {
  if (size_ + incoming <= max_bytes_) return;
  std::error_code ec;
  std::filesystem::rename(path_, path_.string() + ".1", ec);
  ::close(fd_);
  fd_ = -1;
  open();
}

void AuditLog::record(std::string_view event, boost::json::object fields) {
  boost::json::object line;
  line["time"] = format_rfc3339_ms(std::chrono::system_clock::now());
  line["event"] = event;
  for (auto& kv : fields) line[kv.key()] = std::move(kv.value());
  std::string text = boost::json::serialize(line);
  text.push_back('\n');
  if (!open()) return;
  roll_if_needed(text.size());
  if (fd_ < 0) return;
  const ssize_t n = ::write(fd_, text.data(), text.size());
  if (n != static_cast<ssize_t>(text.size())) {
    log::get("agent")->warn("event=audit_log_write_failed path={} error={}",
                            log::quote(path_.string()), log::quote(std::strerror(errno)));
    return;
  }
  size_ += text.size();
}

}  // namespace certagent
