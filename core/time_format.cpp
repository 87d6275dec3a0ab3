#include "core/time_format.h"

#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>

namespace certagent {

SystemTime system_time_from_time_t(std::time_t t) {
  constexpr auto kMax = std::chrono::floor<std::chrono::seconds>(SystemTime::max()).time_since_epoch().count();
  constexpr auto kMin = std::chrono::ceil<std::chrono::seconds>(SystemTime::min()).time_since_epoch().count();
  if (t >= kMax) return SystemTime::max();
  if (t <= kMin) return SystemTime::min();
  return std::chrono::system_clock::from_time_t(t);
}

std::string format_rfc3339(SystemTime t) {
  const auto secs = std::chrono::floor<std::chrono::seconds>(t);
  const std::time_t tt = std::chrono::system_clock::to_time_t(secs);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<SystemTime> parse_rfc3339(std::string_view text) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0, n = 0;
  const std::string str(text);
  if (std::sscanf(str.c_str(), "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &s, &n) != 6 ||
      n == 0)
    return std::nullopt;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return std::nullopt;
  std::string_view rest = std::string_view(str).substr(static_cast<std::size_t>(n));
  std::chrono::nanoseconds frac{0};
  if (!rest.empty() && rest.front() == '.') {
    rest.remove_prefix(1);
    std::int64_t scale = 100000000, value = 0;
    std::size_t digits = 0;
    while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') {
      if (scale > 0) value += (rest[digits] - '0') * scale;
      scale /= 10;
      ++digits;
    }
    if (digits == 0) return std::nullopt;
    rest.remove_prefix(digits);
    frac = std::chrono::nanoseconds(value);
  }
  int offset_minutes = 0;
  if (rest == "Z" || rest == "z") {
  } else if (rest.size() == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':') {
    int oh = 0, om = 0;
    if (std::sscanf(std::string(rest.substr(1)).c_str(), "%2d:%2d", &oh, &om) != 2) return std::nullopt;
    offset_minutes = (rest[0] == '+' ? 1 : -1) * (oh * 60 + om);
  } else {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  const std::time_t t = ::timegm(&tm);
  if (t == static_cast<std::time_t>(-1)) return std::nullopt;
  // Beyond SystemTime's range (before 1678, after 2261; found by fuzz_formats) is no time anything
  // here writes or compares with: refused, not wrapped.
  constexpr std::time_t kDay = 86400;
  if (system_time_from_time_t(t - 2 * kDay) == SystemTime::min() ||
      system_time_from_time_t(t + 2 * kDay) == SystemTime::max())
    return std::nullopt;
  return std::chrono::system_clock::from_time_t(t) - std::chrono::minutes(offset_minutes) +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(frac);
}

std::string format_rfc3339_ms(SystemTime t) {
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

}  // namespace certagent
