#pragma once
// Renewal timing as pure functions (DESIGN.md "Renewal timing — contract"). The scheduler and
// the fleet simulation both call these; randomness comes in as arguments so tests are exact.

#include "core/clock.h"

#include <chrono>
#include <optional>

namespace certagent::policy {

using Duration = std::chrono::milliseconds;

inline constexpr Duration kBackoffBase = std::chrono::seconds(1);
inline constexpr Duration kBackoffCapValid = std::chrono::minutes(5);
inline constexpr Duration kBackoffCapExpired = std::chrono::seconds(30);
// A broker's Retry-After is honoured up to this long; past it we assume a broken header.
inline constexpr Duration kMaxRetryAfter = std::chrono::hours(1);

// not_before + lifetime × renew_at × (1 + u), with `jitter_u` the random u already drawn
// uniformly from [-jitter, +jitter]. `lifetime` is the issued leaf's (not_after - not_before).
SystemTime renew_point(SystemTime not_before, SystemTime not_after, double renew_at,
                       double jitter_u);

// The renew point of a leaf that has just arrived: the same rule, counted from the later of
// not_before and the arrival. A broker that backdates not_before by much of a short lifetime
// (cfssl rounds it to the minute, then subtracts `backdate`) would otherwise hand out leaves
// that are due on arrival, and the daemon would renew again and again until the minute turns.
// Unchanged when not_before is the arrival or later.
SystemTime renew_point_on_arrival(SystemTime arrived, SystemTime not_before, SystemTime not_after,
                                  double renew_at, double jitter_u);

// The broker's hint (ACME ARI) wins when it is earlier.
SystemTime apply_hint(SystemTime own_point, std::optional<SystemTime> hint);

// Cap of the failure backoff: min(5 min, max(1 s, 10 % of the time left)); 30 s once expired
// or when nothing valid is held.
Duration backoff_cap(SystemTime now, std::optional<SystemTime> not_after);

// Exponential backoff with full jitter: uniform in [0, min(cap, 1 s × 2^(failures-1))],
// `unit_random` drawn uniformly from [0, 1). `failures` >= 1.
Duration backoff_delay(int failures, Duration cap, double unit_random);

// The delay before the next attempt after a failure: the jittered backoff, or, when the broker
// sent Retry-After, that delay (up to kMaxRetryAfter) plus the jittered backoff, so hosts never
// come back sooner than asked nor all at once. Configuration errors wait the whole cap.
Duration retry_delay(int failures, SystemTime now, std::optional<SystemTime> not_after,
                     std::optional<Duration> retry_after, bool configuration_error,
                     double unit_random);

}  // namespace certagent::policy
