#pragma once
// Durations as the config writes them: "500ms", "30s", "10m", "96h", "1h30m".

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace certagent::config {

using Duration = std::chrono::milliseconds;

// Returns nullopt on anything but a duration as above (units largest first, each at most once).
std::optional<Duration> parse_duration(std::string_view s);
std::string format_duration(Duration d);

}  // namespace certagent::config
