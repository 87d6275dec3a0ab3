#pragma once
// Names of certificates and brokers. They become file names, metric labels and socket URL
// segments, so the config, the socket API and the CLI accept exactly the same ones.

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace certagent::config {

inline constexpr std::size_t kMaxNameLength = 64;

inline constexpr std::string_view kNameExpected =
    "a name of 1 to 64 characters from a-z, 0-9, '_' and '-'";

inline bool valid_name(std::string_view s) {
  return !s.empty() && s.size() <= kMaxNameLength && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

}  // namespace certagent::config
