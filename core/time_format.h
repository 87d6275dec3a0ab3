#pragma once
// RFC 3339 timestamps, as the socket API, state.json, the audit log and logs write them.

#include "core/clock.h"

#include <ctime>
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

// Seconds since the epoch as a SystemTime, saturated at SystemTime's range (nanoseconds: about
// 1678..2262). std::chrono::system_clock::from_time_t overflows (undefined behaviour) beyond it,
// and peers send such times: a certificate valid until 9999 (RFC 5280's "no expiry"), a
// Retry-After date in 4030 (found by fuzz_formats).
SystemTime system_time_from_time_t(std::time_t t);

}  // namespace certagent
