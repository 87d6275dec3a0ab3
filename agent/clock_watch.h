#pragma once
// Tells the daemon when the wall clock steps (settimeofday, NTP step) or the host resumes from
// suspend, so that deadlines computed against the old clock are recomputed at once. Linux
// timerfd with TFD_TIMER_CANCEL_ON_SET: no polling, no periodic wake-ups.
//
// Only a change that matters is acted on: the wall clock moving against the monotonic clock by
// kMinStep or more since the last change acted on (tiny steps add up until they reach it).
// Changes that arrive together wake the loops once.

#include "core/clock.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>

namespace certagent {

class ClockWatch {
 public:
  // A smaller step moves no deadline by more than the timers' own slack is worth: it is neither
  // logged nor acted on.
  static constexpr std::chrono::milliseconds kMinStep{1000};
  // How far ahead the timerfd is armed: always in the future, whatever the year (the old fixed
  // INT32_MAX deadline fired on every re-arm once the clock passed 2038-01-19).
  static constexpr std::chrono::hours kArmAhead{24 * 365};

  using OnJump = std::function<void(std::chrono::nanoseconds step)>;
  ClockWatch(boost::asio::any_io_executor executor, const Clock& clock, OnJump on_jump);
  ~ClockWatch();
  // False when the kernel refused the timerfd (then deadlines are only as good as the timers).
  bool start();
  void stop();

  // The wall clock was set (what the timerfd reports; also the hook for tests and benchmarks,
  // which cannot step the host's clock). Acts when the step since the last act is >= kMinStep.
  void clock_was_set();

  std::uint64_t jumps() const { return jumps_; }        // changes acted on
  std::uint64_t ignored() const { return ignored_; }    // changes below kMinStep
  std::uint64_t wakeups() const { return wakeups_; }    // on_jump calls (coalesced)

  // The absolute deadline the timerfd is armed with when the wall clock reads `now`.
  static timespec deadline_after(SystemTime now);

 private:
  std::chrono::nanoseconds offset() const;  // wall minus monotonic
  bool arm();
  void wait();

  boost::asio::any_io_executor executor_;
  boost::asio::posix::stream_descriptor fd_;
  const Clock& clock_;
  OnJump on_jump_;
  std::chrono::nanoseconds baseline_;
  std::chrono::nanoseconds pending_step_{0};
  bool wake_posted_{false};
  std::uint64_t jumps_{0};
  std::uint64_t ignored_{0};
  std::uint64_t wakeups_{0};
};

}  // namespace certagent
