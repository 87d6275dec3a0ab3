#pragma once
// The one timer of a certificate loop, injectable so a test drives whole loops on a
// ManualClock in milliseconds. A wait ends at a wall-clock instant (renew point, not_before,
// expiry) or at a monotonic instant (a backoff), whichever comes first, or on cancel().

#include "core/clock.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

namespace certagent {

class LoopTimer {
 public:
  virtual ~LoopTimer() = default;
  // Returns when the deadline comes or cancel() is called; at once when both are unset or past.
  virtual boost::asio::awaitable<void> wait(std::optional<SystemTime> wall,
                                            std::optional<SteadyTime> steady) = 0;
  virtual void cancel() = 0;
};

using LoopTimerFactory =
    std::function<std::unique_ptr<LoopTimer>(const boost::asio::any_io_executor&)>;

// The daemon's: one steady_timer armed for the nearer deadline. A wall deadline becomes a
// duration when armed, so a clock step is only seen on the next wait: ClockWatch wakes the
// loops (cancel()) when the wall clock moves by a second or more.
LoopTimerFactory system_loop_timers(const Clock& clock);

// For tests and benchmarks: waits end when the owner moves its ManualClock and calls
// fire_due(). Counts every wait that began (each one is a loop waking up and re-arming).
class ManualLoopTimers {
 public:
  explicit ManualLoopTimers(const ManualClock& clock) : clock_(clock) {}
  LoopTimerFactory factory();
  // Ends every wait whose deadline has come by the clock as it is now. Returns how many.
  std::size_t fire_due();
  std::size_t waiting() const;
  std::size_t waits_started() const { return waits_started_; }
  // The earliest wall / monotonic deadline of the waits now pending.
  std::optional<SystemTime> next_wall() const;
  std::optional<SteadyTime> next_steady() const;

  struct Pending;

 private:
  const ManualClock& clock_;
  std::vector<std::weak_ptr<Pending>> pending_;
  std::size_t waits_started_{0};
};

}  // namespace certagent
