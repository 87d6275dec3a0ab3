#include "agent/audit_log.h"

#include "agent/logging.h"

#include <boost/json/serialize.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace certagent {

std::string format_rfc3339(std::chrono::system_clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch());
  const std::time_t secs = static_cast<std::time_t>(std::chrono::floor<std::chrono::seconds>(ms).count());
  const long frac = static_cast<long>(ms.count() - secs * 1000LL);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
  return buf;
}

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
  line["time"] = format_rfc3339(std::chrono::system_clock::now());
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
