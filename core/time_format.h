#pragma once
// RFC 3339 timestamps, as the socket API, state.json, the audit log and logs write them.

#include "core/clock.h"

#include <optional>
#include <string>
#include <string_view>

namespace certagent {

// UTC with seconds: "2026-11-22T10:15:30Z".
std::string format_rfc3339(SystemTime t);
// UTC with milliseconds: "2026-11-22T10:15:30.123Z" (audit log event times).
std::string format_rfc3339_ms(SystemTime t);
// Accepts what format_rfc3339 writes, plus fractional seconds and numeric offsets.
std::optional<SystemTime> parse_rfc3339(std::string_view text);

}  // namespace certagent
