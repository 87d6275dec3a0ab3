#include "core/config/duration.h"

#include <array>
#include <cstdint>
#include <limits>

namespace certagent::config {

namespace {

struct DurationUnit {
  std::string_view suffix;
  std::int64_t ms;
};
// Largest first: a duration lists each unit at most once, in this order ("1h30m", not "30m1h").
constexpr std::array<DurationUnit, 4> kUnits{{{"h", 3'600'000}, {"m", 60'000}, {"s", 1'000}, {"ms", 1}}};

}  // namespace

std::optional<Duration> parse_duration(std::string_view s) {
  if (s.empty()) return std::nullopt;
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  std::int64_t total = 0;
  std::size_t next_unit = 0;  // index into kUnits of the smallest unit still allowed
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = i;
    std::int64_t n = 0;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') {
      if (n > (kMax - 9) / 10) return std::nullopt;
      n = n * 10 + (s[j] - '0');
      ++j;
    }
    if (j == i) return std::nullopt;  // no digits: "h", "-5s", "1.5h"
    // "ms" before "m" so that "500ms" is not read as 500 minutes followed by junk.
    std::optional<std::size_t> unit;
    if (s.substr(j, 2) == "ms") unit = 3;
    else if (j < s.size() && s[j] == 'h') unit = 0;
    else if (j < s.size() && s[j] == 'm') unit = 1;
    else if (j < s.size() && s[j] == 's') unit = 2;
    if (!unit || *unit < next_unit) return std::nullopt;  // bare number, unknown or repeated unit
    const auto& u = kUnits[*unit];
    if (n > kMax / u.ms || total > kMax - n * u.ms) return std::nullopt;
    total += n * u.ms;
    next_unit = *unit + 1;
    i = j + u.suffix.size();
  }
  return Duration(total);
}

std::string format_duration(Duration d) {
  if (d.count() < 0) return "-" + format_duration(-d);
  if (d.count() == 0) return "0s";
  std::string out;
  std::int64_t left = d.count();
  for (const auto& u : kUnits) {
    if (left >= u.ms) {
      out += std::to_string(left / u.ms);
      out += u.suffix;
      left %= u.ms;
    }
  }
  return out;
}

}  // namespace certagent::config
